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
from vplab.rpc.v1 import (
    common_pb2,
    datajobs_pb2,
    features_pb2,
    predictions_pb2,
    segmentation_pb2,
    training_pb2,
)
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
    zero_shot_miou: float | None
    tuned_miou: float | None
    gain_images: int
    recipe: str
    val_on_train: bool


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
        zero_shot_miou=job.zero_shot_miou,
        tuned_miou=job.tuned_miou,
        gain_images=job.gain_images,
        recipe=job.recipe,
        val_on_train=job.val_on_train,
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
        "zero_shot_miou": _optional(job, "zero_shot_miou"),
        "tuned_miou": _optional(job, "tuned_miou"),
        "gain_images": job.gain_images,
        "recipe": job.recipe,
        "val_on_train": job.val_on_train,
    }


def _optional(message: Any, name: str) -> float | None:
    return wire_float(getattr(message, name)) if message.HasField(name) else None


_OPTIONAL_EVENT_FLOATS = ("loss", "val_iou", "eta_s")


def event_to_pb(e: dict[str, Any]) -> training_pb2.JobEvent:
    """A worker's event record (``vplab.jobs``) -> JobEvent. Loss, validation IoU and ETA
    stay unset when the event has none; other absent numbers are 0."""
    optional = {k: e[k] for k in _OPTIONAL_EVENT_FLOATS if e.get(k) is not None}
    return training_pb2.JobEvent(
        seq=e["seq"],
        job_id=e["job_id"],
        state=job_state_to_pb(e.get("state") or JobState.RUNNING),
        phase=e.get("phase", ""),
        step=e.get("step", 0),
        total_steps=e.get("total_steps", 0),
        best_val_iou=e.get("best_val_iou") or 0.0,
        message=e.get("message", ""),
        model_id=e.get("model_id", ""),
        time=e.get("time", ""),
        **optional,
    )


def event_from_pb(e: training_pb2.JobEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "job_id": e.job_id,
        "state": str(job_state_from_pb(e.state)),
        "phase": e.phase,
        "step": e.step,
        "total_steps": e.total_steps,
        "loss": wire_float(e.loss) if e.HasField("loss") else None,
        "val_iou": wire_float(e.val_iou) if e.HasField("val_iou") else None,
        "best_val_iou": wire_float(e.best_val_iou),
        "eta_s": wire_float(e.eta_s) if e.HasField("eta_s") else None,
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
    recipe: str = "",
) -> training_pb2.StartTrainingRequest:
    return training_pb2.StartTrainingRequest(
        dataset_id=dataset_id,
        method=method,
        base_model=base_model,
        steps=steps,
        method_config_json=method_config_to_json(method_config),
        seed=seed,
        lr=lr or 0.0,
        recipe=recipe,
    )


# --- prediction runs -----------------------------------------------------------------------


def prediction_references_to_pb(
    references: Iterable[dict[str, Any]],
) -> list[predictions_pb2.PredictionReference]:
    """``[{image_id}]`` / ``[{image_id, mask, class_id}]`` (``mask`` a COCO RLE) -> pb;
    a run's resolved label references carry their ``label_version``."""
    out = []
    for r in references:
        ref = predictions_pb2.PredictionReference(image_id=str(r.get("image_id", "")))
        if r.get("mask") is not None:
            ref.mask.CopyFrom(rle_to_pb(r["mask"]))
        if r.get("class_id") is not None:
            ref.class_id = int(r["class_id"])
        if r.get("label_version"):
            ref.label_version = int(r["label_version"])
        out.append(ref)
    return out


def prediction_references_from_pb(
    references: Iterable[predictions_pb2.PredictionReference],
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in references:
        ref: dict[str, Any] = {"image_id": r.image_id}
        if r.HasField("mask"):
            ref["mask"] = rle_from_pb(r.mask)
        if r.class_id:
            ref["class_id"] = r.class_id
        if r.label_version:
            ref["label_version"] = r.label_version
        out.append(ref)
    return out


def start_prediction_to_pb(
    dataset_id: str,
    references: Iterable[dict[str, Any]],
    model_id: str | None = None,
    targets: Iterable[str] | None = None,
    matcher: str | None = None,
    seed: int = 0,
) -> predictions_pb2.StartPredictionRequest:
    return predictions_pb2.StartPredictionRequest(
        dataset_id=dataset_id,
        references=prediction_references_to_pb(references),
        model_id=model_id or "",
        target_image_ids=list(targets or ()),
        matcher=matcher or "",
        seed=seed,
    )


class RunLike(Protocol):
    run_id: str
    dataset_id: str
    model_id: str
    state: str
    done: int
    errors: list[dict[str, str]]
    references: list[dict[str, Any]]
    matcher: str
    seed: int
    error: str
    created_at: str
    updated_at: str
    attempts: int

    @property
    def total(self) -> int: ...


def run_to_pb(run: RunLike) -> predictions_pb2.PredictionRun:
    return predictions_pb2.PredictionRun(
        run_id=run.run_id,
        dataset_id=run.dataset_id,
        model_id=run.model_id,
        state=job_state_to_pb(run.state),
        done=run.done,
        total=run.total,
        errors=[predictions_pb2.PredictionError(**e) for e in run.errors],
        references=prediction_references_to_pb(run.references),
        matcher=run.matcher,
        seed=run.seed,
        error=run.error,
        created_at=run.created_at,
        updated_at=run.updated_at,
        attempts=run.attempts,
    )


def run_from_pb(run: predictions_pb2.PredictionRun) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "dataset_id": run.dataset_id,
        "model_id": run.model_id,
        "state": str(job_state_from_pb(run.state)),
        "done": run.done,
        "total": run.total,
        "errors": [{"image_id": e.image_id, "error": e.error} for e in run.errors],
        "references": prediction_references_from_pb(run.references),
        "matcher": run.matcher,
        "seed": run.seed,
        "error": run.error,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "attempts": run.attempts,
    }


def prediction_event_to_pb(e: dict[str, Any]) -> predictions_pb2.PredictionEvent:
    """A run worker's event record (``vplab.predictions``) -> PredictionEvent."""
    return predictions_pb2.PredictionEvent(
        seq=e["seq"],
        run_id=e["run_id"],
        state=job_state_to_pb(e.get("state") or JobState.RUNNING),
        phase=e.get("phase", ""),
        image_id=e.get("image_id", ""),
        done=e.get("done", 0),
        total=e.get("total", 0),
        uncertainty=e.get("uncertainty") or 0.0,
        message=e.get("message", ""),
        time=e.get("time", ""),
    )


def prediction_event_from_pb(e: predictions_pb2.PredictionEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "run_id": e.run_id,
        "state": str(job_state_from_pb(e.state)),
        "phase": e.phase,
        "image_id": e.image_id,
        "done": e.done,
        "total": e.total,
        "uncertainty": wire_float(e.uncertainty),
        "message": e.message,
        "time": e.time,
    }


def start_evaluation_to_pb(
    dataset_id: str,
    references: Iterable[dict[str, Any]],
    model_id: str | None = None,
    images: Iterable[str] | None = None,
    matcher: str | None = None,
    seed: int = 0,
) -> predictions_pb2.StartEvaluationRequest:
    return predictions_pb2.StartEvaluationRequest(
        dataset_id=dataset_id,
        references=prediction_references_to_pb(references),
        model_id=model_id or "",
        image_ids=list(images or ()),
        matcher=matcher or "",
        seed=seed,
    )


def evaluation_to_pb(e: Any) -> predictions_pb2.Evaluation:
    """A ``vplab.predictions.Evaluation`` -> pb (scores absent until it succeeded)."""
    return predictions_pb2.Evaluation(
        run=run_to_pb(e),
        miou=e.miou,
        mean_dice=e.mean_dice,
        per_class={
            int(c): predictions_pb2.ClassScore(iou=s["iou"], dice=s["dice"])
            for c, s in e.per_class.items()
        },
        per_image=[predictions_pb2.ImageScore(**s) for s in e.per_image],
        n_images=e.n_images,
    )


def evaluation_from_pb(e: predictions_pb2.Evaluation) -> dict[str, Any]:
    run = run_from_pb(e.run)
    return {
        "evaluation_id": run.pop("run_id"),
        **run,
        "miou": _optional(e, "miou"),
        "mean_dice": _optional(e, "mean_dice"),
        "per_class": {
            str(c): {"iou": wire_float(s.iou), "dice": wire_float(s.dice)}
            for c, s in sorted(e.per_class.items())
        },
        "per_image": [
            {"image_id": s.image_id, "iou": wire_float(s.iou), "dice": wire_float(s.dice)}
            for s in e.per_image
        ],
        "n_images": e.n_images,
    }


# --- data jobs ---------------------------------------------------------------------------------


def data_job_to_pb(job: Any) -> datajobs_pb2.DataJob:
    """A ``vplab.datajobs.DataJob`` -> pb."""
    return datajobs_pb2.DataJob(
        job_id=job.job_id,
        dataset_id=job.dataset_id,
        kind=job.kind,
        state=job_state_to_pb(job.state),
        done=job.done,
        total=job.total,
        errors=[datajobs_pb2.DataJobError(**e) for e in job.errors],
        report_json=json.dumps(job.report),
        encoders=list(job.encoders),
        error=job.error,
        created_at=job.created_at,
        updated_at=job.updated_at,
        attempts=job.attempts,
    )


def data_job_from_pb(job: datajobs_pb2.DataJob) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "dataset_id": job.dataset_id,
        "kind": job.kind,
        "state": str(job_state_from_pb(job.state)),
        "done": job.done,
        "total": job.total,
        "errors": [{"entry": e.entry, "error": e.error} for e in job.errors],
        "report": json.loads(job.report_json or "{}"),
        "encoders": list(job.encoders),
        "error": job.error,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "attempts": job.attempts,
    }


def data_event_to_pb(e: dict[str, Any]) -> datajobs_pb2.DataJobEvent:
    """A data job worker's event record (``vplab.datajobs``) -> DataJobEvent."""
    return datajobs_pb2.DataJobEvent(
        seq=e["seq"],
        job_id=e["job_id"],
        state=job_state_to_pb(e.get("state") or JobState.RUNNING),
        phase=e.get("phase", ""),
        entry=e.get("entry", ""),
        done=e.get("done", 0),
        total=e.get("total", 0),
        message=e.get("message", ""),
        time=e.get("time", ""),
    )


def data_event_from_pb(e: datajobs_pb2.DataJobEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "job_id": e.job_id,
        "state": str(job_state_from_pb(e.state)),
        "phase": e.phase,
        "entry": e.entry,
        "done": e.done,
        "total": e.total,
        "message": e.message,
        "time": e.time,
    }
