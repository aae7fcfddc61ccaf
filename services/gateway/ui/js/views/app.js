// The shell: the key screen until a key works, then the header (dataset, tabs), the error
// banner and the current view.
import { useEffect, useState } from "../../vendor/hooks.module.js";
import { api, keyStore, onUnauthorized } from "../api.js";
import { onError } from "../errors.js";
import { html } from "../html.js";
import { href, useRoute } from "../route.js";
import { CompareView } from "./compare.js";
import { DatasetsView } from "./datasets.js";
import { EditorView } from "./editor.js";
import { ImagesView } from "./images.js";
import { KeyScreen } from "./keyscreen.js";
import { ModelsView } from "./models.js";
import { ReviewView } from "./review.js";
import { TrainingView } from "./training.js";

const TABS = [
  ["images", "Images"],
  ["review", "Review"],
  ["train", "Train"],
  ["compare", "Compare"],
];

function ErrorBanner({ message, onClose }) {
  if (!message) return null;
  return html`<div class="error-banner" data-testid="error-banner" role="alert">
    <span>${message}</span>
    <button class="link" onClick=${onClose} aria-label="Dismiss">×</button>
  </div>`;
}

export function App() {
  const [key, setKey] = useState(keyStore.get());
  const [error, setError] = useState("");
  const route = useRoute();
  const [dataset, setDataset] = useState(null);

  useEffect(() => onUnauthorized(() => setKey(null)), []);
  useEffect(() => onError(setError), []);
  useEffect(() => setError(""), [route.view, route.dataset]);
  useEffect(() => {
    if (!key || !route.dataset) return setDataset(null);
    let live = true;
    api.dataset(route.dataset).then(
      (d) => live && setDataset(d),
      (e) => live && setError(e.message),
    );
    return () => (live = false);
  }, [key, route.dataset]);

  if (!key) return html`<${KeyScreen} onKey=${setKey} />`;

  let body;
  if (route.view === "models") body = html`<${ModelsView} />`;
  else if (!route.dataset) body = html`<${DatasetsView} />`;
  else if (!dataset) body = html`<p class="muted">Loading…</p>`;
  else {
    const props = { dataset, route };
    body = {
      images: html`<${ImagesView} ...${props} />`,
      edit: html`<${EditorView} ...${props} />`,
      review: html`<${ReviewView} ...${props} />`,
      train: html`<${TrainingView} ...${props} />`,
      compare: html`<${CompareView} ...${props} />`,
    }[route.view] || html`<p>Unknown page.</p>`;
  }
  const tab = (view, label) =>
    html`<a class=${"tab" + (route.view === view ? " active" : "")}
      href=${href({ dataset: route.dataset, view })}>${label}</a>`;
  return html`<div class="shell">
    <header>
      <a class="brand" href="#/">VP Lab</a>
      ${dataset && html`<span class="crumb">${dataset.name}</span>`}
      <nav>
        ${dataset && TABS.map(([v, l]) => tab(v, l))}
        <a class=${"tab" + (route.view === "models" ? " active" : "")} href="#/models">Models</a>
      </nav>
      <button class="link" onClick=${() => (keyStore.clear(), setKey(null))}>Sign out</button>
    </header>
    <${ErrorBanner} message=${error} onClose=${() => setError("")} />
    <main>${body}</main>
  </div>`;
}
