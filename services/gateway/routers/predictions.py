"""Prediction runs (visual prompting over a dataset as a durable job) and their review.

Starting, following and cancelling a run are calls to the training app (``service
Predictions``); results and reviews are dataset data, read and written here on the object
store (``vplab.predictions``), like labels.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from services.gateway import schemas as S
from services.gateway.deps import (
    AuthHeader,
    DatasetsDep,
    LimitsDep,
    TenantId,
    TimeoutsDep,
    UpstreamDep,
)
from services.gateway.params import (
    ERROR_RESPONSES,
    PNG_BODY,
    V1,
    AfterSeqQuery,
    DatasetIdPath,
    ImageIdPath,
    LastEventIdHeader,
    RunIdPath,
    checked_rle,
    optional_png_body,
    png_response,
    resume_after,
)
from services.gateway.sse import job_event_stream
from vplab import predictions as P
from vplab.masks import encode_label_map
from vplab.rpc import convert
from vplab.rpc.convert import TRAINING
from vplab.rpc.v1 import predictions_pb2 as pb

router = APIRouter(prefix=V1, tags=["predictions"], responses=ERROR_RESPONSES)

_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": S.ErrorResponse, "description": "Already reviewed, or the run was cancelled"}
}


def references_out(record: dict[str, Any]) -> dict[str, Any]:
    """A run or evaluation from the wire, its references in the REST shape."""
    record["references"] = [
        {
            "image_id": r["image_id"],
            "class_id": r.get("class_id"),
            "mask_rle": r.get("mask"),
            "label_version": r.get("label_version"),
        }
        for r in record["references"]
    ]
    return record


def _run_out(run: pb.PredictionRun) -> dict[str, Any]:
    return references_out(convert.run_from_pb(run))


def references_in(
    references: list[S.LabelReference | S.MaskReference],
) -> list[dict[str, Any]]:
    """REST references -> the wire's (masks checked to cover their size)."""
    out = []
    for i, r in enumerate(references):
        ref: dict[str, Any] = {"image_id": r.image_id}
        if isinstance(r, S.MaskReference):
            ref["mask"] = checked_rle(r.mask_rle, f"references[{i}].mask_rle")
            ref["class_id"] = r.class_id
        out.append(ref)
    return out


@router.post(
    "/datasets/{dataset_id}/predictions",
    summary="Start a prediction run over a dataset",
    status_code=201,
    response_model=S.PredictionRunOut,
)
async def start_prediction(
    dataset_id: DatasetIdPath,
    body: S.PredictionCreate,
    tenant: TenantId,
    authorization: AuthHeader,
    up: UpstreamDep,
) -> Any:
    request = convert.start_prediction_to_pb(
        dataset_id,
        references_in(body.references),
        body.model_id,
        body.targets,
        body.matcher,
        body.seed,
    )
    r = await up.unary(TRAINING, "StartPrediction", request, authorization)
    return _run_out(r.run)


@router.get(
    "/datasets/{dataset_id}/predictions",
    summary="List a dataset's prediction runs, newest first",
    response_model=S.PredictionRunList,
)
async def list_predictions(
    dataset_id: DatasetIdPath,
    tenant: TenantId,
    authorization: AuthHeader,
    up: UpstreamDep,
    limit: Annotated[int, Query(ge=0, le=1000, description="0 = the service default")] = 0,
) -> Any:
    request = pb.ListPredictionsRequest(dataset_id=dataset_id, limit=limit)
    r = await up.unary(TRAINING, "ListPredictions", request, authorization)
    return {"runs": [_run_out(run) for run in r.runs]}


@router.get(
    "/predictions/{run_id}", summary="Get a prediction run", response_model=S.PredictionRunOut
)
async def get_prediction(
    run_id: RunIdPath, tenant: TenantId, authorization: AuthHeader, up: UpstreamDep
) -> Any:
    request = pb.GetPredictionRequest(run_id=run_id)
    r = await up.unary(TRAINING, "GetPrediction", request, authorization)
    return _run_out(r.run)


@router.delete(
    "/predictions/{run_id}",
    summary="Cancel a prediction run (finished targets keep their results)",
    response_model=S.PredictionRunOut,
    responses={409: {"model": S.ErrorResponse, "description": "The run already ended"}},
)
async def cancel_prediction(
    run_id: RunIdPath, tenant: TenantId, authorization: AuthHeader, up: UpstreamDep
) -> Any:
    request = pb.CancelPredictionRequest(run_id=run_id)
    r = await up.unary(TRAINING, "CancelPrediction", request, authorization)
    return _run_out(r.run)


@router.get(
    "/predictions/{run_id}/events",
    summary="Follow a run: server-sent events (`id: seq`, `event: target|progress|end`)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def prediction_events(
    run_id: RunIdPath,
    tenant: TenantId,
    authorization: AuthHeader,
    up: UpstreamDep,
    timeouts: TimeoutsDep,
    after_seq: AfterSeqQuery = 0,
    last_event_id: LastEventIdHeader = "",
):
    after_seq = resume_after(after_seq, last_event_id)
    return await job_event_stream(
        up,
        authorization,
        timeouts.keepalive_s,
        ("GetPrediction", pb.GetPredictionRequest(run_id=run_id)),
        ("WatchPrediction", pb.WatchPredictionRequest(run_id=run_id, after_seq=after_seq)),
        convert.prediction_event_from_pb,
        item=("target", "target"),
    )


@router.get(
    "/predictions/{run_id}/results",
    summary="A page of a run's results (no masks), e.g. the most uncertain first",
    response_model=S.PredictionResultPage,
)
def list_results(
    run_id: RunIdPath,
    tenant: TenantId,
    datasets: DatasetsDep,
    order: Annotated[Literal["uncertainty", "score", "image"], Query()] = "uncertainty",
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    after: Annotated[
        str | None, Query(max_length=256, description="`next` of the previous page")
    ] = None,
) -> Any:
    runs = P.prediction_runs(datasets.store)
    page, cursor = P.list_results(datasets.store, runs, tenant, run_id, order, limit, after)
    return {"results": page, "next": cursor}


@router.get(
    "/predictions/{run_id}/results/{image_id}",
    summary="One target's result: per-class masks (JSON) or a label map (`?format=png`)",
    response_model=S.PredictionResultOut,
    responses={200: {"content": {"image/png": {}}}},
)
def get_result(
    run_id: RunIdPath,
    image_id: ImageIdPath,
    tenant: TenantId,
    datasets: DatasetsDep,
    format: Annotated[Literal["json", "png"], Query()] = "json",
) -> Any:
    P.prediction_runs(datasets.store).get(
        tenant, run_id
    )  # NotFound: unknown or another tenant's run
    result = P.get_result(datasets.store, tenant, run_id, image_id)
    if format == "png":
        return png_response(encode_label_map(P.result_label_map(result)), f"{image_id}.png")
    review = P.get_review(datasets.store, tenant, run_id, image_id)
    return {
        **{k: result[k] for k in ("image_id", "run_id", "model_id", "height", "width")},
        "score": result["score"],
        "uncertainty": result["uncertainty"],
        "created_at": result["created_at"],
        "classes": {
            cid: {"mask_rle": c["mask"], "score": c["score"], "points": c["points"]}
            for cid, c in result["classes"].items()
        },
        "review": review["verdict"] if review else None,
    }


@router.post(
    "/predictions/{run_id}/results/{image_id}/accept",
    summary="Accept a result as the image's next label version (optionally edited: a PNG body)",
    response_model=S.ReviewOut,
    responses=_CONFLICT,
    openapi_extra={"requestBody": {**PNG_BODY["requestBody"], "required": False}},
)
async def accept_result(
    run_id: RunIdPath,
    image_id: ImageIdPath,
    request: Request,
    tenant: TenantId,
    datasets: DatasetsDep,
    limits: LimitsDep,
) -> Any:
    edited = await optional_png_body(request, limits)
    runs = P.prediction_runs(datasets.store)
    return await run_in_threadpool(
        P.review_result, datasets, runs, tenant, run_id, image_id, P.ACCEPTED, edited
    )


@router.post(
    "/predictions/{run_id}/results/{image_id}/reject",
    summary="Reject a result (no label is written)",
    response_model=S.ReviewOut,
    responses=_CONFLICT,
)
def reject_result(
    run_id: RunIdPath, image_id: ImageIdPath, tenant: TenantId, datasets: DatasetsDep
) -> Any:
    runs = P.prediction_runs(datasets.store)
    return P.review_result(datasets, runs, tenant, run_id, image_id, P.REJECTED)
