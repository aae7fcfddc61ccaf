// What the grid says about an image, from its ImageDetail (GET /v1/datasets/{id}/images).

/** "unlabelled" | "predicted" | "rejected" | "labelled" | "accepted" | "edited". */
export function imageStatus(detail) {
  if (detail.label_version) {
    const source = detail.provenance?.source || "manual";
    return source === "manual" ? "labelled" : source;
  }
  if (detail.prediction) return detail.prediction.review === "rejected" ? "rejected" : "predicted";
  return "unlabelled";
}

export function statusText(detail) {
  const s = imageStatus(detail);
  return detail.label_version ? `${s} v${detail.label_version}` : s;
}

const SORTS = {
  name: (a, b) => (a.image_id < b.image_id ? -1 : 1),
  uncertainty: (a, b) => (b.prediction?.uncertainty ?? -1) - (a.prediction?.uncertainty ?? -1),
  score: (a, b) => (a.prediction?.score ?? 2) - (b.prediction?.score ?? 2),
};

/** Filter ("all" or a status) and sort ("name" | "uncertainty" | "score": lowest first). */
export function arrange(details, filter, sort) {
  const kept = filter === "all" ? details.slice() : details.filter((d) => imageStatus(d) === filter);
  return kept.sort(SORTS[sort] || SORTS.name);
}
