"""Test harness for the gateway and the SDK: a deterministic fake of the three gRPC services,
a real uvicorn server in a thread, and two tenants.

The fake services authenticate like the real ones (the shared ``Authenticator`` on the
same store), record the metadata of every call, and answer deterministically. Special
model ids trigger error paths: ``m-unavailable`` (UNAVAILABLE), ``m-internal`` (INTERNAL),
``m-slow`` (no answer until released: DEADLINE_EXCEEDED), ``m-toolarge`` /
``m-quota`` (RESOURCE_EXHAUSTED with a 413 / 429 ``vplab-http-status`` trailer),
``m-exhausted`` (RESOURCE_EXHAUSTED, no trailer), ``m-conflict`` (FAILED_PRECONDITION),
``m-midfail`` (visual prompt: one result, then INTERNAL).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from PIL import Image

from vplab.datajobs import data_jobs, run_data_job, submit_embeddings
from vplab.datasets import DatasetStore
from vplab.errors import InvalidInput, NotFound, VPLabError
from vplab.masks import decode_rle, encode_rle
from vplab.method_names import METHOD_NAMES
from vplab.predictions import (
    evaluations,
    prediction_runs,
    submit_evaluation,
    submit_prediction,
)
from vplab.rpc import convert
from vplab.rpc.v1 import (
    common_pb2,
    datajobs_pb2,
    datajobs_pb2_grpc,
    features_pb2,
    features_pb2_grpc,
    predictions_pb2,
    predictions_pb2_grpc,
    segmentation_pb2,
    segmentation_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from vplab.serving.background import BackgroundServer as UvicornThread
from vplab.serving.grpc_glue import HTTP_STATUS_TRAILER
from vplab.settings import Settings
from vplab.storage import keys
from vplab.tenancy import Authenticator, create_tenant

PEPPER = "test-pepper-gateway"
SPECIAL = {
    "m-unavailable": (grpc.StatusCode.UNAVAILABLE, "connection refused to 10.0.0.7:9000", None),
    "m-internal": (grpc.StatusCode.INTERNAL, "Traceback: secret internals", None),
    # What Serve's proxy answered when the replica's node was killed (test_multinode.py).
    "m-replica-lost": (
        grpc.StatusCode.INTERNAL,
        "The actor 5d6e338ee61186b891299cf101000000 is unavailable: The actor is temporarily "
        "unavailable: RpcError: RPC error: Socket closed rpc_code: 14. The task may or may "
        "not have been executed on the actor.",
        None,
    ),
    "m-toolarge": (grpc.StatusCode.RESOURCE_EXHAUSTED, "image is too large for this model", 413),
    "m-quota": (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests for this tenant", 429),
    "m-exhausted": (grpc.StatusCode.RESOURCE_EXHAUSTED, "exhausted", None),
    "m-shed": (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "Request dropped due to backpressure (num_queued_requests=4, max_queued_requests=4).",
        None,
    ),
    "m-conflict": (grpc.StatusCode.FAILED_PRECONDITION, "model is being deleted", 409),
}


def _fail(context, code: grpc.StatusCode, message: str, http_status: int | None = None):
    if http_status is not None:
        context.set_trailing_metadata([(HTTP_STATUS_TRAILER, str(http_status))])
    context.abort(code, message)


class FakePredictions(predictions_pb2_grpc.PredictionsServicer):
    """Prediction runs and evaluations: the library's real rules on the fake's store (a
    run is recorded, never executed: no worker takes it). Mixed into ``FakeServices``."""

    store: Any
    settings: Settings

    def _call(self, context, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except VPLabError as e:
            self._lib_error(context, e)  # type: ignore[attr-defined]

    def _runs(self):
        datasets = DatasetStore(self.store, self.settings)
        return datasets, prediction_runs(self.store), evaluations(self.store)

    def StartPrediction(self, request, context):
        tenant = self._enter("StartPrediction", "training", context)
        datasets, runs, _ = self._runs()
        run = self._call(
            context,
            submit_prediction,
            datasets,
            runs,
            tenant,
            request.dataset_id,
            convert.prediction_references_from_pb(request.references),
            request.model_id,
            list(request.target_image_ids),
            request.matcher,
            request.seed,
        )
        return predictions_pb2.StartPredictionResponse(run=convert.run_to_pb(run))

    def GetPrediction(self, request, context):
        tenant = self._enter("GetPrediction", "training", context)
        run = self._call(context, self._runs()[1].get, tenant, request.run_id)
        return predictions_pb2.GetPredictionResponse(run=convert.run_to_pb(run))

    def CancelPrediction(self, request, context):
        tenant = self._enter("CancelPrediction", "training", context)
        run = self._call(context, self._runs()[1].request_cancel, tenant, request.run_id)
        return predictions_pb2.CancelPredictionResponse(run=convert.run_to_pb(run))

    def WatchPrediction(self, request, context):
        tenant = self._enter("WatchPrediction", "training", context)
        runs = self._runs()[1]
        self._call(context, runs.get, tenant, request.run_id)
        for event in runs.events(tenant, request.run_id, request.after_seq):  # no live events
            yield convert.prediction_event_to_pb(event)

    def ListPredictions(self, request, context):
        tenant = self._enter("ListPredictions", "training", context)
        datasets, runs, _ = self._runs()
        self._call(context, datasets.get_dataset, tenant, request.dataset_id)
        found = runs.list(tenant, limit=request.limit or 100, dataset_id=request.dataset_id)
        return predictions_pb2.ListPredictionsResponse(runs=[convert.run_to_pb(r) for r in found])

    def StartEvaluation(self, request, context):
        tenant = self._enter("StartEvaluation", "training", context)
        datasets, _, evals = self._runs()
        evaluation = self._call(
            context,
            submit_evaluation,
            datasets,
            evals,
            tenant,
            request.dataset_id,
            convert.prediction_references_from_pb(request.references),
            request.model_id,
            list(request.image_ids),
            request.matcher,
            request.seed,
        )
        return predictions_pb2.EvaluationResponse(evaluation=convert.evaluation_to_pb(evaluation))

    def GetEvaluation(self, request, context):
        tenant = self._enter("GetEvaluation", "training", context)
        found = self._call(context, self._runs()[2].get, tenant, request.evaluation_id)
        return predictions_pb2.EvaluationResponse(evaluation=convert.evaluation_to_pb(found))

    def ListEvaluations(self, request, context):
        tenant = self._enter("ListEvaluations", "training", context)
        datasets, _, evals = self._runs()
        self._call(context, datasets.get_dataset, tenant, request.dataset_id)
        found = evals.list(tenant, limit=request.limit or 100, dataset_id=request.dataset_id)
        return predictions_pb2.ListEvaluationsResponse(
            evaluations=[convert.evaluation_to_pb(e) for e in found]
        )


class FakeDataJobs(datajobs_pb2_grpc.DataJobsServicer):
    """Data jobs: the library's real rules and worker on the fake's store. An import runs
    to its end inside StartImport (its worker needs nothing but the store); a precompute
    is recorded, never executed (it needs the encoders). Mixed into ``FakeServices``."""

    store: Any
    settings: Settings

    def _jobs(self):
        return DatasetStore(self.store, self.settings), data_jobs(self.store)

    def StartImport(self, request, context):
        tenant = self._enter("StartImport", "training", context)
        datasets, jobs = self._jobs()
        job = self._call(context, jobs.get, tenant, request.job_id)
        run_data_job(self.store, datasets, tenant, job.job_id, jobs=jobs)
        return datajobs_pb2.DataJobResponse(job=convert.data_job_to_pb(job))  # as queued

    def StartEmbeddings(self, request, context):
        tenant = self._enter("StartEmbeddings", "training", context)
        datasets, jobs = self._jobs()
        job = self._call(
            context,
            submit_embeddings,
            datasets,
            jobs,
            tenant,
            request.dataset_id,
            list(request.encoders),
        )
        return datajobs_pb2.DataJobResponse(job=convert.data_job_to_pb(job))

    def GetDataJob(self, request, context):
        tenant = self._enter("GetDataJob", "training", context)
        job = self._call(context, self._jobs()[1].get, tenant, request.job_id)
        return datajobs_pb2.DataJobResponse(job=convert.data_job_to_pb(job))

    def CancelDataJob(self, request, context):
        tenant = self._enter("CancelDataJob", "training", context)
        job = self._call(context, self._jobs()[1].request_cancel, tenant, request.job_id)
        return datajobs_pb2.DataJobResponse(job=convert.data_job_to_pb(job))

    def WatchDataJob(self, request, context):
        tenant = self._enter("WatchDataJob", "training", context)
        jobs = self._jobs()[1]
        self._call(context, jobs.get, tenant, request.job_id)
        for event in jobs.events(tenant, request.job_id, request.after_seq):  # no live events
            yield convert.data_event_to_pb(event)

    def ListDataJobs(self, request, context):
        tenant = self._enter("ListDataJobs", "training", context)
        datasets, jobs = self._jobs()
        self._call(context, datasets.get_dataset, tenant, request.dataset_id)
        found = jobs.list(tenant, limit=request.limit or 100, dataset_id=request.dataset_id)
        return datajobs_pb2.ListDataJobsResponse(jobs=[convert.data_job_to_pb(j) for j in found])


class FakeServices(
    features_pb2_grpc.FeaturesServicer,
    segmentation_pb2_grpc.SegmentationServicer,
    training_pb2_grpc.TrainingServicer,
    FakePredictions,
    FakeDataJobs,
):
    def __init__(self, store, settings: Settings):
        self.store, self.settings = store, settings
        self.auth = Authenticator(store, PEPPER)
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.deployed = {"features", "segmentation", "training"}
        self.release = threading.Event()
        self.jobs: dict[tuple[str, str], training_pb2.Job] = {}
        self.events: dict[tuple[str, str], list[training_pb2.JobEvent]] = {}
        self.order: dict[tuple[str, str], int] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # --- plumbing --------------------------------------------------------------------------

    def _enter(self, method: str, app: str, context) -> str:
        md = {k: v for k, v in context.invocation_metadata()}
        self.calls.append((method, md))
        application = md.get("application")
        if application is None:
            _fail(context, grpc.StatusCode.NOT_FOUND, "Application metadata not set")
        if application not in self.deployed or application != app:
            _fail(context, grpc.StatusCode.NOT_FOUND, f"Application '{application}' not found")
        try:
            return self.auth.authenticate_metadata(context.invocation_metadata()).id
        except VPLabError as e:
            _fail(context, grpc.StatusCode.UNAUTHENTICATED, e.message)

    def _lib_error(self, context, e: VPLabError):
        _fail(context, getattr(grpc.StatusCode, e.grpc_code), e.message, e.http_status)

    def _model(self, tenant: str, model_id: str, context, required: bool = False) -> None:
        md = dict(context.invocation_metadata())
        if not model_id:
            if required:
                raise InvalidInput("model_id is required")
            if "multiplexed_model_id" in md:
                raise InvalidInput("multiplexed_model_id sent without a model_id")
            return
        if md.get("multiplexed_model_id") != model_id:
            raise InvalidInput("multiplexed_model_id metadata does not match model_id")
        if model_id in SPECIAL:
            code, message, http = SPECIAL[model_id]
            _fail(context, code, message, http)
        if model_id == "m-slow":
            self.release.wait(30)
            raise InvalidInput("released")
        if model_id == "m-midfail":
            return
        if not self.store.exists(keys.model_config(tenant, keys.check_id(model_id, "model_id"))):
            raise NotFound(f"model {model_id} not found")

    def _image_size(self, tenant: str, image_id: str) -> tuple[int, int]:
        try:
            data = self.store.get_bytes(keys.image(tenant, keys.check_sha256(image_id, "image_id")))
        except NotFound:
            raise NotFound(f"image {image_id} not found") from None
        w, h = Image.open(io.BytesIO(data)).size
        return h, w

    @staticmethod
    def _rle(mask: np.ndarray) -> common_pb2.RleMask:
        r = encode_rle(mask)
        return common_pb2.RleMask(height=r["size"][0], width=r["size"][1], counts=r["counts"])

    # --- features ------------------------------------------------------------------------

    def Embed(self, request, context):
        self._enter("Embed", "features", context)
        return features_pb2.EmbedResponse(image_id=request.image_id)

    # --- segmentation --------------------------------------------------------------------

    def SegmentPrompt(self, request, context):
        tenant = self._enter("SegmentPrompt", "segmentation", context)
        try:
            self._model(tenant, request.model_id, context)
            h, w = self._image_size(tenant, request.image_id)
            mask = np.zeros((h, w), bool)
            for p in request.points:
                if not (0 <= p.x < w and 0 <= p.y < h):
                    raise InvalidInput(f"point ({p.x}, {p.y}) is outside the {w}x{h} image")
                if p.label == 1:
                    x, y = int(p.x), int(p.y)
                    mask[max(0, y - 2) : y + 3, max(0, x - 2) : x + 3] = True
            if request.HasField("box"):
                b = request.box
                mask[int(b.y0) : int(b.y1) + 1, int(b.x0) : int(b.x1) + 1] = True
            if request.HasField("mask_input"):
                m = request.mask_input
                mask |= decode_rle({"size": [m.height, m.width], "counts": m.counts}, shape=(h, w))
        except VPLabError as e:
            self._lib_error(context, e)
        results = [common_pb2.MaskResult(mask=self._rle(mask), score=0.9)]
        if request.multimask_output:
            full = np.ones((h, w), bool)
            empty = np.zeros((h, w), bool)
            results += [
                common_pb2.MaskResult(mask=self._rle(full), score=0.8),
                common_pb2.MaskResult(mask=self._rle(empty), score=0.7),
            ]
        return segmentation_pb2.SegmentPromptResponse(masks=results, height=h, width=w)

    def VisualPrompt(self, request, context):
        tenant = self._enter("VisualPrompt", "segmentation", context)
        try:
            self._model(tenant, request.model_id, context)
            if not request.references:
                raise InvalidInput("at least one reference")
            for ref in request.references:
                size = self._image_size(tenant, ref.image_id)
                decode_rle(
                    {"size": [ref.mask.height, ref.mask.width], "counts": ref.mask.counts},
                    shape=size,
                )
            sizes = [self._image_size(tenant, t) for t in request.target_image_ids]
        except VPLabError as e:
            self._lib_error(context, e)
        order = list(reversed(range(len(sizes))))  # out of order on purpose: clients sort by index
        for n, i in enumerate(order):
            if request.model_id == "m-midfail" and n == 1:
                _fail(context, grpc.StatusCode.INTERNAL, "worker died")
            h, w = sizes[i]
            mask = np.zeros((h, w), bool)
            mask[: h // 2, : w // 2] = True
            yield segmentation_pb2.VisualPromptResponse(
                index=i,
                image_id=request.target_image_ids[i],
                mask=self._rle(mask),
                score=0.5 + 0.01 * i,
                points=[
                    common_pb2.Point(x=1.5, y=2.5, label=1),
                    common_pb2.Point(x=0, y=0, label=0),
                ],
            )

    def AutoSegment(self, request, context):
        tenant = self._enter("AutoSegment", "segmentation", context)
        try:
            self._model(tenant, request.model_id, context, required=True)
            h, w = self._image_size(tenant, request.image_id)
        except VPLabError as e:
            self._lib_error(context, e)
        return segmentation_pb2.AutoSegmentResponse(
            mask=self._rle(np.ones((h, w), bool)), score=0.77
        )

    # --- training ------------------------------------------------------------------------

    def _get(self, tenant: str, job_id: str) -> training_pb2.Job:
        job = self.jobs.get((tenant, job_id))
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job

    def StartTraining(self, request, context):
        tenant = self._enter("StartTraining", "training", context)
        try:
            if not self.store.exists(
                keys.dataset(tenant, keys.check_id(request.dataset_id, "dataset_id"))
            ):
                raise NotFound(f"dataset {request.dataset_id} not found")
            if request.method not in METHOD_NAMES:
                raise InvalidInput(f"unknown method {request.method!r}")
            config = json.loads(request.method_config_json) if request.method_config_json else {}
            if not isinstance(config, dict):
                raise InvalidInput("method config must be an object")
            with self._lock:
                active = sum(
                    1
                    for (t, _), j in self.jobs.items()
                    if t == tenant and j.state in (common_pb2.QUEUED, common_pb2.RUNNING)
                )
                if active >= self.settings.quota_concurrent_jobs:
                    _fail(
                        context,
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"concurrent job quota exceeded ({active} active)",
                        429,
                    )
                n = next(self._ids)
                job_id = f"j-{n:012x}"
                job = training_pb2.Job(
                    job_id=job_id,
                    dataset_id=request.dataset_id,
                    method=request.method,
                    base_model=request.base_model or "vit_b",
                    state=common_pb2.QUEUED,
                    total_steps=request.steps or 100,
                    recipe=request.recipe or "vplab",
                    val_on_train=True,  # the fake datasets have fewer than 10 labels
                    created_at=f"2026-01-01T00:00:{n:02d}Z",
                    updated_at=f"2026-01-01T00:00:{n:02d}Z",
                    attempts=0,
                )
                self.jobs[(tenant, job_id)] = job
                self.order[(tenant, job_id)] = n
                total = job.total_steps
                self.events[(tenant, job_id)] = [
                    training_pb2.JobEvent(
                        seq=1, job_id=job_id, state=common_pb2.QUEUED, phase="queued"
                    ),
                    training_pb2.JobEvent(
                        seq=2,
                        job_id=job_id,
                        state=common_pb2.RUNNING,
                        phase="train",
                        step=1,
                        total_steps=total,
                        loss=0.5,
                    ),
                    training_pb2.JobEvent(
                        seq=3,
                        job_id=job_id,
                        state=common_pb2.RUNNING,
                        phase="validate",
                        step=2,
                        total_steps=total,
                        val_iou=0.625,
                        best_val_iou=0.625,
                    ),
                    training_pb2.JobEvent(
                        seq=4,
                        job_id=job_id,
                        state=common_pb2.SUCCEEDED,
                        phase="done",
                        step=total,
                        total_steps=total,
                        best_val_iou=0.625,
                        model_id="m-" + job_id[2:],
                    ),
                ]
        except VPLabError as e:
            self._lib_error(context, e)
        return training_pb2.StartTrainingResponse(job=job)

    def GetJob(self, request, context):
        tenant = self._enter("GetJob", "training", context)
        try:
            return training_pb2.GetJobResponse(job=self._get(tenant, request.job_id))
        except VPLabError as e:
            self._lib_error(context, e)

    def WatchJob(self, request, context):
        tenant = self._enter("WatchJob", "training", context)
        try:
            job = self._get(tenant, request.job_id)
        except VPLabError as e:
            self._lib_error(context, e)
        if job.state == common_pb2.CANCELLED:
            events = [e for e in self.events[(tenant, job.job_id)][:1]] + [
                training_pb2.JobEvent(
                    seq=2, job_id=job.job_id, state=common_pb2.CANCELLED, phase="end"
                )
            ]
        else:
            events = self.events[(tenant, job.job_id)]
        for e in events:
            if e.seq <= request.after_seq:
                continue
            if job.base_model == "slow-fake" and e.seq == 2:  # a pause between events
                time.sleep(1.0)
            if e.state == common_pb2.SUCCEEDED:
                job.state, job.model_id, job.step = common_pb2.SUCCEEDED, e.model_id, e.step
            yield e

    def CancelJob(self, request, context):
        tenant = self._enter("CancelJob", "training", context)
        try:
            job = self._get(tenant, request.job_id)
            if job.state in (common_pb2.SUCCEEDED, common_pb2.FAILED, common_pb2.CANCELLED):
                _fail(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"job {job.job_id} already ended ({common_pb2.JobState.Name(job.state)})",
                    409,
                )
            job.state = common_pb2.CANCELLED
        except VPLabError as e:
            self._lib_error(context, e)
        return training_pb2.CancelJobResponse(job=job)

    def ListJobs(self, request, context):
        tenant = self._enter("ListJobs", "training", context)
        jobs = sorted(
            ((self.order[k], j) for k, j in self.jobs.items() if k[0] == tenant),
            key=lambda x: -x[0],
        )
        out = [j for _, j in jobs if not request.state or j.state == request.state]
        return training_pb2.ListJobsResponse(jobs=out[: request.limit or 100])


def start_grpc(fake: FakeServices) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    features_pb2_grpc.add_FeaturesServicer_to_server(fake, server)
    segmentation_pb2_grpc.add_SegmentationServicer_to_server(fake, server)
    training_pb2_grpc.add_TrainingServicer_to_server(fake, server)
    predictions_pb2_grpc.add_PredictionsServicer_to_server(fake, server)
    datajobs_pb2_grpc.add_DataJobsServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@dataclass
class Stack:
    url: str
    store: Any
    settings: Settings
    fake: FakeServices
    app: Any
    keys: dict[str, str] = field(default_factory=dict)  # tenant id -> API key

    def headers(self, tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[tenant]}"}

    def calls(self, method: str) -> list[dict[str, str]]:
        return [md for m, md in self.fake.calls if m == method]


@contextlib.contextmanager
def running_stack(
    store, tmp_path, grpc_target: str | None = None, app_kwargs: dict | None = None, **overrides
):
    """Fake services + gateway (real uvicorn) on ``store``; tenants "alpha" and "beta"."""
    from services.gateway.main import create_app

    base = dict(data_dir=tmp_path / "data", api_key_pepper=PEPPER, s3_endpoint=None)
    settings = Settings(**{**base, **overrides})
    fake = FakeServices(store, settings)
    grpc_server, port = start_grpc(fake)
    settings = settings.model_copy(update={"grpc_target": grpc_target or f"127.0.0.1:{port}"})
    fake.settings = settings
    tenants = {}
    for name in ("alpha", "beta"):
        tenant, api_key = create_tenant(store, name, PEPPER)
        tenants[tenant.id] = api_key
    kwargs = dict(rpc_timeout_s=2.0, health_timeout_s=1.0, keepalive_s=0.2, **(app_kwargs or {}))
    if callable(kwargs.get("grpc_channel")):
        factory = kwargs["grpc_channel"]
        kwargs["grpc_channel"] = lambda: factory(settings.grpc_target)
    app = create_app(settings, store=store, **kwargs)
    server = UvicornThread(app).start()
    try:
        yield Stack(
            url=server.url, store=store, settings=settings, fake=fake, app=app, keys=tenants
        )
    finally:
        fake.release.set()
        server.stop()
        grpc_server.stop(0)


# --- test data ---------------------------------------------------------------------------


def png_bytes(h: int = 24, w: int = 32, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def mask_png(mask: np.ndarray) -> bytes:
    from vplab.masks import encode_binary_mask

    return encode_binary_mask(mask)


def write_model(store, tenant: str, model_id: str, config: dict | None = None) -> None:
    store.put_bytes(keys.model_adapter(tenant, model_id), b"fake-safetensors-bytes")
    store.put_json(
        keys.model_config(tenant, model_id),
        config or {"method": "epeft", "base": {"name": "vit_b"}},
    )
