// Label maps <-> PNG in the browser. The server stores class ids as grey values and takes
// back an RGBA PNG whose three channels are equal (vplab.masks.png.read_label_png), so a
// canvas round trip is exact: no colour management, alpha always 255.

/** A label PNG (Blob) -> {w, h, map: Uint8Array of class ids}. */
export async function decodeLabelPng(blob) {
  const bitmap = await createImageBitmap(blob, {
    colorSpaceConversion: "none",
    premultiplyAlpha: "none",
  });
  const { width: w, height: h } = bitmap;
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const map = new Uint8Array(w * h);
  for (let i = 0; i < w * h; i++) map[i] = rgba[i * 4];
  return { w, h, map };
}

/** A label map -> PNG Blob (grey = class id). */
export async function encodeLabelPng(map, w, h) {
  const canvas = new OffscreenCanvas(w, h);
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const o = i * 4;
    img.data[o] = img.data[o + 1] = img.data[o + 2] = map[i];
    img.data[o + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return canvas.convertToBlob({ type: "image/png" });
}

/** An image Blob -> ImageBitmap (for drawing) with its size. */
export async function decodeImage(blob) {
  return createImageBitmap(blob);
}
