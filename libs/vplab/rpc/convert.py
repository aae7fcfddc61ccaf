"""The one wire module: every proto <-> Python conversion, and the call metadata.

The gateway, the three gRPC services and both SDK clients convert through these functions
and nothing else, so a field added to a message is added here once. Python-side values
are plain: RLE masks are COCO dicts ``{"size": [h, w], "counts": str}``, points are
``(x, y, label)`` tuples, jobs and events are JSON-able dicts.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, cast

from vplab.errors import InvalidInput
from vplab.rpc.v1 import common_pb2, features_pb2, segmentation_pb2, training_pb2
from vplab.states import JobState

# Ray Serve application names: the ``application`` metadata routes a call to one of them.
FEATURES, SEGMENTATION, TRAINING = "features", "segmentation", "training"
APPS: tuple[str, ...] = (FEATURES, SEGMENTATION, TRAINING)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]

Rle = dict[str, Any]
PointT = tuple[float, float, int]


# --- metadata ------------------------------------------------------------------------------


def bearer(api_key: str) -> str:
    return f"Bearer {api_key}"


def call_metadata(
    app: str, authorization: str | None = None, model_id: str | None = None
) -> list[tuple[str, str]]:
    """What every call carries: the Serve ``application``, the caller's ``authorization``
    (the services authenticate it again) and, for a tuned model, the multiplexing id."""
    md = [("application", app)]
    if authorization:
        md.append(("authorization", authorization))
    if model_id:
        md.append(("multiplexed_model_id", model_id))
    return md


# --- scalars -------------------------------------------------------------------------------


def wire_float(x: float) -> float:
    """A float32 from the wire as the number it was meant to be (drop the noise digits)."""
    return float(f"{x:.6g}")


# --- masks, points, boxes ------------------------------------------------------------------


def rle_to_pb(rle: Rle) -> common_pb2.RleMask:
    h, w = rle["size"]
    return common_pb2.RleMask(height=int(h), width=int(w), counts=rle["counts"])


def rle_from_pb(m: common_pb2.RleMask) -> Rle:
    return {"size": [m.height, m.width], "counts": m.counts}


def points_to_pb(points: Iterable[Sequence[float]]) -> list[common_pb2.Point]:
    return [common_pb2.Point(x=float(x), y=float(y), label=int(lab)) for x, y, lab in points]


def points_from_pb(points: Iterable[common_pb2.Point]) -> list[PointT]:
    return [(p.x, p.y, p.label) for p in points]


def box_to_pb(box: Sequence[float]) -> common_pb2.Box:
    x0, y0, x1, y1 = (float(v) for v in box)
    return common_pb2.Box(x0=x0, y0=y0, x1=x1, y1=y1)


def box_from_pb(box: common_pb2.Box) -> tuple[float, float, float, float]:
    return (box.x0, box.y0, box.x1, box.y1)


def mask_results_to_pb(masks: Iterable[tuple[Rle, float]]) -> list[common_pb2.MaskResult]:
    return [common_pb2.MaskResult(mask=rle_to_pb(r), score=s) for r, s in masks]


def mask_results_from_pb(masks: Iterable[common_pb2.MaskResult]) -> list[dict[str, Any]]:
    return [{"rle": rle_from_pb(m.mask), "score": wire_float(m.score)} for m in masks]


# --- segmentation requests and results -----------------------------------------------------


def segment_request_to_pb(
    image_id: str,
    points: Iterable[Sequence[float]] = (),
    box: Sequence[float] | None = None,
    mask_input: Rle | None = None,
    multimask: bool = False,
    model_id: str | None = None,
) -> segmentation_pb2.SegmentPromptRequest:
    request = segmentation_pb2.SegmentPromptRequest(
        image_id=image_id,
        points=points_to_pb(points),
        multimask_output=multimask,
        model_id=model_id or "",
    )
    if box is not None:
        request.box.CopyFrom(box_to_pb(box))
    if mask_input is not None:
        request.mask_input.CopyFrom(rle_to_pb(mask_input))
    return request


def segment_request_from_pb(
    request: segmentation_pb2.SegmentPromptRequest,
) -> tuple[list[PointT], tuple[float, float, float, float] | None, Rle | None, bool]:
    """(points, box, mask_input RLE, multimask) of a SegmentPrompt request."""
    box = box_from_pb(request.box) if request.HasField("box") else None
    mask_input = rle_from_pb(request.mask_input) if request.HasField("mask_input") else None
    return points_from_pb(request.points), box, mask_input, request.multimask_output


def visual_prompt_request_to_pb(
    dataset_id: str,
    references: Iterable[tuple[str, Rle]],
    targets: Iterable[str] | None = None,
    model_id: str | None = None,
    matcher: str = "",
    seed: int = 0,
) -> segmentation_pb2.VisualPromptRequest:
    """``targets`` None (or empty): every image of the dataset that is not a reference."""
    return segmentation_pb2.VisualPromptRequest(
        dataset_id=dataset_id,
        references=[
            segmentation_pb2.Reference(image_id=i, mask=rle_to_pb(m)) for i, m in references
        ],
        target_image_ids=list(targets or ()),
        model_id=model_id or "",
        matcher=matcher,
        seed=seed,
    )


def visual_prompt_result_to_pb(
    index: int, image_id: str, rle: Rle, score: float, points: Iterable[Sequence[float]]
) -> segmentation_pb2.VisualPromptResponse:
    return segmentation_pb2.VisualPromptResponse(
        index=index,
        image_id=image_id,
        mask=rle_to_pb(rle),
        score=score,
        points=points_to_pb(points),
    )


def visual_prompt_result_from_pb(r: segmentation_pb2.VisualPromptResponse) -> dict[str, Any]:
    return {
        "index": r.index,
        "image_id": r.image_id,
        "mask_rle": rle_from_pb(r.mask),
        "score": wire_float(r.score),
        "points": [[wire_float(p.x), wire_float(p.y)] for p in r.points],
        "point_labels": [p.label for p in r.points],
    }


# --- features ------------------------------------------------------------------------------


def embed_response_to_pb(info: Any) -> features_pb2.EmbedResponse:
    """An ``EmbeddingInfo`` of ``vplab.inference.features`` -> EmbedResponse."""
    return features_pb2.EmbedResponse(
        image_id=info.image_id,
        encoder_id=info.encoder_id,
        cache_key=info.cache_key,
        cache_hit=info.cache_hit,
        shape=list(info.shape),
        dtype=info.dtype,
        original_height=info.original_size[0],
        original_width=info.original_size[1],
    )


# --- training ------------------------------------------------------------------------------


class JobLike(Protocol):
    job_id: str
    dataset_id: str
    method: str
    base_model: str
    state: str
    step: int
    steps: int
    best_val_iou: float
    initial_val_iou: float
    model_id: str
    error: str
    created_at: str
    updated_at: str
    attempts: int


def job_state_to_pb(state: str | None) -> common_pb2.JobState:
    """0 (unspecified) for None/empty; ``InvalidInput`` for an unknown name."""
    if not state:
        return common_pb2.JOB_STATE_UNSPECIFIED
    try:
        # The generated stub types Value() as int; it is a JobState value.
        return cast(common_pb2.JobState, common_pb2.JobState.Value(JobState(state).value))
    except ValueError:
        raise InvalidInput(
            f"unknown job state {state!r}; expected one of {[s.value for s in JobState]}"
        ) from None


def job_state_from_pb(value: int) -> JobState | None:
    return JobState(common_pb2.JobState.Name(value)) if value else None


def job_to_pb(job: JobLike) -> training_pb2.Job:
    return training_pb2.Job(
        job_id=job.job_id,
        dataset_id=job.dataset_id,
        method=job.method,
        base_model=job.base_model,
        state=job_state_to_pb(job.state),
        step=job.step,
        total_steps=job.steps,
        best_val_iou=job.best_val_iou,
        initial_val_iou=job.initial_val_iou,
        model_id=job.model_id,
        error=job.error,
        created_at=job.created_at,
        updated_at=job.updated_at,
        attempts=job.attempts,
    )


def job_from_pb(job: training_pb2.Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "dataset_id": job.dataset_id,
        "method": job.method,
        "base_model": job.base_model,
        "state": str(job_state_from_pb(job.state)),
        "step": job.step,
        "total_steps": job.total_steps,
        "best_val_iou": wire_float(job.best_val_iou),
        "initial_val_iou": wire_float(job.initial_val_iou),
        "model_id": job.model_id,
        "error": job.error,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "attempts": job.attempts,
    }


def event_to_pb(e: dict[str, Any]) -> training_pb2.JobEvent:
    """A worker's event record (``vplab.jobs``) -> JobEvent; absent numbers are 0."""
    return training_pb2.JobEvent(
        seq=e["seq"],
        job_id=e["job_id"],
        state=job_state_to_pb(e.get("state") or JobState.RUNNING),
        phase=e.get("phase", ""),
        step=e.get("step", 0),
        total_steps=e.get("total_steps", 0),
        loss=e.get("loss") or 0.0,
        val_iou=e.get("val_iou") or 0.0,
        best_val_iou=e.get("best_val_iou") or 0.0,
        eta_s=e.get("eta_s") or 0.0,
        message=e.get("message", ""),
        model_id=e.get("model_id", ""),
        time=e.get("time", ""),
    )


def event_from_pb(e: training_pb2.JobEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "job_id": e.job_id,
        "state": str(job_state_from_pb(e.state)),
        "phase": e.phase,
        "step": e.step,
        "total_steps": e.total_steps,
        "loss": wire_float(e.loss),
        "val_iou": wire_float(e.val_iou),
        "best_val_iou": wire_float(e.best_val_iou),
        "eta_s": wire_float(e.eta_s),
        "message": e.message,
        "model_id": e.model_id,
        "time": e.time,
    }


def method_config_to_json(config: dict[str, Any] | None) -> str:
    return json.dumps(config) if config else ""


def method_config_from_json(text: str) -> dict[str, Any]:
    try:
        config = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise InvalidInput(f"method_config_json is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise InvalidInput("method_config_json must be a JSON object")
    return config


def start_training_to_pb(
    dataset_id: str,
    method: str = "epeft",
    base_model: str = "",
    steps: int = 0,
    method_config: dict[str, Any] | None = None,
    seed: int = 0,
    lr: float | None = None,
) -> training_pb2.StartTrainingRequest:
    return training_pb2.StartTrainingRequest(
        dataset_id=dataset_id,
        method=method,
        base_model=base_model,
        steps=steps,
        method_config_json=method_config_to_json(method_config),
        seed=seed,
        lr=lr or 0.0,
    )
