// Fine-tuning: pick a method (the registry, with trainable parameters on the deployed base
// and a one-line description), its training recipe where it has several, and the steps; follow the job live (SSE): step, loss and
// validation curves, ETA, cancel. The state is always shown; Start is disabled while a
// job of this dataset runs.
import { useEffect, useRef, useState } from "../../vendor/hooks.module.js";
import { api, follow } from "../api.js";
import { drawChart, formatSeconds } from "../chart.js";
import { guarded, showError } from "../errors.js";
import { html } from "../html.js";

const ACTIVE = ["QUEUED", "RUNNING"];
const fmtInt = (n) => (n == null ? "n/a" : n.toLocaleString("en"));
const pct = (v) => (v == null ? "–" : (100 * v).toFixed(1));

export function TrainingView({ dataset }) {
  const [methods, setMethods] = useState([]);
  const [method, setMethod] = useState("epeft");
  const [recipe, setRecipe] = useState(""); // "" = the method's default recipe
  const [steps, setSteps] = useState(0);
  const [jobs, setJobs] = useState([]);
  const [job, setJob] = useState(null);
  const [curves, setCurves] = useState({ loss: [], val: [] });
  const [eta, setEta] = useState(null);
  const chart = useRef(null);
  const abort = useRef(null);

  const watch = (j) => {
    setJob(j);
    setCurves({ loss: [], val: [] });
    abort.current?.abort();
    const ctl = (abort.current = new AbortController());
    follow(`/v1/trainings/${j.job_id}/events`, ({ data }) => {
      if (!data || typeof data !== "object" || !("step" in data)) return;
      setJob((prev) => ({ ...prev, state: data.state, step: data.step, total_steps: data.total_steps }));
      if (data.eta_s != null) setEta(data.eta_s);
      // Loss on training steps; validation IoU only on the steps that validated.
      setCurves((c) => ({
        loss: data.loss != null && data.step > 0 ? [...c.loss, [data.step, data.loss]] : c.loss,
        val: data.val_iou != null ? [...c.val, [data.step, data.val_iou]] : c.val,
      }));
    }, { signal: ctl.signal })
      .then(async () => {
        if (ctl.signal.aborted) return;
        const done = await api.training(j.job_id);
        setJob(done);
        setEta(null);
        reload();
      })
      .catch((e) => !ctl.signal.aborted && showError(e));
  };
  const reload = guarded(async () => {
    const mine = (await api.trainings()).jobs.filter((j) => j.dataset_id === dataset.id);
    setJobs(mine);
    return mine;
  });
  useEffect(() => {
    guarded(async () => {
      const m = (await api.methods()).methods;
      setMethods(m);
      const mine = await reload();
      const active = mine?.find((j) => ACTIVE.includes(j.state));
      if (active) watch(active);
      else if (mine?.length) setJob(mine[0]);
    })();
    return () => abort.current?.abort();
  }, [dataset.id]);
  useEffect(() => {
    if (chart.current) drawChart(chart.current, { ...curves, total: job?.total_steps });
  });

  const start = guarded(async () => {
    const body = { dataset_id: dataset.id, method };
    if (steps > 0) body.steps = steps;
    if (recipe) body.recipe = recipe;
    const j = await api.startTraining(body);
    reload();
    watch(j);
  });
  const cancel = guarded(async () => {
    await api.cancelTraining(job.job_id);
    setJob(await api.training(job.job_id));
  });
  const running = job && ACTIVE.includes(job.state);
  const spec = methods.find((m) => m.name === method);
  // "lora", or "lora (micro-sam)" for a job on another than its method's default recipe.
  const withRecipe = (j) => {
    const byDefault = methods.find((m) => m.name === j.method)?.recipes?.[0];
    return j.recipe && j.recipe !== byDefault ? `${j.method} (${j.recipe})` : j.method;
  };
  return html`<section class="training">
    <div class="panel">
      <label>Method
        <select data-testid="method-select" value=${method}
          onChange=${(e) => { setMethod(e.target.value); setRecipe(""); }}>
          ${methods.map(
            (m) => html`<option value=${m.name} disabled=${m.trainable_parameters == null}>
              ${m.name} · ${fmtInt(m.trainable_parameters)} params</option>`,
          )}
        </select></label>
      ${spec?.recipes?.length > 1 && html`<label>Recipe
        <select data-testid="recipe-select" value=${recipe || spec.recipes[0]}
          onChange=${(e) => setRecipe(e.target.value === spec.recipes[0] ? "" : e.target.value)}>
          ${spec.recipes.map((r) => html`<option value=${r}>${r}</option>`)}
        </select></label>`}
      <label>Steps <input type="number" min="0" max="100000" value=${steps} data-testid="train-steps"
        onInput=${(e) => setSteps(Math.max(0, parseInt(e.target.value || "0", 10)))} />
        <span class="muted">${steps ? "" : `(default ${spec?.default_steps ?? "…"})`}</span></label>
      <button data-testid="train-start" disabled=${running || !methods.length} onClick=${start}
        title=${running ? "A job of this dataset is running" : ""}>Train</button>
      ${running && html`<button class="link" onClick=${cancel}>cancel</button>`}
      ${spec && html`<p class="muted method-help">${spec.description}
        (${fmtInt(spec.trainable_parameters)} trainable on ${spec.base}${spec.mergeable ? ", mergeable" : ""})</p>`}
    </div>
    ${job && html`<div class="panel" data-testid="train-progress" data-state=${job.state}
        data-step=${job.step} data-total=${job.total_steps}>
      <strong class=${"state " + job.state.toLowerCase()}>${job.state.toLowerCase()}</strong>
      <span> ${withRecipe(job)} · step ${job.step}/${job.total_steps}</span>
      <progress max=${job.total_steps || 1} value=${job.step}></progress>
      ${running && html`<span> ETA ${formatSeconds(eta)}</span>`}
      ${job.state === "SUCCEEDED" && html`<span> → model <code>${job.model_id}</code>
        · val IoU ${pct(job.initial_val_iou)} → ${pct(job.best_val_iou)}${job.val_on_train
          ? html` <span class="muted" data-testid="val-on-train"
              title="Fewer than 10 labelled images: all of them trained, so this validation ran on training images and overstates quality on new ones">(on training images)</span>`
          : ""}
        ${job.zero_shot_miou != null ? ` · visual prompting mIoU ${pct(job.zero_shot_miou)} → ${pct(job.tuned_miou)} on ${job.gain_images} images` : ""}</span>`}
      ${job.error && html`<p class="error">${job.error}</p>`}
    </div>`}
    <canvas data-testid="train-chart" ref=${chart} width="640" height="220" class="chart"></canvas>
    <h3>Jobs of this dataset</h3>
    <table class="jobs">
      <thead><tr><th>job</th><th>method</th><th>state</th><th>steps</th><th>val IoU</th><th>model</th></tr></thead>
      <tbody>${jobs.map(
        (j) => html`<tr key=${j.job_id} onClick=${() => (ACTIVE.includes(j.state) ? watch(j) : setJob(j))}>
          <td>${j.job_id}</td><td>${withRecipe(j)}</td><td>${j.state.toLowerCase()}</td>
          <td>${j.step}/${j.total_steps}</td><td>${pct(j.initial_val_iou)} → ${pct(j.best_val_iou)}${j.val_on_train ? "*" : ""}</td>
          <td>${j.model_id}</td></tr>`,
      )}</tbody>
    </table>
    ${jobs.some((j) => j.val_on_train) && html`<p class="muted">* validated on its training
      images (fewer than 10 labelled): overstates quality on new images</p>`}
  </section>`;
}
