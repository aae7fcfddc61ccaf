// The review queue of a prediction run, most uncertain first: A accept, R reject, E edit
// (brush), left / right arrows move, H hides the mask; zoom and pan stay across images.
// Accepting after edits sends the edited label map (verdict "edited").
import { useEffect, useState } from "../../vendor/hooks.module.js";
import { api } from "../api.js";
import { guarded, showError } from "../errors.js";
import { html } from "../html.js";
import { encodeLabelPng } from "../labelmap.js";
import { loadImage, loadPrediction } from "../loaders.js";
import { go } from "../route.js";
import { Workbench, newDoc } from "./workbench.js";

export function ReviewView({ dataset, route }) {
  const [run, setRun] = useState(null);
  const [queue, setQueue] = useState(null); // result summaries, most uncertain first
  const [verdicts, setVerdicts] = useState({});
  const [index, setIndex] = useState(0);
  const [item, setItem] = useState(null); // {imageId, bitmap, doc, result}
  const [dirty, setDirty] = useState(false);
  const [view, setView] = useState({});

  useEffect(() => {
    guarded(async () => {
      let runId = route.arg;
      if (!runId) {
        const runs = (await api.predictions(dataset.id)).runs;
        if (!runs.length) return setQueue([]);
        runId = runs[0].run_id;
        go({ dataset: dataset.id, view: "review", arg: runId });
        return;
      }
      setRun(await api.prediction(runId));
      const page = await api.results(runId, "uncertainty");
      setQueue(page.results);
      setIndex(0);
    })();
  }, [dataset.id, route.arg]);

  const current = queue?.[index];
  useEffect(() => {
    if (!current) return setItem(null);
    let live = true;
    guarded(async () => {
      const [bitmap, map, result] = await Promise.all([
        loadImage(current.image_id),
        loadPrediction(run.run_id, current.image_id),
        api.result(run.run_id, current.image_id),
      ]);
      if (!live) return;
      setItem({ imageId: current.image_id, bitmap, doc: newDoc(map, bitmap.width, bitmap.height), result });
      setVerdicts((v) => ({ ...v, [current.image_id]: v[current.image_id] ?? result.review }));
      setDirty(false);
    })();
    return () => (live = false);
  }, [current?.image_id, run?.run_id]);

  const move = (d) => setIndex((i) => Math.max(0, Math.min((queue?.length || 1) - 1, i + d)));
  const ready = item && current && item.imageId === current.image_id; // not a stale image
  const decide = guarded(async (verdict) => {
    if (!ready || verdicts[item.imageId]) return;
    try {
      let r;
      if (verdict === "reject") r = await api.reject(run.run_id, item.imageId);
      else {
        item.doc.commitPending();
        const png = dirty ? await encodeLabelPng(item.doc.map, item.doc.w, item.doc.h) : undefined;
        r = await api.accept(run.run_id, item.imageId, png);
      }
      setVerdicts((v) => ({ ...v, [item.imageId]: r.verdict }));
      setDirty(false);
      move(1);
    } catch (e) {
      if (e.status === 409) setVerdicts((v) => ({ ...v, [item.imageId]: "reviewed" }));
      showError(e);
    }
  });
  // The queue's keys work even while the next image loads (no workbench then): a capture
  // listener on window runs before the workbench's, which never sees them.
  useEffect(() => {
    const down = (e) => {
      if (e.ctrlKey || e.metaKey || e.altKey || e.target.closest?.("input, select, textarea")) return;
      const k = e.key.toLowerCase();
      if (k === "a") decide("accept");
      else if (k === "r") decide("reject");
      else if (k === "e") ready && item.doc.setTool("brush");
      else if (e.key === "ArrowRight") move(1);
      else if (e.key === "ArrowLeft") move(-1);
      else return;
      e.preventDefault();
      e.stopPropagation();
    };
    addEventListener("keydown", down, true);
    return () => removeEventListener("keydown", down, true);
  });

  if (queue === null) return html`<p class="muted">Loading…</p>`;
  if (!queue.length)
    return html`<p class="muted">Nothing to review yet: run visual prompting from the
      <a href=${`#/d/${dataset.id}/images`}>images</a> page.</p>`;
  const verdict = current && verdicts[current.image_id];
  const reviewed = Object.values(verdicts).filter(Boolean).length;
  return html`<section class="review">
    <div class="bar">
      <span>Run ${run?.run_id} · ${run?.model_id ? "tuned " + run.model_id : "stock model"}</span>
      <button class="link" disabled=${index === 0} onClick=${() => move(-1)}>← prev</button>
      <span data-testid="review-position">${index + 1}/${queue.length}</span>
      <button class="link" disabled=${index >= queue.length - 1} onClick=${() => move(1)}>next →</button>
      <span class="muted">score ${current.score.toFixed(2)} · uncertainty ${current.uncertainty.toFixed(2)}</span>
      <span class=${"badge " + (verdict || "predicted")} data-testid="review-verdict">${verdict || "to review"}</span>
      ${dirty && html`<span class="unsaved">● edited</span>`}
      <button data-testid="review-accept" disabled=${!!verdict || !ready} onClick=${() => decide("accept")}>
        ${dirty ? "Accept edited (A)" : "Accept (A)"}</button>
      <button data-testid="review-reject" class="secondary" disabled=${!!verdict || !ready}
        onClick=${() => decide("reject")}>Reject (R)</button>
      <span class="muted">${reviewed} reviewed</span>
    </div>
    ${ready
      ? html`<${Workbench} dataset=${dataset} imageId=${item.imageId} bitmap=${item.bitmap} doc=${item.doc}
          view=${view} setView=${setView} onChange=${() => setDirty(true)} />`
      : html`<p class="muted">Loading…</p>`}
  </section>`;
}
