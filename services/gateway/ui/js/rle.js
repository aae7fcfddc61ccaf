// COCO compressed RLE <-> masks, byte for byte what pycocotools writes and reads.
// Masks in the page are row-major Uint8Array(h * w), 0 = background; RLE runs are
// column-major (Fortran order) and start with a run of zeros.

/** Run lengths of a mask, column-major, starting with zeros. */
export function maskToCounts(mask, h, w) {
  const counts = [];
  let current = 0;
  let run = 0;
  for (let x = 0; x < w; x++) {
    for (let y = 0; y < h; y++) {
      const v = mask[y * w + x] ? 1 : 0;
      if (v !== current) {
        counts.push(run);
        run = 0;
        current = v;
      }
      run++;
    }
  }
  counts.push(run);
  return counts;
}

/** pycocotools' rleToString: LEB128-like, 5 bits per char, deltas from the count two back. */
export function countsToString(counts) {
  let out = "";
  for (let i = 0; i < counts.length; i++) {
    let x = counts[i];
    if (i > 2) x -= counts[i - 2];
    let more = true;
    while (more) {
      let c = ((x % 32) + 32) % 32; // x & 0x1f, also for negative x
      x = Math.floor(x / 32); // arithmetic x >> 5
      more = c & 0x10 ? x !== -1 : x !== 0;
      if (more) c |= 0x20;
      out += String.fromCharCode(c + 48);
    }
  }
  return out;
}

/** pycocotools' rleFrString. Throws on characters outside '0'..'~' or a truncated run. */
export function stringToCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = true;
    let c = 0;
    while (more) {
      if (p >= s.length) throw new Error("RLE string ends inside a run");
      c = s.charCodeAt(p) - 48;
      if (c < 0 || c > 78) throw new Error("RLE string has a character outside '0'..'~'");
      x += (c & 0x1f) * 2 ** (5 * k);
      more = (c & 0x20) !== 0;
      p++;
      k++;
    }
    if (c & 0x10) x -= 2 ** (5 * k); // sign extension of the last 5-bit group
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

/** {size: [h, w], counts: string} -> row-major Uint8Array of 0/1. */
export function decodeRle(rle) {
  const [h, w] = rle.size;
  const counts = typeof rle.counts === "string" ? stringToCounts(rle.counts) : rle.counts;
  const total = counts.reduce((a, b) => a + b, 0);
  if (total !== h * w) throw new Error(`RLE covers ${total} pixels, the mask has ${h * w}`);
  const mask = new Uint8Array(h * w);
  let i = 0; // column-major position
  let v = 0;
  for (const n of counts) {
    if (v) {
      for (let j = i; j < i + n; j++) {
        const x = Math.floor(j / h);
        mask[(j - x * h) * w + x] = 1;
      }
    }
    i += n;
    v ^= 1;
  }
  return mask;
}

/** Row-major mask -> {size: [h, w], counts: string}, as pycocotools.mask.encode. */
export function encodeRle(mask, h, w) {
  return { size: [h, w], counts: countsToString(maskToCounts(mask, h, w)) };
}
