// Compare the stock pipeline with a tuned model: the evaluation table (0-shot vs tuned
// mIoU, per class, per image sortable by change) on the same labelled images, and a
// before / after view (toggle or swipe) of two prediction runs per image.
import { useEffect, useRef, useState } from "../../vendor/hooks.module.js";
import { api } from "../api.js";
import { guarded, showError } from "../errors.js";
import { html } from "../html.js";
import { loadImage, loadPrediction, datasetModels } from "../loaders.js";
import { paintOverlay } from "../mask.js";
import { classColors } from "../thumbs.js";
import { referencesOf } from "./images.js";

const pct = (v) => (v == null ? "–" : (100 * v).toFixed(1));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function evaluate(body, onState) {
  let e = await api.startEvaluation(body);
  while (["QUEUED", "RUNNING"].includes(e.state)) {
    onState(e);
    await sleep(1000);
    e = await api.evaluation(e.evaluation_id);
  }
  if (e.state !== "SUCCEEDED") throw new Error(`evaluation ${e.evaluation_id} ${e.state.toLowerCase()}: ${e.error}`);
  return e;
}

/** Rows of the per-image table: {image_id, before, after, change}, sorted. */
export function imageRows(stock, tuned, sort) {
  const before = Object.fromEntries(stock.per_image.map((r) => [r.image_id, r.iou]));
  const rows = tuned.per_image.map((r) => ({
    image_id: r.image_id,
    before: before[r.image_id] ?? null,
    after: r.iou,
    change: before[r.image_id] == null ? null : r.iou - before[r.image_id],
  }));
  const key = { change: (r) => r.change ?? -Infinity, before: (r) => r.before ?? -1, after: (r) => r.after };
  const k = key[sort.by] || key.change;
  return rows.sort((a, b) => (k(a) - k(b)) * (sort.desc ? -1 : 1));
}

function EvaluationTable({ dataset, stock, tuned }) {
  const [sort, setSort] = useState({ by: "change", desc: true });
  const by = (col) => () => setSort((s) => ({ by: col, desc: s.by === col ? !s.desc : true }));
  const names = Object.fromEntries(dataset.classes.map((c) => [String(c.id), c.name]));
  return html`<table class="evaluation" data-testid="evaluation-table">
    <thead><tr><th></th><th>0-shot IoU</th><th>tuned IoU</th><th>change</th></tr></thead>
    <tbody>
      <tr class="total" data-testid="evaluation-miou"><th>mIoU (${tuned.n_images} images)</th>
        <td>${pct(stock.miou)}</td><td>${pct(tuned.miou)}</td><td>${pct(tuned.miou - stock.miou)}</td></tr>
      ${Object.keys(tuned.per_class).map(
        (cid) => html`<tr key=${cid}><th>${names[cid] || cid}</th>
          <td>${pct(stock.per_class[cid]?.iou)}</td><td>${pct(tuned.per_class[cid].iou)}</td>
          <td>${pct(tuned.per_class[cid].iou - (stock.per_class[cid]?.iou ?? NaN))}</td></tr>`,
      )}
    </tbody>
    <thead><tr><th>image</th>
      <th><button class="link" onClick=${by("before")}>0-shot</button></th>
      <th><button class="link" onClick=${by("after")}>tuned</button></th>
      <th><button class="link" data-testid="sort-by-change" onClick=${by("change")}>change ${sort.by === "change" ? (sort.desc ? "▼" : "▲") : ""}</button></th></tr></thead>
    <tbody>${imageRows(stock, tuned, sort).map(
      (r) => html`<tr key=${r.image_id} class="image-row"><td><code>${r.image_id.slice(0, 12)}</code></td>
        <td>${pct(r.before)}</td><td>${pct(r.after)}</td><td>${pct(r.change)}</td></tr>`,
    )}</tbody>
  </table>`;
}

function BeforeAfter({ dataset, runs }) {
  const [a, setA] = useState("");
  const [b, setB] = useState("");
  const [images, setImages] = useState([]);
  const [imageId, setImageId] = useState("");
  const [showAfter, setShowAfter] = useState(true);
  const [swipe, setSwipe] = useState(100);
  const canvas = useRef(null);
  const data = useRef(null);
  const done = runs.filter((r) => r.state === "SUCCEEDED");
  useEffect(() => {
    if (done.length >= 2 && !a) {
      // After: the newest run; before: the newest stock run older than it (else the next).
      setB(done[0].run_id);
      setA((done.slice(1).find((r) => !r.model_id) || done[1]).run_id);
    }
  }, [runs.length]);
  useEffect(() => {
    if (!a || !b) return;
    guarded(async () => {
      const [ra, rb] = await Promise.all([api.results(a, "image"), api.results(b, "image")]);
      const inB = new Set(rb.results.map((r) => r.image_id));
      const both = ra.results.map((r) => r.image_id).filter((id) => inB.has(id));
      setImages(both);
      setImageId((id) => (both.includes(id) ? id : both[0] || ""));
    })();
  }, [a, b]);
  useEffect(() => {
    if (!imageId) return;
    let live = true;
    guarded(async () => {
      const [bitmap, ma, mb] = await Promise.all([loadImage(imageId), loadPrediction(a, imageId), loadPrediction(b, imageId)]);
      if (live) (data.current = { bitmap, ma, mb }), draw();
    })();
    return () => (live = false);
  }, [imageId, a, b]);
  const draw = () => {
    const d = data.current;
    const c = canvas.current;
    if (!d || !c) return;
    const { bitmap } = d;
    const w = bitmap.width;
    const h = bitmap.height;
    c.width = w;
    c.height = h;
    const ctx = c.getContext("2d");
    const layer = (map) => {
      const img = new ImageData(w, h);
      paintOverlay(img.data, map, w, h, classColors(dataset), 0.5);
      const off = new OffscreenCanvas(w, h);
      off.getContext("2d").putImageData(img, 0, 0);
      return off;
    };
    ctx.drawImage(bitmap, 0, 0);
    const cut = Math.round((swipe / 100) * w);
    if (swipe < 100) {
      ctx.drawImage(layer(d.ma), 0, 0);
      ctx.save();
      ctx.beginPath();
      ctx.rect(cut, 0, w - cut, h);
      ctx.clip();
      ctx.drawImage(bitmap, 0, 0);
      ctx.drawImage(layer(d.mb), 0, 0);
      ctx.restore();
      ctx.fillStyle = "#fff";
      ctx.fillRect(cut - 1, 0, 2, h);
    } else ctx.drawImage(layer(showAfter ? d.mb : d.ma), 0, 0);
  };
  useEffect(draw, [showAfter, swipe]);
  useEffect(() => {
    const key = (e) => !e.target.closest?.("input, select") && e.key.toLowerCase() === "b" && setShowAfter((v) => !v);
    addEventListener("keydown", key);
    return () => removeEventListener("keydown", key);
  }, []);
  if (done.length < 2) return html`<p class="muted">Before / after needs two finished prediction runs (re-run with the tuned model).</p>`;
  const label = (r) => `${r.run_id} · ${r.model_id || "stock"}`;
  return html`<div class="before-after">
    <div class="bar">
      <label>before <select value=${a} onChange=${(e) => setA(e.target.value)}>${done.map((r) => html`<option value=${r.run_id}>${label(r)}</option>`)}</select></label>
      <label>after <select value=${b} onChange=${(e) => setB(e.target.value)}>${done.map((r) => html`<option value=${r.run_id}>${label(r)}</option>`)}</select></label>
      <select value=${imageId} onChange=${(e) => setImageId(e.target.value)} aria-label="Image">
        ${images.map((id) => html`<option value=${id}>${id.slice(0, 12)}</option>`)}</select>
      <button data-testid="before-after-toggle" onClick=${() => setShowAfter((v) => !v)}>
        showing ${swipe < 100 ? "swipe" : showAfter ? "after" : "before"} (B)</button>
      <label>swipe <input type="range" min="0" max="100" value=${swipe} onInput=${(e) => setSwipe(+e.target.value)} /></label>
    </div>
    <canvas ref=${canvas} class="compare-canvas" data-testid="compare-canvas"></canvas>
  </div>`;
}

export function CompareView({ dataset }) {
  const [models, setModels] = useState([]);
  const [modelId, setModelId] = useState("");
  const [runs, setRuns] = useState([]);
  const [result, setResult] = useState(null); // {stock, tuned}
  const [status, setStatus] = useState("");
  const reloadRuns = guarded(async () => setRuns((await api.predictions(dataset.id)).runs));
  useEffect(() => {
    guarded(async () => {
      const m = await datasetModels(dataset.id);
      setModels(m);
      if (m.length) setModelId(m[0].model_id);
    })();
    reloadRuns();
  }, [dataset.id]);
  // Compare like with like: the references of the latest stock run (what the 0-shot
  // results came from); without one, the references ticked on the images page.
  const stockRun = runs.find((r) => !r.model_id && r.state === "SUCCEEDED");
  const refs = async () => {
    if (stockRun)
      return stockRun.references.map((r) =>
        r.mask_rle ? { image_id: r.image_id, mask_rle: r.mask_rle, class_id: r.class_id } : { image_id: r.image_id },
      );
    const details = (await api.images(dataset.id)).details;
    const chosen = [...referencesOf(dataset.id, details)];
    if (!chosen.length) throw new Error("Choose at least one reference image (its 'ref' box) on the images page.");
    return chosen.map((image_id) => ({ image_id }));
  };
  const run = guarded(async () => {
    setResult(null);
    try {
      const references = await refs();
      setStatus("evaluating the tuned model…");
      const tuned = await evaluate({ dataset_id: dataset.id, references, model_id: modelId },
        (e) => setStatus(`tuned: ${e.done}/${e.total}`));
      setStatus("evaluating the stock pipeline on the same images…");
      const stock = await evaluate(
        { dataset_id: dataset.id, references, images: tuned.per_image.map((r) => r.image_id) },
        (e) => setStatus(`0-shot: ${e.done}/${e.total}`));
      setResult({ stock, tuned });
      setStatus("");
    } catch (e) {
      setStatus("");
      showError(e);
    }
  });
  const rerun = guarded(async () => {
    await api.startPrediction(dataset.id, { references: await refs(), model_id: modelId });
    location.hash = `#/d/${dataset.id}/images`;
  });
  return html`<section class="compare">
    <div class="panel">
      <label>Tuned model <select value=${modelId} onChange=${(e) => setModelId(e.target.value)} data-testid="compare-model">
        ${models.map((j) => html`<option value=${j.model_id}>${j.method} · ${j.model_id}</option>`)}
      </select></label>
      <button data-testid="evaluate" disabled=${!modelId || !!status} onClick=${run}>Evaluate 0-shot vs tuned</button>
      <button data-testid="rerun-tuned" disabled=${!modelId} onClick=${rerun}>Re-run visual prompting with it</button>
      <span class="muted">references: ${stockRun ? `those of run ${stockRun.run_id} (${stockRun.references.length})` : "the ticked ones"}</span>
      ${status && html`<span class="muted" data-testid="evaluation-status">${status}</span>`}
      ${!models.length && html`<p class="muted">No tuned model for this dataset yet: train one first.</p>`}
    </div>
    ${result && html`<${EvaluationTable} dataset=${dataset} ...${result} />`}
    <h3>Before / after</h3>
    <${BeforeAfter} dataset=${dataset} runs=${runs} />
  </section>`;
}
