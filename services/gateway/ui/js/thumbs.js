// Thumbnails: an image with its mask overlay, drawn into a small canvas when the tile
// scrolls into view (IntersectionObserver), at most a few fetches at a time, cached.
import { loadImage, loadLabelVersion, loadPrediction } from "./loaders.js";
import { hexToRgb, paintOverlay } from "./mask.js";

const cache = new Map(); // key -> Promise<ImageBitmap>
const MAX_IN_FLIGHT = 4;
let inFlight = 0;
const waiting = [];
export const stats = { fetched: 0 }; // how many thumbnails were fetched (the grid benchmark)

function limited(fn) {
  return new Promise((resolve, reject) => {
    const run = () => {
      inFlight++;
      fn()
        .then(resolve, reject)
        .finally(() => {
          inFlight--;
          waiting.shift()?.();
        });
    };
    inFlight < MAX_IN_FLIGHT ? run() : waiting.push(run);
  });
}

function once(key, fn) {
  if (!cache.has(key)) {
    const p = limited(fn);
    p.catch(() => cache.delete(key));
    cache.set(key, p);
  }
  return cache.get(key);
}

/** The overlay source of an image: its latest label, else its latest prediction. */
export function overlaySource(datasetId, detail) {
  if (detail.label_version) return { kind: "label", key: `l:${datasetId}:${detail.image_id}:${detail.label_version}` };
  if (detail.prediction && detail.prediction.review !== "rejected")
    return { kind: "prediction", key: `p:${detail.prediction.run_id}:${detail.image_id}` };
  return null;
}

function overlayMap(datasetId, detail, source) {
  return source.kind === "label"
    ? loadLabelVersion(datasetId, detail.image_id, detail.label_version)
    : loadPrediction(detail.prediction.run_id, detail.image_id);
}

/** Draw the thumbnail of `detail` into `canvas` (size x size, letterboxed). */
export async function drawThumb(canvas, datasetId, detail, colors, size) {
  const bitmap = await once(`i:${detail.image_id}`, async () => {
    stats.fetched++;
    return loadImage(detail.image_id);
  });
  const source = overlaySource(datasetId, detail);
  const overlay = source
    ? await once(source.key, async () => {
        const map = await overlayMap(datasetId, detail, source);
        const { width: w, height: h } = bitmap; // labels are the image's size (EXIF applied)
        const img = new ImageData(w, h);
        paintOverlay(img.data, map, w, h, colors, 0.5);
        return createImageBitmap(img);
      })
    : null;
  const s = Math.min(size / bitmap.width, size / bitmap.height);
  const w = bitmap.width * s;
  const h = bitmap.height * s;
  canvas.width = size;
  canvas.height = size;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, size, size);
  ctx.drawImage(bitmap, (size - w) / 2, (size - h) / 2, w, h);
  if (overlay) ctx.drawImage(overlay, (size - w) / 2, (size - h) / 2, w, h);
}

/** Class id -> [r, g, b] for a dataset. */
export function classColors(dataset) {
  const colors = {};
  for (const c of dataset.classes) colors[c.id] = hexToRgb(c.color);
  return colors;
}
