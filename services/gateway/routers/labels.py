"""Refined masks, versioned per image."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from services.gateway import schemas as S
from services.gateway.deps import DatasetsDep, LimitsDep, TenantId
from services.gateway.params import (
    ERROR_RESPONSES,
    PNG_BODY,
    V1,
    DatasetIdPath,
    ImageIdPath,
    png_body,
    png_response,
)

router = APIRouter(prefix=V1, tags=["labels"], responses=ERROR_RESPONSES)


@router.put(
    "/datasets/{dataset_id}/labels/{image_id}",
    summary="Upload a refined mask (new version)",
    response_model=S.LabelVersion,
    openapi_extra=PNG_BODY,
    responses={412: {"model": S.ErrorResponse, "description": "If-Match / If-None-Match failed"}},
)
async def put_label(
    dataset_id: DatasetIdPath,
    image_id: ImageIdPath,
    request: Request,
    response: Response,
    tenant: TenantId,
    datasets: DatasetsDep,
    limits: LimitsDep,
    if_match: Annotated[
        str | None,
        Header(
            alias="if-match",
            max_length=1024,
            description="the ETag of the label you edited (or `*`): 412 if another version "
            "was saved meanwhile, and nothing is written",
        ),
    ] = None,
    if_none_match: Annotated[
        Literal["*"] | None,
        Header(alias="if-none-match", description="`*`: only if the image has no label yet"),
    ] = None,
) -> Any:
    data = await png_body(request, limits)
    label = await run_in_threadpool(
        datasets.put_label, tenant, dataset_id, image_id, data, if_match, if_none_match
    )
    response.headers["ETag"] = label.etag
    return {"image_id": image_id, "version": label.version}


@router.get(
    "/datasets/{dataset_id}/labels",
    summary="Latest label version per image",
    response_model=dict[str, int],
)
def list_labels(dataset_id: DatasetIdPath, tenant: TenantId, datasets: DatasetsDep) -> Any:
    return {k: int(v) for k, v in datasets.list_labels(tenant, dataset_id).items()}


@router.get(
    "/datasets/{dataset_id}/labels/{image_id}",
    summary="Download a label PNG",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def get_label(
    dataset_id: DatasetIdPath,
    image_id: ImageIdPath,
    tenant: TenantId,
    datasets: DatasetsDep,
    version: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="default: the latest")
    ] = None,
) -> Response:
    label = datasets.get_label(tenant, dataset_id, image_id, version)
    response = png_response(label.png)
    response.headers["ETag"] = label.etag
    return response
