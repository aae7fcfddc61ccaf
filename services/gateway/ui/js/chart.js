// A small line chart on a canvas: training loss (left axis) and validation IoU (right axis,
// 0..1) against the step.

export function drawChart(canvas, { loss, val, total }) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width;
  const H = canvas.height;
  const pad = 28;
  ctx.clearRect(0, 0, W, H);
  ctx.strokeStyle = "#94a3b8";
  ctx.lineWidth = 1;
  ctx.strokeRect(pad, 8, W - 2 * pad, H - pad - 8);
  ctx.fillStyle = "#94a3b8";
  ctx.font = "11px sans-serif";
  ctx.fillText("step", W / 2 - 10, H - 6);
  const maxStep = Math.max(1, total || 0, ...loss.map((p) => p[0]), ...val.map((p) => p[0]));
  const maxLoss = Math.max(1e-6, ...loss.map((p) => p[1]));
  const x = (s) => pad + (s / maxStep) * (W - 2 * pad);
  const line = (points, y, color) => {
    if (!points.length) return;
    ctx.beginPath();
    points.forEach(([s, v], i) => (i ? ctx.lineTo(x(s), y(v)) : ctx.moveTo(x(s), y(v))));
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.stroke();
    for (const [s, v] of points.length < 40 ? points : []) {
      ctx.fillStyle = color;
      ctx.fillRect(x(s) - 2, y(v) - 2, 4, 4);
    }
  };
  line(loss, (v) => 8 + (1 - v / maxLoss) * (H - pad - 8), "#f97316");
  line(val, (v) => 8 + (1 - v) * (H - pad - 8), "#22c55e");
  ctx.fillStyle = "#f97316";
  ctx.fillText(`loss (max ${maxLoss.toFixed(3)})`, pad + 4, 20);
  ctx.fillStyle = "#22c55e";
  ctx.fillText("val IoU (0..1)", W - pad - 80, 20);
}

/** "1 min 5 s" */
export function formatSeconds(s) {
  if (s == null || !isFinite(s)) return "–";
  s = Math.max(0, Math.round(s));
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}
