// The REST client of the page. The API key lives in sessionStorage only (never the URL,
// never localStorage) and goes out as a Bearer header on every call; a 401 forgets it and
// sends the user back to the key screen. Errors are ApiError with the server's code/message.

import { SseParser } from "./sse.js";

const KEY = "vplab.apiKey";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const keyStore = {
  get: () => sessionStorage.getItem(KEY),
  set: (key) => sessionStorage.setItem(KEY, key),
  clear: () => sessionStorage.removeItem(KEY),
};

const listeners = new Set();
/** Called with no argument when the server rejects the key. */
export function onUnauthorized(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function unauthorized() {
  keyStore.clear();
  for (const fn of listeners) fn();
}

async function errorOf(response) {
  let code = "http_" + response.status;
  let message = response.statusText || `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.error) ({ code, message } = body.error);
  } catch {
    /* not JSON: keep the status line */
  }
  return new ApiError(response.status, code, message);
}

/** fetch with the key; resolves to the Response of a 2xx, else throws ApiError. */
export async function call(method, path, { json, body, headers = {}, signal, key } = {}) {
  const h = { ...headers };
  const k = key ?? keyStore.get();
  if (k) h.Authorization = `Bearer ${k}`;
  if (json !== undefined) {
    h["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers: h, body, signal });
  if (response.status === 401) {
    const err = await errorOf(response);
    unauthorized();
    throw err;
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

export const getJson = async (path, opts) => (await call("GET", path, opts)).json();
export const postJson = async (path, json, opts = {}) =>
  (await call("POST", path, { ...opts, json })).json();
export const getBlob = async (path, opts) => (await call("GET", path, opts)).blob();

/** Upload one file (multipart `file`) with progress (fetch has no upload progress). */
export function uploadImage(datasetId, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/v1/datasets/${encodeURIComponent(datasetId)}/images`);
    xhr.setRequestHeader("Authorization", `Bearer ${keyStore.get()}`);
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress?.(e.loaded / e.total);
    xhr.onerror = () => reject(new ApiError(0, "network", "the upload failed (network)"));
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        /* keep null */
      }
      if (xhr.status === 401) unauthorized();
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else {
        const e = body?.error || { code: "http_" + xhr.status, message: xhr.statusText };
        reject(new ApiError(xhr.status, e.code, e.message));
      }
    };
    const form = new FormData();
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

/** Follow a server-sent event stream; calls onEvent({event, data (parsed), id}) until the
 *  server ends it (an `end` or `error` event) or `signal` aborts. Reconnects after a drop
 *  with Last-Event-ID, a bounded number of times. */
export async function follow(path, onEvent, { signal, retries = 5 } = {}) {
  let lastId = "";
  for (let attempt = 0; attempt <= retries; attempt++) {
    const headers = { Accept: "text/event-stream" };
    if (lastId) headers["Last-Event-ID"] = lastId;
    const response = await call("GET", path, { headers, signal });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SseParser();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      for (const ev of parser.push(value)) {
        if (ev.id) lastId = ev.id;
        let data = ev.data;
        try {
          data = JSON.parse(ev.data);
        } catch {
          /* plain text */
        }
        onEvent({ event: ev.event, data, id: ev.id });
        if (ev.event === "end" || ev.event === "error") return;
      }
    }
    if (signal?.aborted) return;
    await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
  }
  throw new ApiError(0, "stream", `lost the event stream ${path}`);
}

/** The API, one function per route the page uses. */
export const api = {
  datasets: () => getJson("/v1/datasets"),
  createDataset: (name, classes, channels) => postJson("/v1/datasets", { name, classes, channels }),
  deleteDataset: (id) => call("DELETE", `/v1/datasets/${id}`),
  importArchive: (id, file) =>
    call("POST", `/v1/datasets/${id}/import`, {
      body: file,
      headers: { "Content-Type": "application/octet-stream" },
    }).then((r) => r.json()),
  precomputeEmbeddings: (id) => postJson(`/v1/datasets/${id}/embeddings`, {}),
  dataJob: (jobId) => getJson(`/v1/data-jobs/${jobId}`),
  cancelDataJob: (jobId) => call("DELETE", `/v1/data-jobs/${jobId}`),
  exportDataset: (id, format, source = "labels") =>
    getBlob(`/v1/datasets/${id}/export?format=${format}&source=${encodeURIComponent(source)}`),
  dataset: (id) => getJson(`/v1/datasets/${id}`),
  images: (id) => getJson(`/v1/datasets/${id}/images`),
  imageBlob: (imageId, format = "original") =>
    getBlob(`/v1/images/${imageId}${format === "png" ? "?format=png" : ""}`),
  label: async (datasetId, imageId) => {
    const r = await call("GET", `/v1/datasets/${datasetId}/labels/${imageId}`);
    return { blob: await r.blob(), etag: r.headers.get("ETag") };
  },
  putLabel: async (datasetId, imageId, png, etag) => {
    const headers = { "Content-Type": "image/png" };
    if (etag) headers["If-Match"] = etag;
    else headers["If-None-Match"] = "*";
    const r = await call("PUT", `/v1/datasets/${datasetId}/labels/${imageId}`, {
      body: png,
      headers,
    });
    return { ...(await r.json()), etag: r.headers.get("ETag") };
  },
  segment: (imageId, body, signal) => postJson(`/v1/images/${imageId}/segment`, body, { signal }),
  startPrediction: (datasetId, body) => postJson(`/v1/datasets/${datasetId}/predictions`, body),
  predictions: (datasetId) => getJson(`/v1/datasets/${datasetId}/predictions`),
  prediction: (runId) => getJson(`/v1/predictions/${runId}`),
  cancelPrediction: (runId) => call("DELETE", `/v1/predictions/${runId}`),
  results: (runId, order = "uncertainty", limit = 1000) =>
    getJson(`/v1/predictions/${runId}/results?order=${order}&limit=${limit}`),
  result: (runId, imageId) => getJson(`/v1/predictions/${runId}/results/${imageId}`),
  accept: (runId, imageId, png) =>
    call("POST", `/v1/predictions/${runId}/results/${imageId}/accept`, {
      body: png,
      headers: png ? { "Content-Type": "image/png" } : {},
    }).then((r) => r.json()),
  reject: (runId, imageId) => postJson(`/v1/predictions/${runId}/results/${imageId}/reject`),
  startEvaluation: (body) => postJson("/v1/evaluations", body),
  evaluation: (id) => getJson(`/v1/evaluations/${id}`),
  evaluations: (datasetId) => getJson(`/v1/datasets/${datasetId}/evaluations`),
  methods: () => getJson("/v1/methods"),
  startTraining: (body) => postJson("/v1/trainings", body),
  trainings: () => getJson("/v1/trainings"),
  training: (jobId) => getJson(`/v1/trainings/${jobId}`),
  cancelTraining: (jobId) => call("DELETE", `/v1/trainings/${jobId}`),
  models: () => getJson("/v1/models"),
  exportModel: (modelId) => getBlob(`/v1/models/${modelId}/export`),
  exportMerged: (modelId) => getBlob(`/v1/models/${modelId}/export?format=merged`),
  deleteModel: (modelId) => call("DELETE", `/v1/models/${modelId}`),
};
