"""The PEFT methods a job can use: the registry with descriptions and parameter counts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from services.gateway import schemas as S
from services.gateway.deps import SettingsDep, TenantId
from services.gateway.params import ERROR_RESPONSES, V1

router = APIRouter(prefix=V1, tags=["training"], responses=ERROR_RESPONSES)


@router.get(
    "/methods",
    summary="The PEFT methods, with trainable parameters on the deployed base model",
    response_model=S.MethodList,
)
async def list_methods(tenant: TenantId, settings: SettingsDep) -> Any:
    from vplab.inference.runtime import deployed_sam_name
    from vplab.peft.catalog import method_catalog

    # The first call builds ~20 meta-device models (~1.5 s): off the event loop.
    catalog = await run_in_threadpool(method_catalog, deployed_sam_name(settings))
    return {"methods": [m.plain() for m in catalog]}
