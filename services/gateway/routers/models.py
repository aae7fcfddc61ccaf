"""Tuned models: list, export, delete (on the object store, like datasets)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool

from services.gateway import schemas as S
from services.gateway.deps import SettingsDep, StoreDep, TenantId
from services.gateway.params import ERROR_RESPONSES, V1, ModelIdPath
from vplab import tuned
from vplab.errors import NotFound

router = APIRouter(prefix=V1, tags=["models"], responses=ERROR_RESPONSES)


@router.get("/models", summary="List the tenant's tuned models", response_model=S.ModelList)
def list_models(tenant: TenantId, store: StoreDep) -> Any:
    out = []
    for model_id in tuned.list_tuned_models(store, tenant):
        try:
            out.append(
                {"model_id": model_id, "config": tuned.read_tuned_config(store, tenant, model_id)}
            )
        except NotFound:  # deleted meanwhile
            continue
    return {"models": out}


@router.get("/models/{model_id}", summary="Get a tuned model's config", response_model=S.ModelOut)
def get_model(model_id: ModelIdPath, tenant: TenantId, store: StoreDep) -> Any:
    return {"model_id": model_id, "config": tuned.read_tuned_config(store, tenant, model_id)}


@router.get(
    "/models/{model_id}/export",
    summary="Download the adapter (zip: adapter.safetensors + config.json) or, for weight-delta "
    "methods, a merged plain-SAM checkpoint (`?format=merged`)",
    response_class=Response,
    responses={200: {"content": {"application/zip": {}, "application/octet-stream": {}}}},
)
async def export_model(
    model_id: ModelIdPath,
    tenant: TenantId,
    store: StoreDep,
    settings: SettingsDep,
    format: Annotated[
        Literal["adapter", "merged"],
        Query(description="merged: 400 unless the model's method is a pure weight delta"),
    ] = "adapter",
) -> Response:
    if format == "merged":
        # Builds the base model and folds the update in (torch, off the event loop).
        data = await run_in_threadpool(
            tuned.export_merged_checkpoint, store, settings, tenant, model_id
        )
        return Response(
            content=data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{model_id}-merged.pth"'},
        )
    data = tuned.export_archive(store, tenant, model_id)
    return Response(
        content=data,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{model_id}.zip"'},
    )


@router.delete("/models/{model_id}", summary="Delete a tuned model", status_code=204)
def delete_model(model_id: ModelIdPath, tenant: TenantId, store: StoreDep) -> Response:
    tuned.delete_tuned_model(store, tenant, model_id)
    return Response(status_code=204)
