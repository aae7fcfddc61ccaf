"""The REST gateway: FastAPI in its own process, in front of the three gRPC services.

- Authenticates every ``/v1`` request itself (``Authorization: Bearer <api key>``).
- Datasets, images and labels are handled here, directly on the object store
  (``DatasetStore``); tuned models (list, export, delete) too.
- Segmentation, visual prompting and training are gRPC calls to the Serve apps, with the
  caller's ``authorization`` forwarded as metadata plus ``application`` (and
  ``multiplexed_model_id`` for tuned segmentation models): the services authenticate again.
- Errors are always JSON ``{"error": {"code", "message"}}`` (see ``errors.py``); metrics at
  ``/metrics``, health at ``/healthz``, the OpenAPI document at ``/openapi.json``.

``create_app()`` builds everything; there is no module-level state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, is_dataclass
from typing import Annotated, Any, Literal

import grpc
from fastapi import Depends, FastAPI, File, Header, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.gateway import schemas as S
from services.gateway.errors import CODES, ApiError, install_error_handlers, status_of_rpc_error
from services.gateway.metrics import GatewayMetrics, MetricsAndLimitsMiddleware
from services.gateway.sse import SSE_HEADERS, sse_event, wants_event_stream, with_keepalive
from vplab.errors import InvalidInput, NotFound, PayloadTooLarge
from vplab.masks import decode_rle, encode_binary_mask, rle_area
from vplab.rpc.v1 import (
    common_pb2,
    features_pb2,
    features_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from vplab.settings import Settings, get_settings
from vplab.storage import ArtifactStore, keys, open_store

log = logging.getLogger("vplab.gateway")

FEATURES, SEGMENTATION, TRAINING = "features", "segmentation", "training"
TERMINAL_STATES = {"SUCCEEDED", "FAILED", "CANCELLED"}
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
TAGS = [
    {
        "name": "datasets",
        "description": "Datasets and their images (tenant-scoped, content-addressed)",
    },
    {"name": "labels", "description": "Refined masks, versioned per image"},
    {"name": "segmentation", "description": "Prompted, visual-prompt and prompt-free segmentation"},
    {"name": "training", "description": "Fine-tuning jobs and their progress events"},
    {"name": "models", "description": "Tuned models: list, export, delete"},
    {"name": "ops", "description": "Health, metrics"},
]


# --- upstream gRPC ---------------------------------------------------------------------------


class Upstream:
    """Stubs on one ``grpc.aio`` channel, and the metadata every call carries."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        metrics: GatewayMetrics,
        timeout_s: float,
        stream_timeout_s: float,
    ):
        self.channel = channel
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.stream_timeout_s = stream_timeout_s
        self.features = features_pb2_grpc.FeaturesStub(channel)
        self.segmentation = segmentation_pb2_grpc.SegmentationStub(channel)
        self.training = training_pb2_grpc.TrainingStub(channel)

    @staticmethod
    def metadata(
        app: str, authorization: str | None, model_id: str | None = None
    ) -> list[tuple[str, str]]:
        md = [("application", app)]
        if authorization:
            md.append(("authorization", authorization))
        if model_id:
            md.append(("multiplexed_model_id", model_id))
        return md

    async def unary(
        self,
        app: str,
        method: str,
        call,
        request,
        authorization: str | None,
        model_id: str | None = None,
        timeout_s: float | None = None,
    ):
        try:
            response = await call(
                request,
                metadata=self.metadata(app, authorization, model_id),
                timeout=timeout_s or self.timeout_s,
            )
        except grpc.RpcError as e:
            self.metrics.upstream.labels(
                app, method, e.code().name if e.code() else "UNKNOWN"
            ).inc()
            raise
        self.metrics.upstream.labels(app, method, "OK").inc()
        return response

    def stream(
        self,
        app: str,
        method: str,
        call,
        request,
        authorization: str | None,
        model_id: str | None = None,
        timeout_s: float | None = None,
    ):
        return call(
            request,
            metadata=self.metadata(app, authorization, model_id),
            timeout=timeout_s if timeout_s is not None else self.stream_timeout_s,
        )

    def count(self, app: str, method: str, error: grpc.RpcError | None = None) -> None:
        code = "OK" if error is None else (error.code().name if error.code() else "UNKNOWN")
        self.metrics.upstream.labels(app, method, code).inc()


# --- helpers -------------------------------------------------------------------------------


def _plain(obj: Any) -> Any:
    """Library records (dataclasses, pydantic models, dicts) -> JSON-able values."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _check_model_id(model_id: str | None) -> str | None:
    if model_id in (None, ""):
        return None
    return keys.check_id(model_id, "model_id")


def _check_rle(rle: S.Rle, what: str) -> dict[str, Any]:
    wire = rle.wire()
    try:
        rle_area(wire)  # validates size and that the runs cover exactly H*W pixels
    except InvalidInput as e:
        raise InvalidInput(f"{what}: {e.message}") from None
    return wire


def _rle_out(m: common_pb2.RleMask) -> dict[str, Any]:
    return {"size": [m.height, m.width], "counts": m.counts}


def _rle_pb(wire: dict[str, Any]) -> common_pb2.RleMask:
    return common_pb2.RleMask(height=wire["size"][0], width=wire["size"][1], counts=wire["counts"])


def _f(x: float) -> float:
    return float(f"{x:.6g}")  # float32 on the wire: drop the noise digits


def _job(job: training_pb2.Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "dataset_id": job.dataset_id,
        "method": job.method,
        "base_model": job.base_model,
        "state": common_pb2.JobState.Name(job.state),
        "step": job.step,
        "total_steps": job.total_steps,
        "best_val_iou": _f(job.best_val_iou),
        "initial_val_iou": _f(job.initial_val_iou),
        "model_id": job.model_id,
        "error": job.error,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "attempts": job.attempts,
    }


def _event(e: training_pb2.JobEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "job_id": e.job_id,
        "state": common_pb2.JobState.Name(e.state),
        "phase": e.phase,
        "step": e.step,
        "total_steps": e.total_steps,
        "loss": _f(e.loss),
        "val_iou": _f(e.val_iou),
        "best_val_iou": _f(e.best_val_iou),
        "eta_s": _f(e.eta_s),
        "message": e.message,
        "model_id": e.model_id,
        "time": e.time,
    }


def _vp_result(r: segmentation_pb2.VisualPromptResponse) -> dict[str, Any]:
    return {
        "index": r.index,
        "image_id": r.image_id,
        "mask_rle": _rle_out(r.mask),
        "score": _f(r.score),
        "points": [[_f(p.x), _f(p.y)] for p in r.points],
        "point_labels": [p.label for p in r.points],
    }


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def _image_media_type(data: bytes) -> str:
    for magic, media in _MAGIC:
        if data.startswith(magic):
            return media
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _png_response(data: bytes, filename: str | None = None) -> Response:
    headers = {"Content-Disposition": f'inline; filename="{filename}"'} if filename else None
    return Response(content=data, media_type="image/png", headers=headers)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    s: {"model": S.ErrorResponse, "description": d}
    for s, d in (
        (400, "Invalid input"),
        (401, "Missing or invalid API key"),
        (404, "Unknown id (or another tenant's)"),
        (413, "Request over a size limit"),
        (429, "Tenant quota exceeded"),
    )
}


# --- authentication (shared dependency; the Authenticator lives on app.state) ----------------

_bearer = HTTPBearer(
    auto_error=False, description="The tenant's API key: `Authorization: Bearer vpl_...`"
)


def _tenant_id(
    request: Request,
    _creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
) -> str:
    """The authenticated tenant id (never taken from request data); 401 otherwise."""
    return request.app.state.auth.authenticate(request.headers.get("authorization")).id


TenantId = Annotated[str, Depends(_tenant_id)]
AuthHeader = Annotated[str | None, Header(alias="authorization", include_in_schema=False)]


class _V1Routes:
    """Registers ``/v1`` routes directly on the app (full paths, so route templates in
    metrics and OpenAPI are the public ones), each with the common error responses."""

    def __init__(self, app: FastAPI):
        self.app = app

    def _add(self, method: str, path: str, **kwargs):
        kwargs["responses"] = {**ERROR_RESPONSES, **kwargs.get("responses", {})}
        return getattr(self.app, method)("/v1" + path, **kwargs)

    def get(self, path: str, **kwargs):
        return self._add("get", path, **kwargs)

    def post(self, path: str, **kwargs):
        return self._add("post", path, **kwargs)

    def put(self, path: str, **kwargs):
        return self._add("put", path, **kwargs)

    def delete(self, path: str, **kwargs):
        return self._add("delete", path, **kwargs)


# --- the app -------------------------------------------------------------------------------


def create_app(
    settings: Settings | None = None,
    store: ArtifactStore | None = None,
    grpc_channel: grpc.aio.Channel | Callable[[], grpc.aio.Channel] | None = None,
    *,
    rpc_timeout_s: float = 300.0,
    stream_timeout_s: float | None = 3600.0,
    health_timeout_s: float = 3.0,
    keepalive_s: float = 15.0,
) -> FastAPI:
    """Build the gateway.

    ``store`` defaults to ``open_store(settings)``. ``grpc_channel``: a ``grpc.aio`` channel
    (it must belong to the serving event loop; the caller closes it), or a zero-argument
    factory called by the lifespan on the serving loop (the app closes what it returns);
    default: a channel to ``settings.grpc_target``, opened and closed by the lifespan.
    """
    from vplab.datasets import DatasetStore
    from vplab.tenancy import Authenticator

    settings = settings or get_settings()
    store = store if store is not None else open_store(settings)
    auth = Authenticator(store, settings.api_key_pepper)
    datasets = DatasetStore(store, settings)
    metrics = GatewayMetrics()
    holder: dict[str, Upstream] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if grpc_channel is None:
            own, channel = (
                True,
                grpc.aio.insecure_channel(settings.grpc_target, options=GRPC_OPTIONS),
            )
        elif isinstance(grpc_channel, grpc.aio.Channel):
            own, channel = False, grpc_channel
        else:
            own, channel = True, grpc_channel()
        holder["up"] = Upstream(channel, metrics, rpc_timeout_s, stream_timeout_s)
        try:
            yield
        finally:
            holder.pop("up", None)
            if own:
                await channel.close()

    def upstream() -> Upstream:
        up = holder.get("up")
        if up is None:
            raise ApiError(503, "the gateway is not started")
        return up

    app = FastAPI(
        title="VP Lab",
        version="1.0",
        summary="Few-shot segmentation with SAM: visual prompting, refinement, fine-tuning, export.",
        description="Every `/v1` route needs `Authorization: Bearer <api key>`. Errors are "
        '`{"error": {"code": "...", "message": "..."}}`.',
        openapi_tags=TAGS,
        lifespan=lifespan,
    )
    app.state.settings, app.state.store, app.state.datasets, app.state.metrics = (
        settings,
        store,
        datasets,
        metrics,
    )
    app.state.auth = auth
    install_error_handlers(app)
    app.add_middleware(
        MetricsAndLimitsMiddleware, metrics=metrics, max_body=settings.max_image_bytes + 1024 * 1024
    )

    v1 = _V1Routes(app)

    # --- datasets and images ---------------------------------------------------------

    @v1.post(
        "/datasets",
        tags=["datasets"],
        summary="Create a dataset",
        status_code=201,
        response_model=S.DatasetOut,
    )
    def create_dataset(body: S.DatasetCreate, tenant: TenantId) -> dict[str, Any]:
        return _plain(datasets.create_dataset(tenant, body.name))

    @v1.get(
        "/datasets",
        tags=["datasets"],
        summary="List the tenant's datasets",
        response_model=S.DatasetList,
    )
    def list_datasets(tenant: TenantId) -> dict[str, Any]:
        return {"datasets": _plain(datasets.list_datasets(tenant))}

    @v1.get(
        "/datasets/{dataset_id}",
        tags=["datasets"],
        summary="Get a dataset",
        response_model=S.DatasetOut,
    )
    def get_dataset(dataset_id: str, tenant: TenantId) -> dict[str, Any]:
        return _plain(datasets.get_dataset(tenant, dataset_id))

    @v1.delete(
        "/datasets/{dataset_id}",
        tags=["datasets"],
        summary="Delete a dataset, its labels, and images no other dataset uses",
        status_code=204,
    )
    def delete_dataset(dataset_id: str, tenant: TenantId) -> Response:
        datasets.delete_dataset(tenant, dataset_id)
        return Response(status_code=204)

    @v1.post(
        "/datasets/{dataset_id}/images",
        tags=["datasets"],
        summary="Upload an image (multipart `file`)",
        status_code=201,
        response_model=S.ImageUploaded,
    )
    async def upload_image(
        dataset_id: str, tenant: TenantId, file: Annotated[UploadFile, File()]
    ) -> dict[str, Any]:
        data = await file.read(settings.max_image_bytes + 1)
        if len(data) > settings.max_image_bytes:
            raise PayloadTooLarge(f"image is over the limit of {settings.max_image_bytes} bytes")
        image_id = await run_in_threadpool(
            datasets.add_image, tenant, dataset_id, data, file.filename or None
        )
        return {"image_id": image_id}

    @v1.get(
        "/datasets/{dataset_id}/images",
        tags=["datasets"],
        summary="List a dataset's images",
        response_model=S.ImageList,
    )
    def list_images(dataset_id: str, tenant: TenantId) -> dict[str, Any]:
        return {"images": _plain(datasets.list_images(tenant, dataset_id))}

    @v1.delete(
        "/datasets/{dataset_id}/images/{image_id}",
        tags=["datasets"],
        summary="Remove an image from a dataset",
        status_code=204,
    )
    def remove_image(dataset_id: str, image_id: str, tenant: TenantId) -> Response:
        datasets.remove_image(tenant, dataset_id, image_id)
        return Response(status_code=204)

    @v1.get(
        "/images/{image_id}",
        tags=["datasets"],
        summary="Download an image's bytes",
        response_class=Response,
        responses={200: {"content": {"image/*": {}}}},
    )
    def get_image(image_id: str, tenant: TenantId) -> Response:
        data = datasets.get_image_bytes(tenant, image_id)
        return Response(content=data, media_type=_image_media_type(data))

    # --- labels --------------------------------------------------------------------------

    @v1.put(
        "/datasets/{dataset_id}/labels/{image_id}",
        tags=["labels"],
        summary="Upload a refined mask (new version)",
        response_model=S.LabelVersion,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "string", "format": "binary"}},
                            "required": ["file"],
                        }
                    },
                },
            }
        },
    )
    async def put_label(
        dataset_id: str, image_id: str, request: Request, tenant: TenantId
    ) -> dict[str, Any]:
        ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            form = await request.form(max_files=1, max_fields=4)
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise InvalidInput("multipart body needs a 'file' part with the PNG mask")
            data = await upload.read(settings.max_image_bytes + 1)
        elif ctype in ("image/png", "application/octet-stream", ""):
            data = await request.body()
        else:
            raise ApiError(415, f"send the mask as image/png or multipart/form-data, not {ctype!r}")
        if not data:
            raise InvalidInput("the request has no mask PNG")
        if len(data) > settings.max_image_bytes:
            raise PayloadTooLarge(f"mask is over the limit of {settings.max_image_bytes} bytes")
        version = await run_in_threadpool(datasets.put_label, tenant, dataset_id, image_id, data)
        return {"image_id": image_id, "version": int(version)}

    @v1.get(
        "/datasets/{dataset_id}/labels", tags=["labels"], summary="Latest label version per image"
    )
    def list_labels(dataset_id: str, tenant: TenantId) -> dict[str, int]:
        return {k: int(v) for k, v in dict(datasets.list_labels(tenant, dataset_id)).items()}

    @v1.get(
        "/datasets/{dataset_id}/labels/{image_id}",
        tags=["labels"],
        summary="Download a label PNG",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def get_label(
        dataset_id: str,
        image_id: str,
        tenant: TenantId,
        version: Annotated[int | None, Query(ge=1, description="default: the latest")] = None,
    ) -> Response:
        label = datasets.get_label(tenant, dataset_id, image_id, version)
        return _png_response(label.png)

    # --- segmentation ----------------------------------------------------------------------

    @v1.post(
        "/images/{image_id}/segment",
        tags=["segmentation"],
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
        image_id: str,
        body: S.SegmentRequest,
        tenant: TenantId,
        authorization: AuthHeader,
        format: Annotated[
            Literal["json", "png"], Query(description="png: the best mask as a PNG")
        ] = "json",
    ):
        keys.check_sha256(image_id, "image_id")
        model_id = _check_model_id(body.model_id)
        datasets.quotas.check_points(len(body.points))
        request = segmentation_pb2.SegmentPromptRequest(
            image_id=image_id,
            points=[
                common_pb2.Point(x=x, y=y, label=lab)
                for (x, y), lab in zip(body.points, body.labels)
            ],
            multimask_output=body.multimask,
            model_id=model_id or "",
        )
        if body.box is not None:
            request.box.CopyFrom(
                common_pb2.Box(x0=body.box[0], y0=body.box[1], x1=body.box[2], y1=body.box[3])
            )
        if body.mask_input_rle is not None:
            # Parsing an RLE is a Python loop over its counts: off the event loop.
            wire = await run_in_threadpool(_check_rle, body.mask_input_rle, "mask_input_rle")
            request.mask_input.CopyFrom(_rle_pb(wire))
        up = upstream()
        response = await up.unary(
            SEGMENTATION,
            "SegmentPrompt",
            up.segmentation.SegmentPrompt,
            request,
            authorization,
            model_id,
        )
        masks = [{"rle": _rle_out(m.mask), "score": _f(m.score)} for m in response.masks]
        if format == "png":
            if not masks:
                raise ApiError(502, "the service returned no mask")
            best = max(response.masks, key=lambda m: m.score)
            png = await run_in_threadpool(
                lambda: encode_binary_mask(decode_rle(_rle_out(best.mask)))
            )
            return _png_response(png, f"{image_id[:12]}-mask.png")
        return {"masks": masks, "height": response.height, "width": response.width}

    @v1.post(
        "/datasets/{dataset_id}/visual-prompt",
        tags=["segmentation"],
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
        dataset_id: str,
        body: S.VisualPromptRequest,
        request: Request,
        tenant: TenantId,
        authorization: AuthHeader,
    ):
        model_id = _check_model_id(body.model_id)
        for ref in body.references:
            keys.check_sha256(ref.image_id, "references.image_id")
        for t in body.targets or ():
            keys.check_sha256(t, "targets")
        if len(body.references) > settings.max_targets_per_call:
            raise PayloadTooLarge(
                f"too many references: {len(body.references)}, the limit is "
                f"{settings.max_targets_per_call} (max_targets_per_call)"
            )
        if body.targets is not None:
            datasets.quotas.check_targets(len(body.targets))
        refs = await run_in_threadpool(
            lambda: [
                (r.image_id, _check_rle(r.mask_rle, f"references[{i}].mask_rle"))
                for i, r in enumerate(body.references)
            ]
        )
        members = await run_in_threadpool(datasets.list_images, tenant, dataset_id)
        member_set = set(members)
        for image_id, _ in refs:
            if image_id not in member_set:
                raise NotFound(f"image {image_id} not found in dataset {dataset_id}")
        if body.targets is None:
            ref_ids = {i for i, _ in refs}
            targets = [i for i in members if i not in ref_ids]
        else:
            targets = list(body.targets)
            for t in targets:
                if t not in member_set:
                    raise NotFound(f"image {t} not found in dataset {dataset_id}")
        datasets.quotas.check_targets(len(targets))  # the default (whole dataset) too: pass batches
        if not targets:
            raise InvalidInput("no target images: the dataset has no images besides the references")
        rpc_request = segmentation_pb2.VisualPromptRequest(
            references=[segmentation_pb2.Reference(image_id=i, mask=_rle_pb(m)) for i, m in refs],
            target_image_ids=targets,
            model_id=model_id or "",
            matcher=body.matcher,
            seed=body.seed,
        )
        up = upstream()
        call = up.stream(
            SEGMENTATION,
            "VisualPrompt",
            up.segmentation.VisualPrompt,
            rpc_request,
            authorization,
            model_id,
        )
        if not wants_event_stream(request.headers.get("accept")):
            results = []
            try:
                async for r in call:
                    results.append(_vp_result(r))
            except grpc.RpcError as e:
                up.count(SEGMENTATION, "VisualPrompt", e)
                raise
            up.count(SEGMENTATION, "VisualPrompt")
            results.sort(key=lambda r: r["index"])
            return {"results": results}

        # SSE: wait for the first result (or error) so that errors keep their HTTP status.
        iterator = call.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            first = None
        except grpc.RpcError as e:
            up.count(SEGMENTATION, "VisualPrompt", e)
            raise

        async def events() -> AsyncIterator[bytes]:
            n = 0
            try:
                if first is not None:
                    n += 1
                    yield sse_event(_vp_result(first), event="result", event_id=n)

                    async def rest():
                        async for r in iterator:
                            yield r

                    async for r in with_keepalive(rest(), keepalive_s):
                        if r is None:
                            yield b": keep-alive\n\n"
                            continue
                        n += 1
                        yield sse_event(_vp_result(r), event="result", event_id=n)
                up.count(SEGMENTATION, "VisualPrompt")
                yield sse_event({"count": n, "total": len(targets)}, event="end")
            except grpc.RpcError as e:
                up.count(SEGMENTATION, "VisualPrompt", e)
                status, message = status_of_rpc_error(e)
                yield sse_event(
                    {
                        "error": {"code": CODES.get(status, "error"), "message": message},
                        "status": status,
                    },
                    event="error",
                )
            finally:
                call.cancel()

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    @v1.post(
        "/images/{image_id}/auto-segment",
        tags=["segmentation"],
        summary="Prompt-free segmentation with a PTSAM model",
        response_model=S.AutoSegmentResponse,
    )
    async def auto_segment(
        image_id: str, body: S.AutoSegmentRequest, tenant: TenantId, authorization: AuthHeader
    ) -> dict[str, Any]:
        keys.check_sha256(image_id, "image_id")
        model_id = keys.check_id(body.model_id, "model_id")
        up = upstream()
        r = await up.unary(
            SEGMENTATION,
            "AutoSegment",
            up.segmentation.AutoSegment,
            segmentation_pb2.AutoSegmentRequest(image_id=image_id, model_id=model_id),
            authorization,
            model_id,
        )
        return {"mask_rle": _rle_out(r.mask), "score": _f(r.score)}

    # --- training ------------------------------------------------------------------------

    @v1.post(
        "/trainings",
        tags=["training"],
        summary="Start a fine-tuning job",
        status_code=201,
        response_model=S.JobOut,
    )
    async def start_training(
        body: S.TrainingCreate, tenant: TenantId, authorization: AuthHeader
    ) -> dict[str, Any]:
        keys.check_id(body.dataset_id, "dataset_id")
        config_json = json.dumps(body.method_config) if body.method_config else ""
        up = upstream()
        r = await up.unary(
            TRAINING,
            "StartTraining",
            up.training.StartTraining,
            training_pb2.StartTrainingRequest(
                dataset_id=body.dataset_id,
                method=body.method,
                base_model=body.base_model,
                steps=body.steps,
                method_config_json=config_json,
                seed=body.seed,
                lr=body.lr or 0.0,
            ),
            authorization,
        )
        return _job(r.job)

    @v1.get(
        "/trainings",
        tags=["training"],
        summary="List the tenant's jobs, newest first",
        response_model=S.JobList,
    )
    async def list_trainings(
        tenant: TenantId,
        authorization: AuthHeader,
        limit: Annotated[int, Query(ge=0, le=1000, description="0 = the service default")] = 0,
        state: Annotated[
            Literal["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"] | None, Query()
        ] = None,
    ) -> dict[str, Any]:
        up = upstream()
        r = await up.unary(
            TRAINING,
            "ListJobs",
            up.training.ListJobs,
            training_pb2.ListJobsRequest(
                limit=limit, state=common_pb2.JobState.Value(state) if state else 0
            ),
            authorization,
        )
        return {"jobs": [_job(j) for j in r.jobs]}

    @v1.get("/trainings/{job_id}", tags=["training"], summary="Get a job", response_model=S.JobOut)
    async def get_training(
        job_id: str, tenant: TenantId, authorization: AuthHeader
    ) -> dict[str, Any]:
        keys.check_id(job_id, "job_id")
        up = upstream()
        r = await up.unary(
            TRAINING,
            "GetJob",
            up.training.GetJob,
            training_pb2.GetJobRequest(job_id=job_id),
            authorization,
        )
        return _job(r.job)

    @v1.get(
        "/trainings/{job_id}/events",
        tags=["training"],
        summary="Follow a job: server-sent events (`id: seq`, `event: progress|end`)",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def training_events(
        job_id: str,
        tenant: TenantId,
        authorization: AuthHeader,
        after_seq: Annotated[int, Query(ge=0, description="only events after this seq")] = 0,
        last_event_id: Annotated[str | None, Header(alias="last-event-id")] = None,
    ):
        keys.check_id(job_id, "job_id")
        if last_event_id:
            try:
                after_seq = max(0, int(last_event_id.strip()))
            except ValueError:
                raise InvalidInput(
                    f"Last-Event-ID must be an event seq (integer), got {last_event_id!r}"
                ) from None
        up = upstream()
        # Unknown / foreign jobs are a 404 before the stream starts.
        await up.unary(
            TRAINING,
            "GetJob",
            up.training.GetJob,
            training_pb2.GetJobRequest(job_id=job_id),
            authorization,
        )
        call = up.stream(
            TRAINING,
            "WatchJob",
            up.training.WatchJob,
            training_pb2.WatchJobRequest(job_id=job_id, after_seq=after_seq),
            authorization,
            timeout_s=None,
        )

        async def events() -> AsyncIterator[bytes]:
            try:
                async for e in with_keepalive(call, keepalive_s):
                    if e is None:
                        yield b": keep-alive\n\n"
                        continue
                    data = _event(e)
                    end = data["state"] in TERMINAL_STATES
                    yield sse_event(data, event="end" if end else "progress", event_id=e.seq)
                    if end:
                        break
                up.count(TRAINING, "WatchJob")
            except grpc.RpcError as err:
                up.count(TRAINING, "WatchJob", err)
                status, message = status_of_rpc_error(err)
                yield sse_event(
                    {
                        "error": {"code": CODES.get(status, "error"), "message": message},
                        "status": status,
                    },
                    event="error",
                )
            finally:
                call.cancel()

        return StreamingResponse(events(), media_type="text/event-stream", headers=SSE_HEADERS)

    @v1.delete(
        "/trainings/{job_id}", tags=["training"], summary="Cancel a job", response_model=S.JobOut
    )
    async def cancel_training(
        job_id: str, tenant: TenantId, authorization: AuthHeader
    ) -> dict[str, Any]:
        keys.check_id(job_id, "job_id")
        up = upstream()
        r = await up.unary(
            TRAINING,
            "CancelJob",
            up.training.CancelJob,
            training_pb2.CancelJobRequest(job_id=job_id),
            authorization,
        )
        return _job(r.job)

    # --- tuned models ----------------------------------------------------------------------

    @v1.get(
        "/models",
        tags=["models"],
        summary="List the tenant's tuned models",
        response_model=S.ModelList,
    )
    def list_models(tenant: TenantId) -> dict[str, Any]:
        from vplab import tuned

        out = []
        for model_id in tuned.list_tuned_models(store, tenant):
            try:
                out.append(
                    {
                        "model_id": model_id,
                        "config": tuned.read_tuned_config(store, tenant, model_id),
                    }
                )
            except NotFound:  # deleted meanwhile
                continue
        return {"models": out}

    @v1.get(
        "/models/{model_id}",
        tags=["models"],
        summary="Get a tuned model's config",
        response_model=S.ModelOut,
    )
    def get_model(model_id: str, tenant: TenantId) -> dict[str, Any]:
        from vplab import tuned

        return {"model_id": model_id, "config": tuned.read_tuned_config(store, tenant, model_id)}

    @v1.get(
        "/models/{model_id}/export",
        tags=["models"],
        summary="Download the adapter (zip: adapter.safetensors + config.json)",
        response_class=Response,
        responses={200: {"content": {"application/zip": {}}}},
    )
    def export_model(model_id: str, tenant: TenantId) -> Response:
        from vplab import tuned

        data = tuned.export_archive(store, tenant, model_id)
        return Response(
            content=data,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{model_id}.zip"'},
        )

    @v1.delete(
        "/models/{model_id}", tags=["models"], summary="Delete a tuned model", status_code=204
    )
    def delete_model(model_id: str, tenant: TenantId) -> Response:
        from vplab import tuned

        tuned.delete_tuned_model(store, tenant, model_id)
        return Response(status_code=204)

    def openapi() -> dict[str, Any]:
        # Validation errors are answered as 400 with the common error body, never 422.
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

    app.openapi = openapi  # type: ignore[method-assign]

    # --- ops -------------------------------------------------------------------------------

    async def probe_app(name: str) -> dict[str, Any]:
        """An unauthenticated call: UNAUTHENTICATED proves the app is there and answering."""
        up = holder.get("up")
        if up is None:
            return {"status": "down", "detail": "no channel"}
        stub_call = {
            FEATURES: up.features.Embed,
            SEGMENTATION: up.segmentation.AutoSegment,
            TRAINING: up.training.GetJob,
        }[name]
        request = {
            FEATURES: features_pb2.EmbedRequest(),
            SEGMENTATION: segmentation_pb2.AutoSegmentRequest(),
            TRAINING: training_pb2.GetJobRequest(),
        }[name]
        try:
            await stub_call(request, metadata=[("application", name)], timeout=health_timeout_s)
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                return {"status": "ok"}
            log.warning("health probe of %s: %s %s", name, code, e.details())
            if code == grpc.StatusCode.NOT_FOUND:
                reason = "application not deployed"
            elif code == grpc.StatusCode.UNAVAILABLE:
                reason = "unreachable"
            elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
                reason = "timeout"
            else:
                reason = "unexpected answer"
            return {"status": "down", "detail": f"{code.name if code else 'UNKNOWN'}: {reason}"}
        return {"status": "down", "detail": "answered an unauthenticated request"}

    def probe_store() -> dict[str, Any]:
        try:
            store.exists("system/healthz")
        except Exception as e:  # noqa: BLE001
            return {"status": "down", "detail": f"{type(e).__name__}"}
        return {"status": "ok"}

    @app.get("/healthz", tags=["ops"], summary="Health of the store and of each service")
    async def healthz() -> JSONResponse:
        names = [FEATURES, SEGMENTATION, TRAINING]
        try:
            store_state = await asyncio.wait_for(run_in_threadpool(probe_store), health_timeout_s)
        except TimeoutError:
            store_state = {"status": "down", "detail": "timeout"}
        app_states = await asyncio.gather(*[probe_app(n) for n in names])
        body = {"store": store_state, "apps": dict(zip(names, app_states))}
        ok = store_state["status"] == "ok" and all(s["status"] == "ok" for s in app_states)
        body["status"] = "ok" if ok else "degraded"
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
