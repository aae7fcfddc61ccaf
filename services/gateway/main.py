"""The REST gateway: FastAPI in its own process, in front of the three gRPC services.

``create_app`` only assembles: settings, the store and the dataset layer on ``app.state``,
the upstream channel in the lifespan, middleware, error handlers, and one router per
resource (``routers/``). Routes get everything through ``deps``.

- Every ``/v1`` request is authenticated here (``Authorization: Bearer <api key>``).
- Datasets, images, labels and tuned models are handled on the object store directly;
  segmentation, visual prompting and training are gRPC calls to the Serve apps, which
  authenticate the forwarded credentials again.
- The web app (static ES modules, ``ui/``) at ``/ui/``; ``/`` redirects there.
- Errors are JSON ``{"error": {"code", "message"}}``; metrics at ``/metrics``, health at
  ``/healthz``, the OpenAPI document at ``/openapi.json``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from services.gateway.errors import install_error_handlers
from services.gateway.metrics import GatewayMetrics, MetricsAndLimitsMiddleware
from services.gateway.routers import (
    datajobs,
    datasets,
    evaluations,
    labels,
    methods,
    models,
    ops,
    predictions,
    segmentation,
    trainings,
    ui,
)
from services.gateway.upstream import ChannelSource, Timeouts, upstream_lifespan
from vplab.datasets import DatasetStore
from vplab.settings import Settings, get_settings
from vplab.storage import ArtifactStore, open_store
from vplab.tenancy import Authenticator

TAGS = [
    {
        "name": "datasets",
        "description": "Datasets and their images (tenant-scoped, content-addressed)",
    },
    {"name": "labels", "description": "Refined masks, versioned per image"},
    {"name": "segmentation", "description": "Prompted, visual-prompt and prompt-free segmentation"},
    {
        "name": "predictions",
        "description": "Prediction runs over whole datasets, their results and their review",
    },
    {"name": "evaluations", "description": "mIoU / Dice of a pipeline on labelled images"},
    {"name": "training", "description": "Fine-tuning jobs and their progress events"},
    {"name": "models", "description": "Tuned models: list, export, delete"},
    {"name": "ops", "description": "Health, metrics"},
]
V1_ROUTERS = (
    datasets,
    datajobs,
    labels,
    segmentation,
    predictions,
    evaluations,
    trainings,
    methods,
    models,
)


def create_app(
    settings: Settings | None = None,
    store: ArtifactStore | None = None,
    grpc_channel: ChannelSource = None,
    *,
    rpc_timeout_s: float = 300.0,
    stream_timeout_s: float | None = 3600.0,
    health_timeout_s: float = 3.0,
    keepalive_s: float = 15.0,
) -> FastAPI:
    """Build the gateway. ``store`` defaults to ``open_store(settings)``; ``grpc_channel``:
    see ``upstream_lifespan`` (default: a channel to ``settings.grpc_target``)."""
    settings = settings or get_settings()
    store = store if store is not None else open_store(settings)
    timeouts = Timeouts(rpc_timeout_s, stream_timeout_s, health_timeout_s, keepalive_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with upstream_lifespan(app, settings.grpc_target, grpc_channel, timeouts):
            yield

    app = FastAPI(
        title="VP Lab",
        version="1.0",
        summary="Few-shot segmentation with SAM: visual prompting, refinement, fine-tuning, export.",
        description="Every `/v1` route needs `Authorization: Bearer <api key>`. Errors are "
        '`{"error": {"code": "...", "message": "..."}}`.',
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.auth = Authenticator(store, settings.api_key_pepper)
    app.state.datasets = DatasetStore(store, settings)
    app.state.metrics = GatewayMetrics()
    app.state.timeouts = timeouts
    app.state.upstream = None
    install_error_handlers(app)
    app.add_middleware(
        MetricsAndLimitsMiddleware,
        metrics=app.state.metrics,
        max_body=settings.max_image_bytes + 1024 * 1024,
        larger=((datajobs.IMPORT_PATH, settings.max_import_bytes),),
    )
    for module in (*V1_ROUTERS, ops):
        app.include_router(module.router)
    ui.install(app)  # the web app at /ui/ (and / -> /ui/)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, without FastAPI's 422: validation errors are answered as 400
    with the common error body."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        for item in schema.get("paths", {}).values():
            for op in item.values():
                if isinstance(op, dict):
                    op.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
