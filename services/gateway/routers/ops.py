"""Health and metrics (no authentication; not under ``/v1``)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.gateway.deps import StoreDep, TimeoutsDep
from services.gateway.upstream import Upstream
from vplab.rpc.convert import APPS, FEATURES, SEGMENTATION, TRAINING
from vplab.rpc.v1 import features_pb2, segmentation_pb2, training_pb2
from vplab.storage import ArtifactStore

log = logging.getLogger("vplab.gateway")
router = APIRouter(tags=["ops"])

# An unauthenticated call per app: UNAUTHENTICATED proves the app is there and answering.
_PROBES = {
    FEATURES: ("Embed", features_pb2.EmbedRequest),
    SEGMENTATION: ("AutoSegment", segmentation_pb2.AutoSegmentRequest),
    TRAINING: ("GetJob", training_pb2.GetJobRequest),
}
_DOWN_REASONS = {
    "NOT_FOUND": "application not deployed",
    "UNAVAILABLE": "unreachable",
    "DEADLINE_EXCEEDED": "timeout",
}


async def _probe_app(up: Upstream | None, name: str) -> dict[str, Any]:
    if up is None:
        return {"status": "down", "detail": "no channel"}
    method, request = _PROBES[name]
    try:
        await up.probe(name, method, request())
    except grpc.RpcError as e:
        code = e.code().name if e.code() else "UNKNOWN"
        if code == "UNAUTHENTICATED":
            return {"status": "ok"}
        log.warning("health probe of %s: %s %s", name, code, e.details())
        return {
            "status": "down",
            "detail": f"{code}: {_DOWN_REASONS.get(code, 'unexpected answer')}",
        }
    return {"status": "down", "detail": "answered an unauthenticated request"}


def _probe_store(store: ArtifactStore) -> dict[str, Any]:
    try:
        store.exists("system/healthz")
    except Exception as e:  # noqa: BLE001 - any failure means down
        return {"status": "down", "detail": f"{type(e).__name__}"}
    return {"status": "ok"}


@router.get("/healthz", summary="Health of the store and of each service")
async def healthz(request: Request, store: StoreDep, timeouts: TimeoutsDep) -> JSONResponse:
    try:
        store_state = await asyncio.wait_for(
            run_in_threadpool(_probe_store, store), timeouts.health_s
        )
    except TimeoutError:
        store_state = {"status": "down", "detail": "timeout"}
    up = getattr(request.app.state, "upstream", None)
    app_states = await asyncio.gather(*[_probe_app(up, n) for n in APPS])
    ok = store_state["status"] == "ok" and all(s["status"] == "ok" for s in app_states)
    body = {
        "store": store_state,
        "apps": dict(zip(APPS, app_states)),
        "status": "ok" if ok else "degraded",
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def prometheus_metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
