// The canvas workbench shared by the editor and the review queue: the image, the label map
// overlay (data-testid=mask-overlay: its non-transparent pixels are the current mask) and a
// marks layer (points, box, polygon, brush cursor), with every tool:
//   point / box: SAM prompts (left click +, right click or Shift -, drag a box); the mask
//     after each click, the newest request wins; Tab cycles the candidates; Enter commits
//     (added to or cut from the active class); Ctrl+Z removes the last point; Esc clears.
//   brush / eraser: `[` `]` size, a cursor that shows it; polygon: click vertices, Enter or
//     double click closes (adds or cuts); fill holes. Undo / redo per stroke.
//   Wheel zooms at the cursor, Space + drag (or the middle button) pans; H hides the mask,
//   O outline only, opacity slider.
import { useEffect, useRef, useState } from "../../vendor/hooks.module.js";
import { api } from "../api.js";
import { showError } from "../errors.js";
import { History } from "../history.js";
import { html } from "../html.js";
import { applyMask, fillHoles, fillPolygon, paintStroke, paintOverlay } from "../mask.js";
import { decodeRle } from "../rle.js";
import { classColors } from "../thumbs.js";

const TOOLS = [
  ["point", "Point (P)", "tool-point"],
  ["box", "Box (X)", "tool-box"],
  ["brush", "Brush (B)", "tool-brush"],
  ["eraser", "Eraser (E)", "tool-eraser"],
  ["polygon", "Polygon (G)", "tool-polygon"],
];
const TOOL_KEYS = { p: "point", x: "box", b: "brush", e: "eraser", g: "polygon" };

/** Fit the image into the stage: the initial zoom and pan. */
export function fitView(stageW, stageH, w, h) {
  const scale = Math.min(stageW / w, stageH / h) || 1;
  return { scale, tx: (stageW - w * scale) / 2, ty: (stageH - h * scale) / 2 };
}

export function Workbench({ dataset, imageId, bitmap, doc, view, setView, models = [], onChange, keys }) {
  // doc: {map: Uint8Array, w, h, history: History}; mutated in place, `onChange` after edits.
  const { w, h } = doc;
  const stage = useRef(null);
  const imageCanvas = useRef(null);
  const overlay = useRef(null);
  const marks = useRef(null);
  const [tool, setTool] = useState("point");
  const [mode, setMode] = useState("add"); // SAM and polygon: add to or cut from the class
  const [cls, setCls] = useState(dataset.classes[0].id);
  const [brush, setBrush] = useState(8);
  const [opacity, setOpacity] = useState(0.5);
  const [outline, setOutline] = useState(false);
  const [hidden, setHidden] = useState(false);
  const [modelId, setModelId] = useState("");
  const [, redraw] = useState(0);
  const s = useRef({
    points: [], box: null, candidates: [], pick: 0, seq: 0, abort: null,
    polygon: [], drag: null, cursor: null, space: false,
  }).current;
  const colors = classColors(dataset);
  const refresh = () => redraw((n) => n + 1);

  // --- drawing ---------------------------------------------------------------------------
  const composed = () => {
    const pending = s.candidates[s.pick];
    if (!pending) return doc.map;
    const copy = doc.map.slice();
    applyMask(copy, pending, cls, mode);
    return copy;
  };
  const paintMask = () => {
    const ctx = overlay.current.getContext("2d");
    const img = ctx.createImageData(w, h);
    paintOverlay(img.data, composed(), w, h, colors, opacity, outline);
    ctx.putImageData(img, 0, 0);
    // How many times it was painted: automation waits for the first paint of an image.
    overlay.current.dataset.paints = String(Number(overlay.current.dataset.paints || 0) + 1);
  };
  const paintMarks = () => {
    const ctx = marks.current.getContext("2d");
    ctx.clearRect(0, 0, w, h);
    const px = 1 / view.scale; // one screen pixel in image pixels
    for (const [x, y, label] of s.points) {
      ctx.beginPath();
      ctx.arc(x, y, 5 * px, 0, 2 * Math.PI);
      ctx.fillStyle = label ? "#22c55e" : "#ef4444";
      ctx.fill();
      ctx.lineWidth = 1.5 * px;
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    }
    const box = s.drag?.kind === "box" ? s.drag.box : s.box;
    if (box) {
      ctx.lineWidth = 2 * px;
      ctx.strokeStyle = "#facc15";
      ctx.strokeRect(box[0], box[1], box[2] - box[0], box[3] - box[1]);
    }
    if (s.polygon.length) {
      ctx.beginPath();
      s.polygon.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      if (s.cursor) ctx.lineTo(s.cursor[0], s.cursor[1]);
      ctx.lineWidth = 1.5 * px;
      ctx.strokeStyle = mode === "add" ? "#38bdf8" : "#f97316";
      ctx.stroke();
    }
    if (s.cursor && (tool === "brush" || tool === "eraser")) {
      ctx.beginPath();
      ctx.arc(s.cursor[0], s.cursor[1], brush, 0, 2 * Math.PI);
      ctx.lineWidth = 1.5 * px;
      ctx.strokeStyle = tool === "brush" ? "#fff" : "#f97316";
      ctx.stroke();
    }
  };

  useEffect(() => {
    const ctx = imageCanvas.current.getContext("2d");
    ctx.drawImage(bitmap, 0, 0);
    s.points = [];
    s.box = null;
    s.candidates = [];
    s.polygon = [];
  }, [bitmap]);
  useEffect(() => {
    paintMask();
    paintMarks();
  });
  useEffect(() => {
    if (view.scale) return;
    const r = stage.current.getBoundingClientRect();
    setView(fitView(r.width, r.height, w, h));
  }, [w, h, view.scale]);

  // --- SAM prompts -----------------------------------------------------------------------
  const requestMask = async () => {
    const seq = ++s.seq;
    s.abort?.abort();
    if (!s.points.length && !s.box) {
      s.candidates = [];
      return refresh();
    }
    const ctl = (s.abort = new AbortController());
    const body = {
      points: s.points.map(([x, y]) => [x, y]),
      labels: s.points.map((p) => p[2]),
      multimask: s.points.length === 1 && !s.box,
    };
    if (s.box) body.box = s.box;
    if (modelId) body.model_id = modelId;
    try {
      const r = await api.segment(imageId, body, ctl.signal);
      if (seq !== s.seq) return; // a newer click already asked
      s.candidates = r.masks.map((m) => decodeRle(m.rle));
      s.pick = 0;
      // Paint now rather than after preact's next render (a frame later), then measure
      // click -> overlay painted (User Timing, read by `vplab bench ui`).
      paintMask();
      paintMarks();
      if (performance.getEntriesByName("vplab:click", "mark").length)
        performance.measure("vplab:click-to-overlay", "vplab:click");
      refresh();
    } catch (e) {
      if (seq === s.seq) showError(e);
    }
  };
  const commitPrompt = () => {
    const pending = s.candidates[s.pick];
    if (pending) {
      doc.history.begin(doc.map);
      applyMask(doc.map, pending, cls, mode);
      if (doc.history.commit(doc.map)) onChange();
    }
    clearPrompt();
  };
  const clearPrompt = () => {
    s.seq++;
    s.abort?.abort();
    s.points = [];
    s.box = null;
    s.candidates = [];
    s.polygon = [];
    refresh();
  };
  const closePolygon = () => {
    if (s.polygon.length >= 3) {
      doc.history.begin(doc.map);
      if (mode === "add") fillPolygon(doc.map, w, h, s.polygon, cls);
      else fillPolygon(doc.map, w, h, s.polygon, 0, (v) => v === cls);
      if (doc.history.commit(doc.map)) onChange();
    }
    s.polygon = [];
    refresh();
  };
  const edit = (fn) => {
    commitPrompt();
    doc.history.begin(doc.map);
    fn();
    if (doc.history.commit(doc.map)) onChange();
    refresh();
  };
  const undo = () => {
    if (s.points.length) {
      s.points.pop();
      requestMask();
    } else if (s.polygon.length) {
      s.polygon.pop();
      refresh();
    } else if (doc.history.undo(doc.map)) onChange(), refresh();
  };
  const redo = () => doc.history.redo(doc.map) && (onChange(), refresh());
  // Exposed to the parent (save commits a pending prompt first).
  doc.commitPending = commitPrompt;
  doc.setTool = (t) => (commitPrompt(), setTool(t));

  // --- pointer ---------------------------------------------------------------------------
  const toImage = (e) => {
    const r = imageCanvas.current.getBoundingClientRect();
    return [((e.clientX - r.left) / r.width) * w, ((e.clientY - r.top) / r.height) * h];
  };
  const onDown = (e) => {
    e.preventDefault();
    imageCanvas.current.setPointerCapture?.(e.pointerId);
    if (e.button === 1 || s.space) {
      s.drag = { kind: "pan", x: e.clientX, y: e.clientY, view: { ...view } };
      return;
    }
    const [x, y] = toImage(e);
    if (tool === "point") {
      performance.mark("vplab:click");
      s.points.push([x, y, e.button === 2 || e.shiftKey ? 0 : 1]);
      refresh();
      requestMask();
    } else if (tool === "box") {
      s.drag = { kind: "box", x0: x, y0: y, box: [x, y, x, y] };
    } else if (tool === "brush" || tool === "eraser") {
      commitPrompt();
      doc.history.begin(doc.map);
      s.drag = { kind: "paint", x, y };
      paintStroke(doc.map, w, h, x, y, x, y, brush, tool === "brush" ? cls : 0);
      refresh();
    } else if (tool === "polygon" && e.button === 0) {
      s.polygon.push([x, y]);
      refresh();
    }
  };
  const onMove = (e) => {
    const [x, y] = toImage(e);
    s.cursor = [x, y];
    const d = s.drag;
    if (d?.kind === "pan") {
      setView({ ...d.view, tx: d.view.tx + e.clientX - d.x, ty: d.view.ty + e.clientY - d.y });
    } else if (d?.kind === "box") {
      d.box = [Math.min(d.x0, x), Math.min(d.y0, y), Math.max(d.x0, x), Math.max(d.y0, y)];
    } else if (d?.kind === "paint") {
      paintStroke(doc.map, w, h, d.x, d.y, x, y, brush, tool === "brush" ? cls : 0);
      d.x = x;
      d.y = y;
    }
    if (d?.kind === "paint") paintMask();
    paintMarks();
  };
  const onUp = () => {
    const d = s.drag;
    s.drag = null;
    if (d?.kind === "box") {
      const [x0, y0, x1, y1] = d.box;
      if (x1 - x0 >= 2 && y1 - y0 >= 2) {
        s.box = d.box;
        requestMask();
      }
      refresh();
    } else if (d?.kind === "paint") {
      if (doc.history.commit(doc.map)) onChange();
      refresh();
    }
  };
  const onWheel = (e) => {
    e.preventDefault();
    const r = stage.current.getBoundingClientRect();
    const mx = e.clientX - r.left;
    const my = e.clientY - r.top;
    const f = Math.exp(-e.deltaY * 0.0015);
    const scale = Math.min(64, Math.max(0.05, view.scale * f));
    const k = scale / view.scale;
    setView({ scale, tx: mx - (mx - view.tx) * k, ty: my - (my - view.ty) * k });
  };

  // --- keyboard --------------------------------------------------------------------------
  useEffect(() => {
    const down = (e) => {
      if (e.target.closest?.("input, select, textarea")) return;
      if (keys && keys(e)) return;
      const k = e.key.toLowerCase();
      const ctrl = e.ctrlKey || e.metaKey;
      if (ctrl && k === "z") (e.preventDefault(), e.shiftKey ? redo() : undo());
      else if (ctrl && k === "y") (e.preventDefault(), redo());
      else if (ctrl) return;
      else if (e.key === "Tab") {
        e.preventDefault();
        if (s.candidates.length > 1) (s.pick = (s.pick + 1) % s.candidates.length), refresh();
      } else if (e.key === "Escape") clearPrompt();
      else if (e.key === "Enter") tool === "polygon" ? closePolygon() : commitPrompt();
      else if (e.key === " ") (e.preventDefault(), (s.space = true));
      else if (e.key === "[") setBrush((b) => Math.max(1, Math.round(b / 1.25)));
      else if (e.key === "]") setBrush((b) => Math.min(256, Math.round(b * 1.25) + 1));
      else if (k === "h") setHidden((v) => !v);
      else if (k === "o") setOutline((v) => !v);
      else if (k === "f") edit(() => fillHoles(doc.map, w, h, cls));
      else if (k === "-" || k === "=") setMode(k === "-" ? "cut" : "add");
      else if (TOOL_KEYS[k]) (commitPrompt(), setTool(TOOL_KEYS[k]));
      else if (/^[1-9]$/.test(e.key) && dataset.classes[+e.key - 1]) setCls(dataset.classes[+e.key - 1].id);
    };
    const up = (e) => e.key === " " && (s.space = false);
    addEventListener("keydown", down);
    addEventListener("keyup", up);
    return () => (removeEventListener("keydown", down), removeEventListener("keyup", up));
  });

  const layer = { transform: `translate(${view.tx || 0}px, ${view.ty || 0}px) scale(${view.scale || 1})` };
  const size = { width: `${w}px`, height: `${h}px` };
  return html`<div class="workbench">
    <div class="tools">
      ${TOOLS.map(
        ([t, label, id]) => html`<button class=${"tool" + (tool === t ? " active" : "")}
          data-testid=${id} aria-pressed=${tool === t} onClick=${() => (commitPrompt(), setTool(t))}>${label}</button>`,
      )}
      <button class="tool" onClick=${() => edit(() => fillHoles(doc.map, w, h, cls))}>Fill holes (F)</button>
      <span class="sep"></span>
      <button class=${"tool" + (mode === "add" ? " active" : "")} onClick=${() => setMode("add")}>Add (=)</button>
      <button class=${"tool" + (mode === "cut" ? " active" : "")} onClick=${() => setMode("cut")}>Cut (−)</button>
      <select value=${cls} onChange=${(e) => setCls(+e.target.value)} aria-label="Class">
        ${dataset.classes.map((c, i) => html`<option value=${c.id}>${i + 1}. ${c.name}</option>`)}
      </select>
      <label>size <span data-testid="brush-size">${brush}</span></label>
      <span class="sep"></span>
      <button class="tool" data-testid="undo" disabled=${!doc.history.canUndo && !s.points.length} onClick=${undo}>Undo</button>
      <button class="tool" data-testid="redo" disabled=${!doc.history.canRedo} onClick=${redo}>Redo</button>
      <span class="sep"></span>
      <label>opacity <input type="range" min="0.1" max="1" step="0.05" value=${opacity}
        onInput=${(e) => setOpacity(+e.target.value)} /></label>
      <label><input type="checkbox" checked=${outline} onChange=${(e) => setOutline(e.target.checked)} /> outline</label>
      <label><input type="checkbox" checked=${hidden} onChange=${(e) => setHidden(e.target.checked)} /> hide (H)</label>
      ${models.length > 0 && html`<select value=${modelId} onChange=${(e) => setModelId(e.target.value)} aria-label="SAM model">
        <option value="">stock SAM</option>
        ${models.map((m) => html`<option value=${m}>${m}</option>`)}
      </select>`}
      ${s.candidates.length > 1 && html`<span class="muted">candidate ${s.pick + 1}/${s.candidates.length} (Tab)</span>`}
    </div>
    <div class="stage" ref=${stage} onWheel=${onWheel}>
      <div class="layers" style=${layer}>
        <canvas data-testid="image-canvas" ref=${imageCanvas} width=${w} height=${h} style=${size}
          class=${"tool-" + tool}
          onPointerDown=${onDown} onPointerMove=${onMove} onPointerUp=${onUp}
          onPointerLeave=${() => ((s.cursor = null), paintMarks())}
          onDblClick=${() => tool === "polygon" && closePolygon()}
          onContextMenu=${(e) => e.preventDefault()}></canvas>
        <canvas data-testid="mask-overlay" ref=${overlay} width=${w} height=${h}
          style=${{ ...size, visibility: hidden ? "hidden" : "visible" }}></canvas>
        <canvas ref=${marks} width=${w} height=${h} style=${size}></canvas>
      </div>
    </div>
  </div>`;
}

/** A fresh document for the workbench: the label map and its history. */
export function newDoc(map, w, h) {
  return { map, w, h, history: new History(200), commitPending: () => {}, setTool: () => {} };
}
