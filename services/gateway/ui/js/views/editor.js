// The label editor of one image: the workbench on its latest label, save as a new label
// version. A save sends If-Match with the ETag of the version edited: if someone saved in
// between, the server refuses (412) and the page says so, offering to load theirs or to
// save this one on top, never overwriting silently.
import { useEffect, useState } from "../../vendor/hooks.module.js";
import { api } from "../api.js";
import { guarded, showError } from "../errors.js";
import { html } from "../html.js";
import { encodeLabelPng } from "../labelmap.js";
import { datasetModels, loadImage, loadLabel, loadPrediction } from "../loaders.js";
import { go } from "../route.js";
import { Workbench, newDoc } from "./workbench.js";

export function EditorView({ dataset, route }) {
  const imageId = route.arg;
  const [state, setState] = useState(null); // {bitmap, doc, etag}
  const [dirty, setDirty] = useState(false);
  const [conflict, setConflict] = useState(false);
  const [saving, setSaving] = useState(false);
  const [view, setView] = useState({});
  const [models, setModels] = useState([]);
  const [order, setOrder] = useState([]);

  const load = guarded(async () => {
    setState(null);
    const details = (await api.images(dataset.id)).details;
    setOrder(details.map((d) => d.image_id));
    const detail = details.find((d) => d.image_id === imageId);
    // Start from the latest label; without one, from the latest prediction (not rejected).
    const prediction = !detail?.label_version && detail?.prediction;
    const usePrediction = prediction && prediction.review !== "rejected";
    const [bitmap, label, predicted] = await Promise.all([
      loadImage(imageId),
      detail?.label_version ? loadLabel(dataset.id, imageId) : null,
      usePrediction ? loadPrediction(prediction.run_id, imageId) : null,
    ]);
    const w = bitmap.width;
    const h = bitmap.height;
    const doc = newDoc(label?.map || predicted || new Uint8Array(w * h), w, h);
    setState({ bitmap, doc, etag: label?.etag || null, from: predicted ? prediction.run_id : null });
    setDirty(false);
    setConflict(false);
  });
  useEffect(() => void load(), [imageId]);
  useEffect(() => {
    guarded(async () => setModels((await datasetModels(dataset.id)).map((j) => j.model_id)))();
  }, [dataset.id]);
  useEffect(() => {
    const warn = (e) => dirty && (e.preventDefault(), (e.returnValue = ""));
    addEventListener("beforeunload", warn);
    return () => removeEventListener("beforeunload", warn);
  }, [dirty]);

  const save = async (force = false) => {
    if (!state) return;
    state.doc.commitPending();
    setSaving(true);
    try {
      let etag = state.etag;
      if (force) etag = (await loadLabel(dataset.id, imageId))?.etag || null;
      const png = await encodeLabelPng(state.doc.map, state.doc.w, state.doc.h);
      const r = await api.putLabel(dataset.id, imageId, png, etag);
      state.etag = r.etag;
      setDirty(false);
      setConflict(false);
    } catch (e) {
      if (e.status === 412) setConflict(true);
      else showError(e);
    } finally {
      setSaving(false);
    }
  };
  const keys = (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "s") {
      e.preventDefault();
      save();
      return true;
    }
    return false;
  };
  const i = order.indexOf(imageId);
  const move = (d) => {
    const next = order[i + d];
    if (!next) return;
    if (dirty && !confirm("Discard the unsaved changes?")) return;
    go({ dataset: dataset.id, view: "edit", arg: next });
  };
  return html`<section class="editor">
    <div class="bar">
      <a href=${`#/d/${dataset.id}/images`}>← images</a>
      <button class="link" disabled=${i <= 0} onClick=${() => move(-1)}>prev</button>
      <span class="muted">${i + 1}/${order.length}</span>
      <button class="link" disabled=${i < 0 || i >= order.length - 1} onClick=${() => move(1)}>next</button>
      <span class="image-id" title=${imageId}>${imageId.slice(0, 12)}</span>
      ${state?.from && !state.etag && html`<span class="muted">from prediction ${state.from}</span>`}
      <span data-testid="unsaved" class=${dirty ? "unsaved" : "saved"}>${dirty ? "● unsaved changes" : "saved"}</span>
      <button data-testid="save-label" disabled=${saving || !state} onClick=${() => save()}>Save (Ctrl+S)</button>
    </div>
    ${conflict && html`<div class="conflict" data-testid="save-conflict" role="alert">
      Someone saved a newer version of this label meanwhile. Nothing was overwritten.
      <button onClick=${load}>Load theirs (drop mine)</button>
      <button onClick=${() => save(true)}>Save mine on top</button>
    </div>`}
    ${state
      ? html`<${Workbench} dataset=${dataset} imageId=${imageId} bitmap=${state.bitmap} doc=${state.doc}
          view=${view} setView=${setView} models=${models} onChange=${() => setDirty(true)} keys=${keys} />`
      : html`<p class="muted">Loading…</p>`}
  </section>`;
}
