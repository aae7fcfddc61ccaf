// Datasets: list, create (name, classes with colours), delete, open.
import { useEffect, useState } from "../../vendor/hooks.module.js";
import { api } from "../api.js";
import { guarded } from "../errors.js";
import { html } from "../html.js";
import { go, href } from "../route.js";

const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6"];

function ClassRows({ classes, setClasses }) {
  const edit = (i, field) => (e) =>
    setClasses(classes.map((c, j) => (j === i ? { ...c, [field]: e.target.value } : c)));
  return html`<div class="class-rows">
    ${classes.map(
      (c, i) => html`<div class="class-row" key=${i}>
        <input type="color" value=${c.color} onInput=${edit(i, "color")} aria-label="Colour" />
        <input class="class-name" value=${c.name} onInput=${edit(i, "name")}
          placeholder=${`class ${i + 1}`} aria-label="Class name" />
        ${classes.length > 1 &&
        html`<button type="button" class="link"
          onClick=${() => setClasses(classes.filter((_, j) => j !== i))}>remove</button>`}
      </div>`,
    )}
    <button type="button" class="link" onClick=${() =>
      setClasses([...classes, { name: "", color: PALETTE[classes.length % PALETTE.length] }])}>
      + class</button>
  </div>`;
}

export function DatasetsView() {
  const [list, setList] = useState(null);
  const [name, setName] = useState("");
  const [classes, setClasses] = useState([{ name: "object", color: PALETTE[0] }]);
  const [channels, setChannels] = useState("");
  const reload = guarded(async () => setList((await api.datasets()).datasets));
  useEffect(() => void reload(), []);

  const create = guarded(async (e) => {
    e.preventDefault();
    const cls = classes.map((c, i) => ({ name: c.name.trim() || `class ${i + 1}`, color: c.color }));
    // "2" or "0, 2, 1": the TIFF channels to keep (the server checks them); "" = the default.
    const chosen = channels.split(/[\s,]+/).filter(Boolean).map(Number);
    const d = await api.createDataset(name.trim(), cls, chosen.length ? chosen : undefined);
    setName("");
    setChannels("");
    go({ dataset: d.id, view: "images" });
  });
  const remove = guarded(async (d) => {
    if (!confirm(`Delete dataset "${d.name}" with its labels?`)) return;
    await api.deleteDataset(d.id);
    await reload();
  });

  return html`<section class="datasets">
    <h2>Datasets</h2>
    <ul class="dataset-list" data-testid="dataset-list">
      ${list === null && html`<li class="muted">Loading…</li>`}
      ${list?.length === 0 && html`<li class="muted">No dataset yet: create one below.</li>`}
      ${list?.map(
        (d) => html`<li key=${d.id} class="dataset-item">
          <a href=${href({ dataset: d.id, view: "images" })} class="dataset-name">${d.name}</a>
          <span class="classes">${d.classes.map(
            (c) => html`<span class="chip" key=${c.id}><i class="swatch" style=${{ background: c.color }}></i>${c.name}</span>`,
          )}</span>
          ${d.channels && html`<span class="muted" data-testid="dataset-channels-shown">channels ${d.channels.join(", ")}</span>`}
          <span class="muted">${d.created_at.slice(0, 10)}</span>
          <button class="link danger" onClick=${() => remove(d)}>delete</button>
        </li>`,
      )}
    </ul>
    <form class="create" onSubmit=${create}>
      <h3>New dataset</h3>
      <input data-testid="dataset-name-input" placeholder="Name" value=${name} required
        onInput=${(e) => setName(e.target.value)} />
      <${ClassRows} classes=${classes} setClasses=${setClasses} />
      <label class="muted" title="Multi-channel TIFFs: one channel (grey) or 2-3 (a composite), 0-based; empty = 1 -> grey, 2-3 -> RGB, more -> the first 3">
        TIFF channels <input data-testid="dataset-channels" placeholder="default" size="8" value=${channels}
          onInput=${(e) => setChannels(e.target.value)} />
      </label>
      <button type="submit" data-testid="dataset-create" disabled=${!name.trim()}>Create</button>
    </form>
  </section>`;
}
