// Loading what the workbench edits: the image and a label map (latest label, a prediction,
// or empty), all as blobs through the authenticated client.
import { api, getBlob } from "./api.js";
import { decodeLabelPng } from "./labelmap.js";

/** The image as the browser can draw it: the uploaded bytes, or - for what browsers cannot
 *  decode (TIFF, 16-bit microscopy) - the server's 8-bit rendition, the pixels the models see. */
export async function loadImage(imageId) {
  const blob = await api.imageBlob(imageId);
  try {
    return await createImageBitmap(blob);
  } catch {
    return createImageBitmap(await api.imageBlob(imageId, "png"));
  }
}

/** The latest label {map, etag, version} or null when the image has none. */
export async function loadLabel(datasetId, imageId) {
  try {
    const { blob, etag } = await api.label(datasetId, imageId);
    const { map } = await decodeLabelPng(blob);
    return { map, etag };
  } catch (e) {
    if (e.status === 404) return null;
    throw e;
  }
}

/** One label version of an image, as a label map. */
export async function loadLabelVersion(datasetId, imageId, version) {
  const blob = await getBlob(`/v1/datasets/${datasetId}/labels/${imageId}?version=${version}`);
  return (await decodeLabelPng(blob)).map;
}

/** A prediction run's result for one image, as a label map. */
export async function loadPrediction(runId, imageId) {
  const { map } = await decodeLabelPng(
    await getBlob(`/v1/predictions/${runId}/results/${imageId}?format=png`),
  );
  return map;
}

/** The tuned models of a dataset (from its succeeded jobs), newest first. */
export async function datasetModels(datasetId) {
  const jobs = (await api.trainings()).jobs;
  return jobs.filter((j) => j.dataset_id === datasetId && j.state === "SUCCEEDED" && j.model_id);
}
