// Pixel operations on masks and label maps: row-major typed arrays of h * w, in place.
// Pure functions (no DOM), tested in the browser against Python references.

/** 4-connected flood fill from (x, y): every pixel connected to it with its value becomes
 *  `value`. Returns how many pixels changed. */
export function floodFill(map, w, h, x, y, value) {
  x = Math.floor(x);
  y = Math.floor(y);
  if (x < 0 || y < 0 || x >= w || y >= h) return 0;
  const target = map[y * w + x];
  if (target === value) return 0;
  const stack = new Int32Array(w * h + 1);
  let top = 0;
  stack[top++] = y * w + x;
  map[y * w + x] = value;
  let changed = 1;
  while (top > 0) {
    const i = stack[--top];
    const px = i % w;
    const neighbours = [px > 0 ? i - 1 : -1, px < w - 1 ? i + 1 : -1, i - w, i + w];
    for (const n of neighbours) {
      if (n >= 0 && n < w * h && map[n] === target) {
        map[n] = value;
        stack[top++] = n;
        changed++;
      }
    }
  }
  return changed;
}

/** Fill the holes of class `cls`: background pixels (0) that cannot reach the border
 *  (4-connected) without crossing `cls` become `cls`. Other classes are never changed. */
export function fillHoles(map, w, h, cls) {
  const outside = new Uint8Array(w * h); // 1: a background pixel reachable from the border
  const stack = new Int32Array(w * h);
  let top = 0;
  const seed = (i) => {
    if (map[i] !== cls && !outside[i]) {
      outside[i] = 1;
      stack[top++] = i;
    }
  };
  for (let x = 0; x < w; x++) {
    seed(x);
    seed((h - 1) * w + x);
  }
  for (let y = 0; y < h; y++) {
    seed(y * w);
    seed(y * w + w - 1);
  }
  while (top > 0) {
    const i = stack[--top];
    const px = i % w;
    if (px > 0) seed(i - 1);
    if (px < w - 1) seed(i + 1);
    if (i >= w) seed(i - w);
    if (i + w < w * h) seed(i + w);
  }
  let changed = 0;
  for (let i = 0; i < w * h; i++) {
    if (!outside[i] && map[i] === 0) {
      map[i] = cls;
      changed++;
    }
  }
  return changed;
}

/** Paint a disc of radius r (pixels whose centre is within r of (cx, cy)). `where`, when
 *  given, limits the paint to pixels for which where(oldValue) is true. */
export function paintDisc(map, w, h, cx, cy, r, value, where = null) {
  const x0 = Math.max(0, Math.floor(cx - r));
  const x1 = Math.min(w - 1, Math.ceil(cx + r));
  const y0 = Math.max(0, Math.floor(cy - r));
  const y1 = Math.min(h - 1, Math.ceil(cy + r));
  const r2 = r * r;
  for (let y = y0; y <= y1; y++) {
    const dy = y + 0.5 - cy;
    for (let x = x0; x <= x1; x++) {
      const dx = x + 0.5 - cx;
      if (dx * dx + dy * dy <= r2) {
        const i = y * w + x;
        if (!where || where(map[i])) map[i] = value;
      }
    }
  }
}

/** A brush segment: discs every half radius from (x0, y0) to (x1, y1). */
export function paintStroke(map, w, h, x0, y0, x1, y1, r, value, where = null) {
  const len = Math.hypot(x1 - x0, y1 - y0);
  const n = Math.max(1, Math.ceil(len / Math.max(0.5, r / 2)));
  for (let k = 0; k <= n; k++) {
    const t = k / n;
    paintDisc(map, w, h, x0 + (x1 - x0) * t, y0 + (y1 - y0) * t, r, value, where);
  }
}

/** Fill a polygon [[x, y], ...] (even-odd rule, pixel centres) with `value`. */
export function fillPolygon(map, w, h, points, value, where = null) {
  if (points.length < 3) return;
  for (let y = 0; y < h; y++) {
    const yc = y + 0.5;
    const xs = [];
    for (let i = 0, j = points.length - 1; i < points.length; j = i++) {
      const [xi, yi] = points[i];
      const [xj, yj] = points[j];
      if (yi > yc !== yj > yc) xs.push(xi + ((yc - yi) * (xj - xi)) / (yj - yi));
    }
    xs.sort((a, b) => a - b);
    for (let k = 0; k + 1 < xs.length; k += 2) {
      const from = Math.max(0, Math.ceil(xs[k] - 0.5));
      const to = Math.min(w - 1, Math.floor(xs[k + 1] - 0.5));
      for (let x = from; x <= to; x++) {
        const i = y * w + x;
        if (!where || where(map[i])) map[i] = value;
      }
    }
  }
}

/** Merge a binary mask into the label map as class `cls` ("add"), or remove it from `cls`
 *  ("cut"). Adding never overwrites another class's pixels unless `overwrite`. */
export function applyMask(map, mask, cls, mode, overwrite = true) {
  let changed = 0;
  for (let i = 0; i < map.length; i++) {
    if (!mask[i]) continue;
    if (mode === "add") {
      if (map[i] !== cls && (overwrite || map[i] === 0)) {
        map[i] = cls;
        changed++;
      }
    } else if (map[i] === cls) {
      map[i] = 0;
      changed++;
    }
  }
  return changed;
}

/** The binary mask of one class. */
export function classMask(map, cls) {
  const out = new Uint8Array(map.length);
  for (let i = 0; i < map.length; i++) out[i] = map[i] === cls ? 1 : 0;
  return out;
}

/** Pixels per class id: {id: count} (background excluded). */
export function classAreas(map) {
  const areas = {};
  for (let i = 0; i < map.length; i++) if (map[i]) areas[map[i]] = (areas[map[i]] || 0) + 1;
  return areas;
}

/** "#rrggbb" -> [r, g, b]. */
export function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

/** Paint a label map into RGBA pixels (an ImageData's data): class colours at `opacity`,
 *  background fully transparent; `outline`: only pixels on a class boundary. A pixel is
 *  non-transparent exactly when it is labelled (and, with `outline`, on a boundary). */
export function paintOverlay(rgba, map, w, h, colors, opacity = 0.5, outline = false) {
  const alpha = Math.max(1, Math.round(opacity * 255));
  for (let i = 0; i < w * h; i++) {
    const c = map[i];
    const o = i * 4;
    let on = c !== 0;
    if (on && outline) {
      const x = i % w;
      on =
        x === 0 || x === w - 1 || i < w || i >= (h - 1) * w ||
        map[i - 1] !== c || map[i + 1] !== c || map[i - w] !== c || map[i + w] !== c;
    }
    if (on) {
      const rgb = colors[c] || [255, 255, 255];
      rgba[o] = rgb[0];
      rgba[o + 1] = rgb[1];
      rgba[o + 2] = rgb[2];
      rgba[o + 3] = outline ? 255 : alpha;
    } else {
      rgba[o + 3] = 0;
    }
  }
}
