"""Datasets and their images: handled here on the object store (``DatasetStore``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Annotated, Any, Literal

from fastapi import APIRouter, File, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from services.gateway import schemas as S
from services.gateway.deps import DatasetsDep, LimitsDep, TenantId
from services.gateway.params import (
    ERROR_RESPONSES,
    V1,
    DatasetIdPath,
    ImageIdPath,
    image_media_type,
    plain,
)
from vplab.dataio import export_dataset, parse_source
from vplab.images import encode_png
from vplab.predictions import image_details, prediction_runs
from vplab.storage.keys import ID_PATTERN

router = APIRouter(prefix=V1, tags=["datasets"], responses=ERROR_RESPONSES)


_CLASS_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": S.ErrorResponse, "description": "A class name is used twice"}
}


@router.post(
    "/datasets",
    summary="Create a dataset",
    status_code=201,
    response_model=S.DatasetOut,
    responses=_CLASS_CONFLICT,
)
def create_dataset(body: S.DatasetCreate, tenant: TenantId, datasets: DatasetsDep) -> Any:
    classes = (
        None if body.classes is None else [c.model_dump(exclude_none=True) for c in body.classes]
    )
    return plain(
        datasets.create_dataset(tenant, body.name, classes=classes, channels=body.channels)
    )


@router.patch(
    "/datasets/{dataset_id}",
    summary="Rename a dataset, edit its classes, append classes",
    response_model=S.DatasetOut,
    responses={
        409: {
            "model": S.ErrorResponse,
            "description": "A class name in use, or more than 1024 classes",
        }
    },
)
def update_dataset(
    dataset_id: DatasetIdPath, body: S.DatasetPatch, tenant: TenantId, datasets: DatasetsDep
) -> Any:
    classes = (
        None if body.classes is None else [c.model_dump(exclude_none=True) for c in body.classes]
    )
    return plain(
        datasets.update_dataset(
            tenant, dataset_id, name=body.name, classes=classes, channels=body.channels
        )
    )


@router.get("/datasets", summary="List the tenant's datasets", response_model=S.DatasetList)
def list_datasets(tenant: TenantId, datasets: DatasetsDep) -> Any:
    return {"datasets": plain(datasets.list_datasets(tenant))}


@router.get("/datasets/{dataset_id}", summary="Get a dataset", response_model=S.DatasetOut)
def get_dataset(dataset_id: DatasetIdPath, tenant: TenantId, datasets: DatasetsDep) -> Any:
    return plain(datasets.get_dataset(tenant, dataset_id))


@router.delete(
    "/datasets/{dataset_id}",
    summary="Delete a dataset, its labels, and images no other dataset uses",
    status_code=204,
)
def delete_dataset(dataset_id: DatasetIdPath, tenant: TenantId, datasets: DatasetsDep) -> Response:
    datasets.delete_dataset(tenant, dataset_id)
    return Response(status_code=204)


@router.post(
    "/datasets/{dataset_id}/images",
    summary="Upload an image (multipart `file`)",
    status_code=201,
    response_model=S.ImageUploaded,
)
async def upload_image(
    dataset_id: DatasetIdPath,
    tenant: TenantId,
    datasets: DatasetsDep,
    limits: LimitsDep,
    file: Annotated[UploadFile, File()],
) -> Any:
    data = await file.read(limits.max_image_bytes + 1)
    limits.check_image_bytes(len(data))
    image_id = await run_in_threadpool(
        datasets.add_image, tenant, dataset_id, data, file.filename or None
    )
    return {"image_id": image_id}


@router.get(
    "/datasets/{dataset_id}/images", summary="List a dataset's images", response_model=S.ImageList
)
def list_images(dataset_id: DatasetIdPath, tenant: TenantId, datasets: DatasetsDep) -> Any:
    details = image_details(datasets, prediction_runs(datasets.store), tenant, dataset_id)
    return {"images": [d["image_id"] for d in details], "details": details}


@router.get(
    "/datasets/{dataset_id}/images/{image_id}",
    summary="An image's record in a dataset: file name, when added, microscopy metadata",
    response_model=S.ImageInfoOut,
)
def image_info(
    dataset_id: DatasetIdPath, image_id: ImageIdPath, tenant: TenantId, datasets: DatasetsDep
) -> Any:
    return plain(datasets.image_info(tenant, dataset_id, image_id))


@router.delete(
    "/datasets/{dataset_id}/images/{image_id}",
    summary="Remove an image from a dataset",
    status_code=204,
)
def remove_image(
    dataset_id: DatasetIdPath, image_id: ImageIdPath, tenant: TenantId, datasets: DatasetsDep
) -> Response:
    datasets.remove_image(tenant, dataset_id, image_id)
    return Response(status_code=204)


@router.get(
    "/images/{image_id}",
    summary="Download an image's bytes, or (`?format=png`) the 8-bit RGB pixels the models see",
    response_class=Response,
    responses={200: {"content": {"image/*": {}}}},
)
def get_image(
    image_id: ImageIdPath,
    tenant: TenantId,
    datasets: DatasetsDep,
    format: Annotated[
        Literal["original", "png"],
        Query(
            description="png: decoded by the one rule (EXIF, microscopy TIFFs) - what a "
            "browser can show for any upload"
        ),
    ] = "original",
) -> Response:
    if format == "png":
        return Response(
            content=encode_png(datasets.get_image(tenant, image_id)), media_type="image/png"
        )
    data = datasets.get_image_bytes(tenant, image_id)
    return Response(content=data, media_type=image_media_type(data))


# --- export (import is a data job: routers/datajobs.py) ---------------------------------------


def _chunks(f: IO[bytes], size: int = 1024 * 1024) -> Iterator[bytes]:
    with f:
        while chunk := f.read(size):
            yield chunk


@router.get(
    "/datasets/{dataset_id}/export",
    summary="Export images with labels (or a run's results) as COCO or PNG label maps (zip)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}}},
)
async def export(
    dataset_id: DatasetIdPath,
    tenant: TenantId,
    datasets: DatasetsDep,
    format: Annotated[Literal["coco", "masks"], Query()] = "coco",
    source: Annotated[
        str,
        Query(
            pattern=r"^(labels|predictions:" + ID_PATTERN[1:-1] + r")$",
            description="labels (each image's latest) or predictions:{run_id}",
        ),
    ] = "labels",
) -> StreamingResponse:
    archive = await run_in_threadpool(
        export_dataset, datasets, tenant, dataset_id, format, parse_source(source)
    )
    name = f"{dataset_id}-{format}.zip"
    return StreamingResponse(
        _chunks(archive),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
