// Tuned models: list, export the adapter (zip) or, for weight-delta methods, a merged plain
// SAM checkpoint, delete.
import { useEffect, useState } from "../../vendor/hooks.module.js";
import { api } from "../api.js";
import { download } from "../download.js";
import { guarded } from "../errors.js";
import { html } from "../html.js";

export function ModelsView() {
  const [models, setModels] = useState(null);
  const [mergeable, setMergeable] = useState(new Set());
  const reload = guarded(async () => setModels((await api.models()).models));
  useEffect(() => {
    reload();
    guarded(async () => {
      const methods = (await api.methods()).methods;
      setMergeable(new Set(methods.filter((m) => m.mergeable).map((m) => m.name)));
    })();
  }, []);
  const exportModel = guarded(async (id) => download(await api.exportModel(id), `${id}.zip`));
  const exportMerged = guarded(async (id) => download(await api.exportMerged(id), `${id}-merged.pth`));
  const remove = guarded(async (id) => {
    if (!confirm(`Delete model ${id}?`)) return;
    await api.deleteModel(id);
    await reload();
  });
  return html`<section class="models">
    <h2>Tuned models</h2>
    <table data-testid="model-list">
      <thead><tr><th>model</th><th>method</th><th>trainable</th><th>base</th><th></th></tr></thead>
      <tbody>
        ${models === null && html`<tr><td colspan="5" class="muted">Loading…</td></tr>`}
        ${models?.length === 0 && html`<tr><td colspan="5" class="muted">No model yet: train one from a dataset's Train tab.</td></tr>`}
        ${models?.map(
          (m) => html`<tr key=${m.model_id} class="model-row" data-model-id=${m.model_id}>
            <td><code>${m.model_id}</code></td><td>${m.config.method}</td>
            <td>${m.config.trainable_params?.toLocaleString("en") ?? ""}</td>
            <td>${m.config.base?.name ?? ""}</td>
            <td><button data-testid="export-model" onClick=${() => exportModel(m.model_id)}>Export adapter</button>
              ${mergeable.has(m.config.method) &&
              html` <button data-testid="export-merged" onClick=${() => exportMerged(m.model_id)}>Export merged checkpoint</button>`}
              <button class="link danger" onClick=${() => remove(m.model_id)}>delete</button></td>
          </tr>`,
        )}
      </tbody>
    </table>
  </section>`;
}
