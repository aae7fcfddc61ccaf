// The dataset's images: upload, the grid (lazy thumbnails with overlays, status, filters,
// sort, keyboard), and visual prompting over the dataset from the chosen references.
import { useEffect, useRef, useState } from "../../vendor/hooks.module.js";
import { api, follow, uploadImage } from "../api.js";
import { guarded, showError } from "../errors.js";
import { html } from "../html.js";
import { go } from "../route.js";
import { arrange, imageStatus, statusText } from "../status.js";
import { classColors, drawThumb } from "../thumbs.js";
import { download } from "../download.js";

// The user's ticks per dataset; by default an image labelled by hand is a reference.
const choices = new Map(); // dataset id -> Map(image id -> true | false)

/** The reference images of a dataset: labelled, hand-labelled unless unticked, or ticked. */
export function referencesOf(datasetId, details) {
  const picked = choices.get(datasetId) || new Map();
  const refs = new Set();
  for (const d of details) {
    if (!d.label_version) continue;
    const choice = picked.get(d.image_id);
    if (choice ?? imageStatus(d) === "labelled") refs.add(d.image_id);
  }
  return refs;
}

function toggleReference(datasetId, imageId, on) {
  if (!choices.has(datasetId)) choices.set(datasetId, new Map());
  choices.get(datasetId).set(imageId, on);
}

const ACTIVE = ["QUEUED", "RUNNING"];

function Uploader({ dataset, onUploaded }) {
  const [files, setFiles] = useState([]);
  const [over, setOver] = useState(false);
  const start = async (list) => {
    const items = Array.from(list).map((f) => ({ file: f, name: f.name, progress: 0, error: "", done: false }));
    setFiles((prev) => [...prev, ...items]);
    const update = (item, patch) => {
      Object.assign(item, patch);
      setFiles((prev) => prev.slice());
    };
    let next = 0;
    const worker = async () => {
      while (next < items.length) {
        const item = items[next++];
        try {
          await uploadImage(dataset.id, item.file, (p) => update(item, { progress: p }));
          update(item, { progress: 1, done: true });
        } catch (e) {
          update(item, { error: e.message });
        }
      }
    };
    await Promise.all([worker(), worker(), worker()]);
    onUploaded();
  };
  const drop = (e) => {
    e.preventDefault();
    setOver(false);
    start(e.dataTransfer.files);
  };
  const pending = files.filter((f) => !f.done && !f.error).length;
  return html`<div class=${"dropzone" + (over ? " over" : "")}
      onDragOver=${(e) => (e.preventDefault(), setOver(true))}
      onDragLeave=${() => setOver(false)} onDrop=${drop}>
    <label class="button">Add images…
      <input type="file" multiple accept="image/*" data-testid="upload-input" class="hidden-input"
        onChange=${(e) => (start(e.target.files), (e.target.value = ""))} />
    </label>
    <span class="muted"> or drop files here</span>
    ${files.length > 0 && html`<ul class="uploads">
      ${files.map(
        (f, i) => html`<li key=${i} class=${f.error ? "error" : f.done ? "done" : ""}>
          <span class="file-name">${f.name}</span>
          ${f.error ? html`<span>${f.error}</span>` : html`<progress max="1" value=${f.progress}></progress>`}
        </li>`,
      )}
      ${pending === 0 && html`<li><button class="link" onClick=${() => setFiles([])}>clear</button></li>`}
    </ul>`}
  </div>`;
}

/** Run a data job (import, precompute) to its end, reporting `done/total` as it goes. */
async function runDataJob(job, onProgress) {
  onProgress(job);
  await follow(`/v1/data-jobs/${job.job_id}/events`, ({ data }) => data?.total && onProgress(data));
  return api.dataJob(job.job_id);
}

const importSummary = (name, job) => {
  const r = job.report;
  if (job.state === "FAILED") return `${name}: the import failed: ${job.error}`;
  const refused = job.errors.length
    ? `, ${job.errors.length} files refused: ${job.errors.map((e) => `${e.entry} (${e.error})`).join("; ")}`
    : "";
  const classes = r.classes_added?.length ? `, classes added: ${r.classes_added.join(", ")}` : "";
  const cancelled = job.state === "CANCELLED" ? " (cancelled)" : "";
  return `${name}: ${r.images_added ?? 0} images added, ${r.images_present ?? 0} already here, ` +
    `${r.labels_written ?? 0} labels written${classes}${refused}${cancelled}`;
};

/** Import a zip / tar (masks/ PNGs or COCO) and export the labels as COCO or label maps;
 *  precompute the embeddings so the first click on each image is fast. */
function ImportExport({ dataset, onImported }) {
  const [status, setStatus] = useState("");
  const [embedStatus, setEmbedStatus] = useState("");
  const importFile = guarded(async (file) => {
    setStatus(`uploading ${file.name}…`);
    try {
      const job = await api.importArchive(dataset.id, file);
      const done = await runDataJob(job, (p) => setStatus(`importing ${file.name}: ${p.done}/${p.total}`));
      setStatus(importSummary(file.name, done));
      onImported();
    } catch (e) {
      setStatus("");
      throw e;
    }
  });
  const precompute = guarded(async () => {
    setEmbedStatus("starting…");
    try {
      const job = await api.precomputeEmbeddings(dataset.id);
      const done = await runDataJob(job, (p) => setEmbedStatus(`embedding ${p.done}/${p.total}`));
      const r = done.report;
      setEmbedStatus(done.state === "SUCCEEDED"
        ? `embeddings ready: ${r.computed} computed, ${r.cached} already cached` +
          (done.errors.length ? `, ${done.errors.length} images failed` : "")
        : `precompute ${done.state.toLowerCase()}${done.error ? ": " + done.error : ""}`);
    } catch (e) {
      setEmbedStatus("");
      throw e;
    }
  });
  const exportAs = guarded(async (format) =>
    download(await api.exportDataset(dataset.id, format), `${dataset.name}-${format}.zip`),
  );
  return html`<div class="import-export">
    <label class="button secondary">Import archive…
      <input type="file" accept=".zip,.tar,.gz,.tgz" data-testid="import-input" class="hidden-input"
        onChange=${(e) => (e.target.files[0] && importFile(e.target.files[0]), (e.target.value = ""))} />
    </label>
    <button class="secondary" data-testid="export-coco" onClick=${() => exportAs("coco")}>Export COCO</button>
    <button class="secondary" data-testid="export-masks" onClick=${() => exportAs("masks")}>Export masks</button>
    <button class="secondary" data-testid="precompute-embeddings" title="Embed every image now, so the first click on each is fast"
      onClick=${precompute}>Precompute embeddings</button>
    ${status && html`<span class="muted" data-testid="import-status">${status}</span>`}
    ${embedStatus && html`<span class="muted" data-testid="embed-status">${embedStatus}</span>`}
  </div>`;
}

function Tile({ dataset, detail, colors, isRef, onToggleRef }) {
  const canvas = useRef(null);
  const tile = useRef(null);
  const version = `${detail.label_version}:${detail.prediction?.run_id}:${detail.prediction?.review}`;
  useEffect(() => {
    let live = true;
    const observer = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) {
        observer.disconnect();
        drawThumb(canvas.current, dataset.id, detail, colors, 160).catch((e) => live && showError(e));
      }
    });
    observer.observe(tile.current);
    return () => ((live = false), observer.disconnect());
  }, [detail.image_id, version]);
  const status = imageStatus(detail);
  const open = () => go({ dataset: dataset.id, view: "edit", arg: detail.image_id });
  return html`<div class="tile" ref=${tile} tabindex="0" data-testid="image-tile"
      data-image-id=${detail.image_id} data-status=${status}
      onClick=${open} onKeyDown=${(e) => e.key === "Enter" && open()}>
    <canvas ref=${canvas} width="160" height="160"></canvas>
    <div class="tile-meta">
      <span class=${"badge " + status}>${statusText(detail)}</span>
      ${detail.prediction && html`<span class="muted" title="uncertainty">u ${detail.prediction.uncertainty.toFixed(2)}</span>`}
      ${detail.label_version &&
      html`<label class="ref" onClick=${(e) => e.stopPropagation()}>
        <input type="checkbox" checked=${isRef} onChange=${onToggleRef} /> ref</label>`}
    </div>
  </div>`;
}

/** Arrow keys move the focus between tiles, row by row as laid out. */
function gridKeys(e) {
  const tiles = Array.from(e.currentTarget.querySelectorAll(".tile"));
  const i = tiles.indexOf(document.activeElement);
  if (i < 0 || !["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown"].includes(e.key)) return;
  e.preventDefault();
  const top = (t) => t.offsetTop;
  const perRow = tiles.filter((t) => top(t) === top(tiles[0])).length || 1;
  const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -perRow, ArrowDown: perRow }[e.key];
  tiles[Math.max(0, Math.min(tiles.length - 1, i + step))].focus();
}

function VisualPrompting({ dataset, details, refs, onProgress }) {
  const [run, setRun] = useState(null);
  const [models, setModels] = useState([]);
  const [modelId, setModelId] = useState("");
  const abort = useRef(null);
  const watch = (r) => {
    setRun(r);
    abort.current?.abort();
    const ctl = (abort.current = new AbortController());
    follow(`/v1/predictions/${r.run_id}/events`, ({ data }) => {
      if (data && typeof data === "object" && "done" in data) {
        setRun((prev) => ({ ...prev, done: data.done, total: data.total, state: data.state }));
        onProgress();
      }
    }, { signal: ctl.signal })
      .then(async () => !ctl.signal.aborted && (setRun(await api.prediction(r.run_id)), onProgress()))
      .catch((e) => !ctl.signal.aborted && showError(e));
  };
  useEffect(() => {
    guarded(async () => {
      const [runs, jobs] = await Promise.all([api.predictions(dataset.id), api.trainings()]);
      setModels(jobs.jobs.filter((j) => j.dataset_id === dataset.id && j.model_id && j.state === "SUCCEEDED"));
      const latest = runs.runs[0];
      if (latest) ACTIVE.includes(latest.state) ? watch(latest) : setRun(latest);
    })();
    return () => abort.current?.abort();
  }, [dataset.id]);
  const start = guarded(async () => {
    const body = { references: [...refs].map((image_id) => ({ image_id })) };
    if (modelId) body.model_id = modelId;
    watch(await api.startPrediction(dataset.id, body));
  });
  const cancel = guarded(async () => {
    await api.cancelPrediction(run.run_id);
    setRun(await api.prediction(run.run_id));
  });
  const active = run && ACTIVE.includes(run.state);
  return html`<div class="panel vp">
    <span>${refs.size} reference${refs.size === 1 ? "" : "s"}</span>
    <select value=${modelId} onChange=${(e) => setModelId(e.target.value)} aria-label="Model">
      <option value="">stock model (zero-shot)</option>
      ${models.map((j) => html`<option value=${j.model_id}>${j.method} · ${j.model_id}</option>`)}
    </select>
    <button data-testid="visual-prompt-run" disabled=${!refs.size || active} onClick=${start}
      title=${refs.size ? "" : "Label an image and tick its 'ref' box first"}>Run visual prompting</button>
    ${run && html`<span data-testid="prediction-progress" data-state=${run.state}
        data-done=${run.done} data-total=${run.total}>
      <progress max=${run.total || 1} value=${run.done}></progress>
      ${run.done}/${run.total} · ${run.state.toLowerCase()}
      ${run.errors?.length ? html` · ${run.errors.length} errors` : ""}
    </span>`}
    ${active && html`<button class="link" onClick=${cancel}>cancel</button>`}
    ${run && !active && html`<a class="button" href=${`#/d/${dataset.id}/review/${run.run_id}`}>Review</a>`}
  </div>`;
}

export function ImagesView({ dataset }) {
  const [details, setDetails] = useState(null);
  const [filter, setFilter] = useState("all");
  const [sort, setSort] = useState("name");
  const [, setTick] = useState(0);
  const colors = classColors(dataset);
  const reload = guarded(async () => setDetails((await api.images(dataset.id)).details));
  const throttle = useRef(0);
  const onProgress = () => {
    // Results appear while the run goes: at most one refresh a second, and never two at
    // once (listing a large dataset's details can take longer than that).
    if (throttle.current) return;
    throttle.current = setTimeout(async () => {
      await reload();
      throttle.current = 0;
    }, 1000);
  };
  useEffect(() => void reload(), [dataset.id]);
  useEffect(() => () => clearTimeout(throttle.current), []);
  if (!details) return html`<p class="muted">Loading…</p>`;
  const refs = referencesOf(dataset.id, details);
  const toggle = (id) => () => {
    toggleReference(dataset.id, id, !refs.has(id));
    setTick((t) => t + 1);
  };
  const shown = arrange(details, filter, sort);
  const counts = {};
  for (const d of details) counts[imageStatus(d)] = (counts[imageStatus(d)] || 0) + 1;
  return html`<section>
    <${Uploader} dataset=${dataset} onUploaded=${reload} />
    <${ImportExport} dataset=${dataset} onImported=${reload} />
    <${VisualPrompting} dataset=${dataset} details=${details} refs=${refs} onProgress=${onProgress} />
    <div class="toolbar">
      <label>Show <select value=${filter} onChange=${(e) => setFilter(e.target.value)}>
        <option value="all">all (${details.length})</option>
        ${["unlabelled", "predicted", "labelled", "accepted", "edited", "rejected"].map(
          (s) => html`<option value=${s}>${s} (${counts[s] || 0})</option>`,
        )}
      </select></label>
      <label>Sort <select value=${sort} onChange=${(e) => setSort(e.target.value)}>
        <option value="name">by id</option>
        <option value="uncertainty">most uncertain first</option>
        <option value="score">lowest score first</option>
      </select></label>
    </div>
    <div class="grid" data-testid="image-grid" onKeyDown=${gridKeys}>
      ${shown.map(
        (d) => html`<${Tile} key=${d.image_id} dataset=${dataset} detail=${d} colors=${colors}
          isRef=${refs.has(d.image_id)} onToggleRef=${toggle(d.image_id)} />`,
      )}
      ${details.length === 0 && html`<p class="muted">No images yet: add some above.</p>`}
    </div>
  </section>`;
}
