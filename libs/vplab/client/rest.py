"""``VPLabClient``: the REST gateway from Python (httpx), with numpy masks in and out.

from vplab.client import VPLabClient

vp = VPLabClient("http://localhost:8080", api_key="vpl_...")
ds = vp.create_dataset("wafers")
image_id = vp.upload_image(ds["id"], "wafer-001.png")
seg = vp.segment(image_id, points=[[40, 52], [10, 10]], labels=[1, 0])
mask = seg.best_mask                       # (H, W) bool
version = vp.put_label(ds["id"], image_id, mask)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from vplab.client.errors import VPLabAPIError
from vplab.states import is_terminal


@dataclass
class SegmentResult:
    """Masks from ``segment``: ``masks`` (N, H, W) bool, best first; ``scores`` (N,)."""

    masks: np.ndarray
    scores: np.ndarray
    height: int
    width: int

    @property
    def best_mask(self) -> np.ndarray:
        return self.masks[int(np.argmax(self.scores))]


@dataclass
class VisualPromptResult:
    """One target of ``visual_prompt``: its (H, W) bool mask, score and derived prompts."""

    index: int
    image_id: str
    mask: np.ndarray
    score: float
    points: np.ndarray  # (K, 2) float [x, y]
    point_labels: np.ndarray  # (K,) int


def _mask_to_rle(mask: Any) -> dict[str, Any]:
    from vplab.masks import encode_rle

    if isinstance(mask, dict):  # already RLE
        return {"size": list(mask["size"]), "counts": mask["counts"]}
    return encode_rle(np.asarray(mask))


def _rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    from vplab.masks import decode_rle

    return decode_rle(rle)


def _image_bytes(image: str | Path | bytes | np.ndarray) -> tuple[bytes, str]:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image), "image"
    if isinstance(image, np.ndarray):
        from vplab.images import encode_png

        return encode_png(image), "image.png"
    path = Path(image)
    return path.read_bytes(), path.name


def _parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, str | None, str]]:
    """(event, id, data) for each SSE event; comments (keep-alives) are skipped."""
    event, event_id, data = "message", None, list[str]()
    for line in lines:
        if line == "":
            if data:
                yield event, event_id, "\n".join(data)
            event, event_id, data = "message", None, list[str]()
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "id":
            event_id = value
        elif field == "data":
            data.append(value)
    if data:
        yield event, event_id, "\n".join(data)


class VPLabClient:
    """REST client for the VP Lab gateway.

    ``base_url`` like ``http://localhost:8080``; ``api_key`` is the tenant's ``vpl_...`` key;
    ``timeout`` in seconds per request (streams wait longer between events). Every error
    raises ``VPLabAPIError(status, code, message)``. Use as a context manager or ``close()``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "vplab-python"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VPLabClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as e:
            raise VPLabAPIError(504, "deadline_exceeded", f"request timed out: {e}") from e
        except httpx.TransportError as e:
            raise VPLabAPIError(503, "unavailable", f"cannot reach {self.base_url}: {e}") from e
        if response.status_code >= 400:
            raise VPLabAPIError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs) -> Any:
        return self._request(method, path, **kwargs).json()

    def _sse(self, method: str, path: str, **kwargs) -> Iterator[tuple[str, str | None, Any]]:
        headers = {"Accept": "text/event-stream", **kwargs.pop("headers", {})}
        timeout = httpx.Timeout(self.timeout, read=max(self.timeout, 60.0))
        try:
            with self._http.stream(
                method, path, headers=headers, timeout=timeout, **kwargs
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise VPLabAPIError.from_response(response)
                for event, event_id, data in _parse_sse(response.iter_lines()):
                    payload = json.loads(data)
                    if event == "error":
                        err = payload.get("error", {})
                        raise VPLabAPIError(
                            int(payload.get("status", 502)),
                            str(err.get("code", "error")),
                            str(err.get("message", "stream failed")),
                        )
                    yield event, event_id, payload
        except httpx.TimeoutException as e:
            raise VPLabAPIError(504, "deadline_exceeded", f"stream timed out: {e}") from e
        except httpx.TransportError as e:
            raise VPLabAPIError(
                503, "unavailable", f"stream from {self.base_url} broke: {e}"
            ) from e

    # --- ops ---------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``/healthz`` (no error raised for 503: look at ``status``)."""
        r = self._http.get("/healthz")
        return r.json()

    # --- datasets and images -------------------------------------------------------------

    def create_dataset(
        self, name: str, classes: list[str | dict[str, str]] | None = None
    ) -> dict[str, Any]:
        """-> ``{"id", "name", "created_at", "classes": [{"id", "name", "color"}]}``.
        ``classes``: names or ``{"name", "color"}``, ids 1..K in order (default: one class)."""
        body: dict[str, Any] = {"name": name}
        if classes is not None:
            body["classes"] = [{"name": c} if isinstance(c, str) else c for c in classes]
        return self._json("POST", "/v1/datasets", json=body)

    def update_dataset(
        self,
        dataset_id: str,
        name: str | None = None,
        classes: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Rename; ``classes``: ``{"id", "name"?, "color"?}`` edits a class, ``{"name",
        "color"?}`` appends one (the next id)."""
        body: dict[str, Any] = {}
        if name is not None:
            body["name"] = name
        if classes is not None:
            body["classes"] = classes
        return self._json("PATCH", f"/v1/datasets/{dataset_id}", json=body)

    def list_datasets(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/datasets")["datasets"]

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/datasets/{dataset_id}")

    def delete_dataset(self, dataset_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{dataset_id}")

    def upload_image(
        self, dataset_id: str, image: str | Path | bytes | np.ndarray, filename: str | None = None
    ) -> str:
        """Upload a file path, encoded image bytes, or a uint8 (H, W[, 3|4]) array (sent as PNG).

        Returns the image id (sha256 of the bytes stored).
        """
        data, name = _image_bytes(image)
        files = {"file": (filename or name, data, "application/octet-stream")}
        return self._json("POST", f"/v1/datasets/{dataset_id}/images", files=files)["image_id"]

    def list_images(self, dataset_id: str) -> list[Any]:
        return self._json("GET", f"/v1/datasets/{dataset_id}/images")["images"]

    def get_image(self, image_id: str) -> bytes:
        return self._request("GET", f"/v1/images/{image_id}").content

    def delete_image(self, dataset_id: str, image_id: str) -> None:
        self._request("DELETE", f"/v1/datasets/{dataset_id}/images/{image_id}")

    # --- segmentation --------------------------------------------------------------------

    def segment(
        self,
        image_id: str,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        model_id: str | None = None,
        multimask: bool = False,
        mask_input: np.ndarray | dict | None = None,
    ) -> SegmentResult:
        """Prompted segmentation. ``points`` are [x, y] pixels; ``labels`` 1/0 (default: all 1)."""
        arr = np.asarray(points, dtype=float).reshape(-1, 2) if len(points) else np.zeros((0, 2))
        pts = [[float(x), float(y)] for x, y in arr]
        body: dict[str, Any] = {
            "points": pts,
            "labels": [int(v) for v in labels] if labels is not None else [1] * len(pts),
            "multimask": bool(multimask),
        }
        if box is not None:
            body["box"] = [float(v) for v in box]
        if model_id:
            body["model_id"] = model_id
        if mask_input is not None:
            body["mask_input_rle"] = _mask_to_rle(mask_input)
        r = self._json("POST", f"/v1/images/{image_id}/segment", json=body)
        masks = [_rle_to_mask(m["rle"]) for m in r["masks"]]
        h, w = int(r["height"]), int(r["width"])
        stack = np.stack(masks) if masks else np.zeros((0, h, w), bool)
        return SegmentResult(
            stack, np.asarray([m["score"] for m in r["masks"]], dtype=np.float32), h, w
        )

    def _vp_body(self, references, targets, model_id, matcher, seed) -> dict[str, Any]:
        body: dict[str, Any] = {
            "references": [{"image_id": i, "mask_rle": _mask_to_rle(m)} for i, m in references],
            "matcher": matcher,
            "seed": int(seed),
        }
        if targets is not None:
            body["targets"] = list(targets)
        if model_id:
            body["model_id"] = model_id
        return body

    @staticmethod
    def _vp_result(r: dict[str, Any]) -> VisualPromptResult:
        return VisualPromptResult(
            index=int(r["index"]),
            image_id=r["image_id"],
            mask=_rle_to_mask(r["mask_rle"]),
            score=float(r["score"]),
            points=np.asarray(r["points"], dtype=np.float32).reshape(-1, 2),
            point_labels=np.asarray(r["point_labels"], dtype=np.int64),
        )

    def visual_prompt(
        self,
        dataset_id: str,
        references: Sequence[tuple[str, np.ndarray | dict]],
        targets: Sequence[str] | None = None,
        model_id: str | None = None,
        matcher: str = "soft",
        seed: int = 0,
    ) -> list[VisualPromptResult]:
        """Segment ``targets`` (default: every other image of the dataset) like the
        ``references`` ([(image_id, (H, W) mask), ...]). Results in target order."""
        r = self._json(
            "POST",
            f"/v1/datasets/{dataset_id}/visual-prompt",
            json=self._vp_body(references, targets, model_id, matcher, seed),
        )
        return [self._vp_result(x) for x in r["results"]]

    def iter_visual_prompt(
        self,
        dataset_id: str,
        references: Sequence[tuple[str, np.ndarray | dict]],
        targets: Sequence[str] | None = None,
        model_id: str | None = None,
        matcher: str = "soft",
        seed: int = 0,
    ) -> Iterator[VisualPromptResult]:
        """Like ``visual_prompt`` but yields each target as soon as it is done (SSE)."""
        body = self._vp_body(references, targets, model_id, matcher, seed)
        for event, _, payload in self._sse(
            "POST", f"/v1/datasets/{dataset_id}/visual-prompt", json=body
        ):
            if event == "result":
                yield self._vp_result(payload)

    def auto_segment(self, image_id: str, model_id: str) -> tuple[np.ndarray, float]:
        """Prompt-free segmentation with a PTSAM model -> ((H, W) bool mask, score)."""
        r = self._json("POST", f"/v1/images/{image_id}/auto-segment", json={"model_id": model_id})
        return _rle_to_mask(r["mask_rle"]), float(r["score"])

    # --- labels --------------------------------------------------------------------------

    def put_label(
        self,
        dataset_id: str,
        image_id: str,
        mask: np.ndarray | bytes,
        if_match: str | None = None,
    ) -> int:
        """Store a label; returns its version. ``mask``: PNG bytes, an (H, W) bool mask, or
        an (H, W) integer label map of class ids 0..K (multi-class datasets).

        ``if_match``: the ETag of the label you edited (``get_label_etag``); if someone saved
        another version meanwhile the call raises ``VPLabAPIError`` 412 and writes nothing.
        """
        if isinstance(mask, (bytes, bytearray)):
            data = bytes(mask)
        else:
            from vplab.masks import encode_binary_mask, encode_label_map

            arr = np.asarray(mask)
            is_map = np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_
            data = encode_label_map(arr) if is_map else encode_binary_mask(arr)
        r = self._json(
            "PUT",
            f"/v1/datasets/{dataset_id}/labels/{image_id}",
            content=data,
            headers={"Content-Type": "image/png", **({"If-Match": if_match} if if_match else {})},
        )
        return int(r["version"])

    def list_labels(self, dataset_id: str) -> dict[str, int]:
        """``{image_id: latest version}``."""
        return self._json("GET", f"/v1/datasets/{dataset_id}/labels")

    def get_label(self, dataset_id: str, image_id: str, version: int | None = None) -> np.ndarray:
        from vplab.masks import read_binary_mask

        return read_binary_mask(self._label_png(dataset_id, image_id, version))

    def get_label_map(
        self, dataset_id: str, image_id: str, version: int | None = None
    ) -> np.ndarray:
        """The label as an (H, W) int32 map of class ids (0 = background)."""
        from vplab.masks import read_label_png

        return read_label_png(self._label_png(dataset_id, image_id, version))

    def _label_png(self, dataset_id: str, image_id: str, version: int | None) -> bytes:
        params = {"version": version} if version is not None else None
        url = f"/v1/datasets/{dataset_id}/labels/{image_id}"
        return self._request("GET", url, params=params).content

    def get_label_etag(self, dataset_id: str, image_id: str) -> str:
        """The ETag of the latest label (pass it as ``put_label(..., if_match=)``)."""
        return self._request("GET", f"/v1/datasets/{dataset_id}/labels/{image_id}").headers["etag"]

    # --- training ------------------------------------------------------------------------

    def start_training(
        self,
        dataset_id: str,
        method: str = "epeft",
        steps: int = 0,
        base_model: str | None = None,
        method_config: dict[str, Any] | None = None,
        seed: int = 0,
        lr: float | None = None,
        recipe: str = "",
    ) -> dict[str, Any]:
        """Queue a fine-tuning job on the dataset's labels -> the job (``job_id``, ``state``...).
        ``recipe``: one of the method's named recipes (``GET /v1/methods``), "" = its default."""
        body: dict[str, Any] = {
            "dataset_id": dataset_id,
            "method": method,
            "steps": int(steps),
            "seed": int(seed),
            "method_config": method_config or {},
        }
        if base_model:
            body["base_model"] = base_model
        if lr is not None:
            body["lr"] = float(lr)
        if recipe:
            body["recipe"] = recipe
        return self._json("POST", "/v1/trainings", json=body)

    def get_training(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/trainings/{job_id}")

    def list_trainings(self, state: str | None = None, limit: int = 0) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if state:
            params["state"] = state
        return self._json("GET", "/v1/trainings", params=params)["jobs"]

    def iter_training_events(self, job_id: str, after_seq: int = 0) -> Iterator[dict[str, Any]]:
        """Progress events (dicts with ``seq``, ``state``, ``phase``, ``step``, ``loss``...) until
        the job ends; one stream, no reconnect (see ``wait_for_training``)."""
        for _, _, payload in self._sse(
            "GET", f"/v1/trainings/{job_id}/events", params={"after_seq": after_seq}
        ):
            yield payload

    def wait_for_training(
        self,
        job_id: str,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
        max_reconnects: int = 5,
    ) -> dict[str, Any]:
        """Follow the job's events until it ends; return the final job.

        ``on_event`` is called with every event once (a broken stream is resumed after the
        last seq seen). Raises ``VPLabAPIError`` (504) after ``timeout`` seconds.
        """
        return self._follow(
            f"job {job_id}",
            lambda after: self.iter_training_events(job_id, after_seq=after),
            lambda: self.get_training(job_id),
            on_event,
            timeout,
            max_reconnects,
        )

    def _follow(
        self,
        what: str,
        events: Callable[[int], Iterator[dict[str, Any]]],
        get: Callable[[], dict[str, Any]],
        on_event: Callable[[dict[str, Any]], None] | None,
        timeout: float | None,
        max_reconnects: int,
    ) -> dict[str, Any]:
        """Follow an event stream until the job it reports on ends (resuming after the last
        seq seen on a 502/503/504); return the final record from ``get``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_seq, failures = 0, 0
        while True:
            try:
                for event in events(last_seq):
                    last_seq = max(last_seq, int(event.get("seq", last_seq)))
                    if on_event is not None:
                        on_event(event)
                    if deadline is not None and time.monotonic() > deadline:
                        break
            except VPLabAPIError as e:
                if e.status not in (502, 503, 504):
                    raise
                failures += 1
                if failures > max_reconnects:
                    raise
                time.sleep(min(0.1 * 2.0**failures, 5.0))
            record = get()
            if is_terminal(record["state"]):
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise VPLabAPIError(504, "deadline_exceeded", f"{what} did not end in {timeout} s")

    def cancel_training(self, job_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/v1/trainings/{job_id}")

    # --- data in and out: import / export, precomputed embeddings --------------------------

    def import_archive(self, dataset_id: str, path: str | Path) -> dict[str, Any]:
        """Upload a zip or tar of images with ``masks/`` PNGs or a COCO JSON: the queued
        import job (a bad archive is a 400 and nothing changes). ``wait_for_data_job``
        follows it; its ``report`` and ``errors`` say what was imported."""
        path = Path(path)

        def chunks() -> Iterator[bytes]:  # streamed: the archive is never all in memory
            with path.open("rb") as f:
                while chunk := f.read(1024 * 1024):
                    yield chunk

        return self._json(
            "POST",
            f"/v1/datasets/{dataset_id}/import",
            content=chunks(),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(path.stat().st_size),
            },
        )

    def export_dataset(
        self, dataset_id: str, path: str | Path, format: str = "coco", source: str = "labels"
    ) -> Path:
        """Download the dataset as a zip (``format`` coco or masks; ``source`` labels or
        ``predictions:{run_id}``) to ``path``."""
        params = {"format": format, "source": source}
        return self._download(f"/v1/datasets/{dataset_id}/export", path, params)

    def precompute_embeddings(
        self, dataset_id: str, encoders: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Start filling the embedding cache of every image (``encoders``: "sam",
        "dinov2"; None = both): the queued job."""
        body = {"encoders": list(encoders or [])}
        return self._json("POST", f"/v1/datasets/{dataset_id}/embeddings", json=body)

    def get_data_job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/data-jobs/{job_id}")

    def list_data_jobs(self, dataset_id: str, limit: int = 0) -> list[dict[str, Any]]:
        params = {"limit": limit}
        return self._json("GET", f"/v1/datasets/{dataset_id}/data-jobs", params=params)["jobs"]

    def cancel_data_job(self, job_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/v1/data-jobs/{job_id}")

    def iter_data_job_events(self, job_id: str, after_seq: int = 0) -> Iterator[dict[str, Any]]:
        """One event per finished image (``phase`` "item", ``entry``, ``message`` = its
        error) and the job's start / end events; one stream, no reconnect."""
        for _, _, payload in self._sse(
            "GET", f"/v1/data-jobs/{job_id}/events", params={"after_seq": after_seq}
        ):
            yield payload

    def wait_for_data_job(
        self,
        job_id: str,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
        max_reconnects: int = 5,
    ) -> dict[str, Any]:
        """Follow the job until it ends (like ``wait_for_training``); return the final job."""
        return self._follow(
            f"data job {job_id}",
            lambda after: self.iter_data_job_events(job_id, after_seq=after),
            lambda: self.get_data_job(job_id),
            on_event,
            timeout,
            max_reconnects,
        )

    # --- prediction runs and review ------------------------------------------------------

    def start_prediction(
        self,
        dataset_id: str,
        references: list[str | tuple[str, np.ndarray, int]],
        model_id: str | None = None,
        targets: list[str] | None = None,
        matcher: str = "soft",
        seed: int = 0,
    ) -> dict[str, Any]:
        """Start a prediction run -> the run (``run_id``, ``state``, ``total``...).

        ``references``: image ids (their latest labels, every class) or ``(image_id, mask,
        class_id)`` tuples. ``targets`` None: every image that is not a reference.
        """
        body = self._run_body(references, model_id, matcher, seed)
        if targets is not None:
            body["targets"] = list(targets)
        return self._json("POST", f"/v1/datasets/{dataset_id}/predictions", json=body)

    @staticmethod
    def _run_body(
        references: list[str | tuple[str, np.ndarray, int]],
        model_id: str | None,
        matcher: str,
        seed: int,
    ) -> dict[str, Any]:
        refs: list[dict[str, Any]] = []
        for r in references:
            if isinstance(r, str):
                refs.append({"image_id": r})
            else:
                image_id, mask, class_id = r
                rle = _mask_to_rle(np.asarray(mask, bool))
                refs.append({"image_id": image_id, "mask_rle": rle, "class_id": int(class_id)})
        body: dict[str, Any] = {"references": refs, "matcher": matcher, "seed": int(seed)}
        if model_id:
            body["model_id"] = model_id
        return body

    def get_prediction(self, run_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/predictions/{run_id}")

    def list_predictions(self, dataset_id: str, limit: int = 0) -> list[dict[str, Any]]:
        params = {"limit": limit}
        return self._json("GET", f"/v1/datasets/{dataset_id}/predictions", params=params)["runs"]

    def cancel_prediction(self, run_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/v1/predictions/{run_id}")

    def iter_prediction_events(self, run_id: str, after_seq: int = 0) -> Iterator[dict[str, Any]]:
        """One event per finished target (``phase`` "target", ``image_id``, ``uncertainty``)
        and the run's start / end events; one stream, no reconnect."""
        for _, _, payload in self._sse(
            "GET", f"/v1/predictions/{run_id}/events", params={"after_seq": after_seq}
        ):
            yield payload

    def wait_for_prediction(
        self,
        run_id: str,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
        max_reconnects: int = 5,
    ) -> dict[str, Any]:
        """Follow the run until it ends (like ``wait_for_training``); return the final run."""
        return self._follow(
            f"run {run_id}",
            lambda after: self.iter_prediction_events(run_id, after_seq=after),
            lambda: self.get_prediction(run_id),
            on_event,
            timeout,
            max_reconnects,
        )

    def prediction_results(
        self, run_id: str, order: str = "uncertainty", limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Every result summary of the run (all pages), e.g. the most uncertain first."""
        out: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"order": order, "limit": limit}
            if after:
                params["after"] = after
            page = self._json("GET", f"/v1/predictions/{run_id}/results", params=params)
            out += page["results"]
            after = page["next"]
            if not after:
                return out

    def prediction_result(self, run_id: str, image_id: str) -> dict[str, Any]:
        """One target's result: ``classes`` (class id -> ``mask_rle``, ``score``, ``points``)."""
        return self._json("GET", f"/v1/predictions/{run_id}/results/{image_id}")

    def prediction_label_map(self, run_id: str, image_id: str) -> np.ndarray:
        from vplab.masks import read_label_png

        url = f"/v1/predictions/{run_id}/results/{image_id}"
        return read_label_png(self._request("GET", url, params={"format": "png"}).content)

    def accept_prediction(
        self, run_id: str, image_id: str, edited: np.ndarray | None = None
    ) -> dict[str, Any]:
        """Save the result (or ``edited``, an integer label map) as the image's next label."""
        url = f"/v1/predictions/{run_id}/results/{image_id}/accept"
        if edited is None:
            return self._json("POST", url)
        from vplab.masks import encode_label_map

        data = encode_label_map(np.asarray(edited))
        return self._json("POST", url, content=data, headers={"Content-Type": "image/png"})

    def reject_prediction(self, run_id: str, image_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/predictions/{run_id}/results/{image_id}/reject")

    # --- evaluations ---------------------------------------------------------------------

    def start_evaluation(
        self,
        dataset_id: str,
        references: list[str | tuple[str, np.ndarray, int]],
        model_id: str | None = None,
        images: list[str] | None = None,
        matcher: str = "soft",
        seed: int = 0,
    ) -> dict[str, Any]:
        """Score visual prompting (stock, or with ``model_id``) on labelled images ->
        the evaluation (``evaluation_id``...). ``references`` as in ``start_prediction``;
        ``images`` None: every labelled image that is not a reference and, for a tuned
        model, not in its training set."""
        body = self._run_body(references, model_id, matcher, seed)
        body["dataset_id"] = dataset_id
        if images is not None:
            body["images"] = list(images)
        return self._json("POST", "/v1/evaluations", json=body)

    def get_evaluation(self, evaluation_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/evaluations/{evaluation_id}")

    def list_evaluations(self, dataset_id: str, limit: int = 0) -> list[dict[str, Any]]:
        params = {"limit": limit}
        url = f"/v1/datasets/{dataset_id}/evaluations"
        return self._json("GET", url, params=params)["evaluations"]

    def wait_for_evaluation(
        self, evaluation_id: str, timeout: float | None = None, poll_s: float = 0.5
    ) -> dict[str, Any]:
        """Poll until the evaluation ends; return it (``miou``, ``per_class``...)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            evaluation = self.get_evaluation(evaluation_id)
            if is_terminal(evaluation["state"]):
                return evaluation
            if deadline is not None and time.monotonic() > deadline:
                raise VPLabAPIError(
                    504,
                    "deadline_exceeded",
                    f"evaluation {evaluation_id} did not end in {timeout} s",
                )
            time.sleep(poll_s)

    def image_details(self, dataset_id: str) -> list[dict[str, Any]]:
        """Per image: latest label version, its provenance, the latest prediction."""
        return self._json("GET", f"/v1/datasets/{dataset_id}/images")["details"]

    # --- models --------------------------------------------------------------------------

    def list_models(self) -> list[dict[str, Any]]:
        """``[{"model_id", "config"}, ...]``."""
        return self._json("GET", "/v1/models")["models"]

    def get_model(self, model_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/models/{model_id}")

    def export_model(self, model_id: str, path: str | Path, merged: bool = False) -> Path:
        """Download the adapter zip (adapter.safetensors + config.json) to ``path``, or with
        ``merged`` a plain SAM checkpoint (.pth) with the update folded in (weight-delta
        methods only: 400 otherwise)."""
        params = {"format": "merged"} if merged else None
        return self._download(f"/v1/models/{model_id}/export", path, params)

    def _download(self, url: str, path: str | Path, params: dict[str, str] | None) -> Path:
        """GET ``url`` into ``path`` atomically (a ``.part`` file renamed when complete)."""
        data = self._request("GET", url, params=params).content
        path = Path(path)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        return path

    def delete_model(self, model_id: str) -> None:
        self._request("DELETE", f"/v1/models/{model_id}")
