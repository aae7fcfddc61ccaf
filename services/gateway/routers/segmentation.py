"""Prompted, visual-prompt and prompt-free segmentation: calls to the segmentation app."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool

from services.gateway import schemas as S
from services.gateway.deps import (
    AuthHeader,
    DatasetsDep,
    LimitsDep,
    TenantId,
    TimeoutsDep,
    UpstreamDep,
)
from services.gateway.errors import ApiError
from services.gateway.params import (
    ERROR_RESPONSES,
    V1,
    DatasetIdPath,
    ImageIdPath,
    checked_rle,
    png_response,
)
from services.gateway.sse import rpc_to_sse, wants_event_stream
from vplab.masks import decode_rle, encode_binary_mask
from vplab.rpc import convert
from vplab.rpc.convert import SEGMENTATION
from vplab.rpc.v1 import segmentation_pb2

router = APIRouter(prefix=V1, tags=["segmentation"], responses=ERROR_RESPONSES)


@router.post(
    "/images/{image_id}/segment",
    summary="Segment an image from prompts",
    response_model=S.SegmentResponse,
    responses={
        200: {
            "content": {"image/png": {}},
            "description": "masks (JSON) or the best mask (PNG)",
        }
    },
)
async def segment(
    image_id: ImageIdPath,
    body: S.SegmentRequest,
    tenant: TenantId,
    authorization: AuthHeader,
    limits: LimitsDep,
    up: UpstreamDep,
    format: Annotated[
        Literal["json", "png"], Query(description="png: the best mask as a PNG")
    ] = "json",
):
    limits.check_points(len(body.points))
    mask_input = None
    if body.mask_input_rle is not None:
        # Parsing an RLE is a Python loop over its counts: off the event loop.
        mask_input = await run_in_threadpool(checked_rle, body.mask_input_rle, "mask_input_rle")
    request = convert.segment_request_to_pb(
        image_id,
        [(x, y, lab) for (x, y), lab in zip(body.points, body.labels)],
        box=body.box,
        mask_input=mask_input,
        multimask=body.multimask,
        model_id=body.model_id,
    )
    response = await up.unary(SEGMENTATION, "SegmentPrompt", request, authorization, body.model_id)
    masks = convert.mask_results_from_pb(response.masks)
    if format == "png":
        if not masks:
            raise ApiError(502, "the service returned no mask")
        best = max(masks, key=lambda m: m["score"])
        png = await run_in_threadpool(lambda: encode_binary_mask(decode_rle(best["rle"])))
        return png_response(png, f"{image_id[:12]}-mask.png")
    return {"masks": masks, "height": response.height, "width": response.width}


@router.post(
    "/datasets/{dataset_id}/visual-prompt",
    summary="Segment a dataset's images like annotated references",
    response_model=S.VisualPromptResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "JSON, or one SSE `result` event per target with "
            "`Accept: text/event-stream`",
        }
    },
)
async def visual_prompt(
    dataset_id: DatasetIdPath,
    body: S.VisualPromptRequest,
    request: Request,
    tenant: TenantId,
    authorization: AuthHeader,
    datasets: DatasetsDep,
    limits: LimitsDep,
    timeouts: TimeoutsDep,
    up: UpstreamDep,
):
    limits.check_references(len(body.references))
    if body.targets is not None:
        limits.check_targets(len(body.targets))
    refs = await run_in_threadpool(
        lambda: [
            (r.image_id, checked_rle(r.mask_rle, f"references[{i}].mask_rle"))
            for i, r in enumerate(body.references)
        ]
    )
    # The same resolution the service applies: early 404s, and the total for the stream.
    targets = await run_in_threadpool(
        datasets.visual_prompt_targets, tenant, dataset_id, [i for i, _ in refs], body.targets
    )
    rpc_request = convert.visual_prompt_request_to_pb(
        dataset_id, refs, targets, body.model_id, body.matcher, body.seed
    )
    call = up.stream(SEGMENTATION, "VisualPrompt", rpc_request, authorization, body.model_id)

    def count(error: grpc.RpcError | None) -> None:
        up.count(SEGMENTATION, "VisualPrompt", error)

    if not wants_event_stream(request.headers.get("accept")):
        results = []
        try:
            async for r in call:
                results.append(convert.visual_prompt_result_from_pb(r))
        except grpc.RpcError as e:
            count(e)
            raise
        count(None)
        results.sort(key=lambda r: r["index"])
        return {"results": results}

    def event_of(r: segmentation_pb2.VisualPromptResponse, n: int) -> tuple[str, Any, int]:
        return "result", convert.visual_prompt_result_from_pb(r), n

    return await rpc_to_sse(
        call,
        count,
        event_of,
        timeouts.keepalive_s,
        wait_first=True,
        closing=lambda n: ("end", {"count": n, "total": len(targets)}),
    )


@router.post(
    "/images/{image_id}/auto-segment",
    summary="Prompt-free segmentation with a PTSAM model",
    response_model=S.AutoSegmentResponse,
)
async def auto_segment(
    image_id: ImageIdPath,
    body: S.AutoSegmentRequest,
    tenant: TenantId,
    authorization: AuthHeader,
    up: UpstreamDep,
) -> Any:
    r = await up.unary(
        SEGMENTATION,
        "AutoSegment",
        segmentation_pb2.AutoSegmentRequest(image_id=image_id, model_id=body.model_id),
        authorization,
        body.model_id,
    )
    return {"mask_rle": convert.rle_from_pb(r.mask), "score": convert.wire_float(r.score)}
