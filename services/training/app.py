"""Ray Serve app ``training``: the lab's durable jobs as Ray tasks that survive their
worker's death - training jobs (``service Training``), prediction runs (``service
Predictions``) and data jobs (``service DataJobs``: imports, embedding precomputes).

A job runs as a Ray task with ``max_retries``: if its worker process dies, Ray runs it
again and ``vplab.jobs.run_job`` continues from the job's latest checkpoint,
``vplab.predictions.run_prediction`` with the targets that have no result yet,
``vplab.datajobs.run_data_job`` from the start (it is idempotent). On start
the deployment re-launches jobs and runs left unfinished by a previous replica.
"""

from __future__ import annotations

import asyncio

import ray
from ray import serve

from services.common import Replica
from vplab.datajobs import data_jobs, run_data_job, submit_embeddings
from vplab.errors import InvalidInput
from vplab.jobs import QUEUED, JobStore, run_job, submit_job
from vplab.predictions import (
    evaluations,
    prediction_runs,
    run_prediction,
    run_store,
    submit_evaluation,
    submit_prediction,
)
from vplab.rpc import convert
from vplab.rpc.v1 import datajobs_pb2 as dpb
from vplab.rpc.v1 import predictions_pb2 as ppb
from vplab.rpc.v1 import training_pb2 as pb
from vplab.serving.apps import app_role, deployment_options, role_resources
from vplab.serving.grpc_glue import ServiceMetrics, streaming, tenant_of, unary
from vplab.settings import get_settings


def _run_job_task(settings, tenant: str, job_id: str) -> str:
    return run_job(settings, tenant, job_id)


def _run_prediction_task(settings, tenant: str, run_id: str, folder: str) -> str:
    """A run's worker: it only coordinates; each target is a call to the segmentation app,
    which Serve spreads over its replicas (a replica that dies fails only its calls)."""
    from vplab.datasets import DatasetStore
    from vplab.storage import open_store

    handle = serve.get_deployment_handle("SegmentationDeployment", app_name=convert.SEGMENTATION)
    timeout_s = settings.prediction_target_timeout_s

    def predict(run, image_id: str) -> dict:
        return handle.predict_target.remote(tenant, run, image_id).result(timeout_s=timeout_s)

    store = open_store(settings)
    return run_prediction(
        store,
        DatasetStore(store, settings),
        tenant,
        run_id,
        predict,
        concurrency=settings.prediction_concurrency,
        runs=run_store(store, folder),  # an evaluation: a run in its folder, scored at the end
    )


def _run_data_job_task(settings, tenant: str, job_id: str) -> str:
    """A data job's worker: an import works here; a precompute only coordinates, each
    batch a call to the features app."""
    from vplab.datasets import DatasetStore
    from vplab.storage import open_store

    handle = serve.get_deployment_handle("FeaturesDeployment", app_name=convert.FEATURES)
    timeout_s = settings.prediction_target_timeout_s

    def embed(tenant: str, image_ids: list[str], encoder: str) -> list:
        return handle.embed_images.remote(tenant, image_ids, encoder).result(timeout_s=timeout_s)

    store = open_store(settings)
    return run_data_job(store, DatasetStore(store, settings), tenant, job_id, embed)


@serve.deployment(name="TrainingDeployment", **deployment_options(get_settings(), "training"))
class TrainingDeployment:
    def __init__(self):
        self.replica = Replica.from_env()
        s = self.replica.settings
        self.jobs = JobStore(self.replica.store)
        self.metrics = ServiceMetrics("training")
        from ray.serve import metrics

        self.job_states = metrics.Counter(
            "vplab_jobs", description="training jobs by state transition", tag_keys=("state",)
        )
        self._task = ray.remote(
            num_cpus=1,
            num_gpus=s.train_num_gpus,
            max_retries=s.train_max_retries,
            resources=role_resources(app_role(convert.TRAINING), s.ray_pin_roles),
        )(_run_job_task)
        # A run's worker coordinates only (the segmentation replicas compute): no CPU.
        self._prediction_task = ray.remote(num_cpus=0, max_retries=s.train_max_retries)(
            _run_prediction_task
        )
        # Decoding and writing an import's images is light next to training: no CPU reserved,
        # so a busy cluster does not hold a user's upload back.
        self._data_task = ray.remote(num_cpus=0, max_retries=s.train_max_retries)(
            _run_data_job_task
        )
        self.runs = prediction_runs(self.replica.store)
        self.evaluations = evaluations(self.replica.store)
        self.data_jobs = data_jobs(self.replica.store)
        self._running: dict[str, ray.ObjectRef] = {}
        for tenant, job_id in self.jobs.active():  # left unfinished by a previous replica
            self._launch(tenant, job_id)
        for runs in (self.runs, self.evaluations):
            for tenant, run_id in runs.active():
                self._launch_run(tenant, run_id, runs.folder)
        for tenant, job_id in self.data_jobs.active():
            self._launch_data_job(tenant, job_id)

    def _launch(self, tenant: str, job_id: str) -> None:
        self._running[job_id] = self._task.remote(self.replica.settings, tenant, job_id)

    def _launch_run(self, tenant: str, run_id: str, folder: str) -> None:
        self._running[run_id] = self._prediction_task.remote(
            self.replica.settings, tenant, run_id, folder
        )

    def _launch_data_job(self, tenant: str, job_id: str) -> None:
        if job_id not in self._running:  # StartImport twice launches one worker
            self._running[job_id] = self._data_task.remote(self.replica.settings, tenant, job_id)

    async def StartTraining(
        self, request: pb.StartTrainingRequest, grpc_context
    ) -> pb.StartTrainingResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            job = await asyncio.to_thread(
                submit_job,
                self.replica.datasets,
                self.jobs,
                tenant,
                request.dataset_id,
                method=request.method,
                base_model=request.base_model,
                steps=request.steps,
                method_config=convert.method_config_from_json(request.method_config_json),
                seed=request.seed,
                lr=request.lr or None,
                recipe=request.recipe,
            )
            self._launch(tenant, job.job_id)
            self.job_states.inc(tags={"state": "QUEUED"})
            return pb.StartTrainingResponse(job=convert.job_to_pb(job))

        return await unary(
            grpc_context, self.metrics, "StartTraining", pb.StartTrainingResponse(), handle
        )

    async def GetJob(self, request: pb.GetJobRequest, grpc_context) -> pb.GetJobResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            return pb.GetJobResponse(
                job=convert.job_to_pb(
                    await asyncio.to_thread(self.jobs.get, tenant, request.job_id)
                )
            )

        return await unary(grpc_context, self.metrics, "GetJob", pb.GetJobResponse(), handle)

    async def WatchJob(self, request: pb.WatchJobRequest, grpc_context):
        async def events():
            tenant = tenant_of(self.replica.auth, grpc_context)
            watch = self.jobs.watch(tenant, request.job_id, request.after_seq)
            while True:
                event = await asyncio.to_thread(next, watch, None)
                if event is None:
                    return
                yield convert.event_to_pb(event)

        async for item in streaming(grpc_context, self.metrics, "WatchJob", events):
            yield item

    async def CancelJob(self, request: pb.CancelJobRequest, grpc_context) -> pb.CancelJobResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            job = await asyncio.to_thread(self.jobs.request_cancel, tenant, request.job_id)
            self.job_states.inc(tags={"state": "CANCEL_REQUESTED"})
            return pb.CancelJobResponse(job=convert.job_to_pb(job))

        return await unary(grpc_context, self.metrics, "CancelJob", pb.CancelJobResponse(), handle)

    async def ListJobs(self, request: pb.ListJobsRequest, grpc_context) -> pb.ListJobsResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            state = convert.job_state_from_pb(request.state)
            jobs = await asyncio.to_thread(self.jobs.list, tenant, state, request.limit or 100)
            return pb.ListJobsResponse(jobs=[convert.job_to_pb(j) for j in jobs])

        return await unary(grpc_context, self.metrics, "ListJobs", pb.ListJobsResponse(), handle)

    # --- service Predictions ---------------------------------------------------------------

    async def StartPrediction(
        self, request: ppb.StartPredictionRequest, grpc_context
    ) -> ppb.StartPredictionResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            run = await asyncio.to_thread(
                submit_prediction,
                self.replica.datasets,
                self.runs,
                tenant,
                request.dataset_id,
                convert.prediction_references_from_pb(request.references),
                model_id=request.model_id,
                targets=list(request.target_image_ids),
                matcher=request.matcher,
                seed=request.seed,
            )
            self._launch_run(tenant, run.run_id, self.runs.folder)
            self.job_states.inc(tags={"state": "QUEUED"})
            return ppb.StartPredictionResponse(run=convert.run_to_pb(run))

        return await unary(
            grpc_context, self.metrics, "StartPrediction", ppb.StartPredictionResponse(), handle
        )

    async def GetPrediction(
        self, request: ppb.GetPredictionRequest, grpc_context
    ) -> ppb.GetPredictionResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            run = await asyncio.to_thread(self.runs.get, tenant, request.run_id)
            return ppb.GetPredictionResponse(run=convert.run_to_pb(run))

        return await unary(
            grpc_context, self.metrics, "GetPrediction", ppb.GetPredictionResponse(), handle
        )

    async def WatchPrediction(self, request: ppb.WatchPredictionRequest, grpc_context):
        async def events():
            tenant = tenant_of(self.replica.auth, grpc_context)
            watch = self.runs.watch(tenant, request.run_id, request.after_seq)
            while True:
                event = await asyncio.to_thread(next, watch, None)
                if event is None:
                    return
                yield convert.prediction_event_to_pb(event)

        async for item in streaming(grpc_context, self.metrics, "WatchPrediction", events):
            yield item

    async def CancelPrediction(
        self, request: ppb.CancelPredictionRequest, grpc_context
    ) -> ppb.CancelPredictionResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            run = await asyncio.to_thread(self.runs.request_cancel, tenant, request.run_id)
            self.job_states.inc(tags={"state": "CANCEL_REQUESTED"})
            return ppb.CancelPredictionResponse(run=convert.run_to_pb(run))

        return await unary(
            grpc_context, self.metrics, "CancelPrediction", ppb.CancelPredictionResponse(), handle
        )

    async def ListPredictions(
        self, request: ppb.ListPredictionsRequest, grpc_context
    ) -> ppb.ListPredictionsResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)

            def runs():
                self.replica.datasets.get_dataset(tenant, request.dataset_id)  # 404s
                return self.runs.list(
                    tenant, limit=request.limit or 100, dataset_id=request.dataset_id
                )

            found = await asyncio.to_thread(runs)
            return ppb.ListPredictionsResponse(runs=[convert.run_to_pb(r) for r in found])

        return await unary(
            grpc_context, self.metrics, "ListPredictions", ppb.ListPredictionsResponse(), handle
        )

    async def StartEvaluation(
        self, request: ppb.StartEvaluationRequest, grpc_context
    ) -> ppb.EvaluationResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            evaluation = await asyncio.to_thread(
                submit_evaluation,
                self.replica.datasets,
                self.evaluations,
                tenant,
                request.dataset_id,
                convert.prediction_references_from_pb(request.references),
                model_id=request.model_id,
                images=list(request.image_ids),
                matcher=request.matcher,
                seed=request.seed,
            )
            self._launch_run(tenant, evaluation.run_id, self.evaluations.folder)
            self.job_states.inc(tags={"state": "QUEUED"})
            return ppb.EvaluationResponse(evaluation=convert.evaluation_to_pb(evaluation))

        return await unary(
            grpc_context, self.metrics, "StartEvaluation", ppb.EvaluationResponse(), handle
        )

    async def GetEvaluation(
        self, request: ppb.GetEvaluationRequest, grpc_context
    ) -> ppb.EvaluationResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            found = await asyncio.to_thread(self.evaluations.get, tenant, request.evaluation_id)
            return ppb.EvaluationResponse(evaluation=convert.evaluation_to_pb(found))

        return await unary(
            grpc_context, self.metrics, "GetEvaluation", ppb.EvaluationResponse(), handle
        )

    async def ListEvaluations(
        self, request: ppb.ListPredictionsRequest, grpc_context
    ) -> ppb.ListEvaluationsResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)

            def found():
                self.replica.datasets.get_dataset(tenant, request.dataset_id)  # 404s
                return self.evaluations.list(
                    tenant, limit=request.limit or 100, dataset_id=request.dataset_id
                )

            items = await asyncio.to_thread(found)
            return ppb.ListEvaluationsResponse(
                evaluations=[convert.evaluation_to_pb(e) for e in items]
            )

        return await unary(
            grpc_context, self.metrics, "ListEvaluations", ppb.ListEvaluationsResponse(), handle
        )

    # --- service DataJobs -----------------------------------------------------------------

    async def StartImport(
        self, request: dpb.StartImportRequest, grpc_context
    ) -> dpb.DataJobResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            job = await asyncio.to_thread(self.data_jobs.get, tenant, request.job_id)
            if job.kind != "import" or job.state != QUEUED:
                raise InvalidInput(f"{job.job_id} is not a queued import ({job.kind}, {job.state})")
            self._launch_data_job(tenant, job.job_id)
            self.job_states.inc(tags={"state": "QUEUED"})
            return dpb.DataJobResponse(job=convert.data_job_to_pb(job))

        return await unary(grpc_context, self.metrics, "StartImport", dpb.DataJobResponse(), handle)

    async def StartEmbeddings(
        self, request: dpb.StartEmbeddingsRequest, grpc_context
    ) -> dpb.DataJobResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            job = await asyncio.to_thread(
                submit_embeddings,
                self.replica.datasets,
                self.data_jobs,
                tenant,
                request.dataset_id,
                list(request.encoders),
            )
            self._launch_data_job(tenant, job.job_id)
            self.job_states.inc(tags={"state": "QUEUED"})
            return dpb.DataJobResponse(job=convert.data_job_to_pb(job))

        return await unary(
            grpc_context, self.metrics, "StartEmbeddings", dpb.DataJobResponse(), handle
        )

    async def GetDataJob(self, request: dpb.GetDataJobRequest, grpc_context) -> dpb.DataJobResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            job = await asyncio.to_thread(self.data_jobs.get, tenant, request.job_id)
            return dpb.DataJobResponse(job=convert.data_job_to_pb(job))

        return await unary(grpc_context, self.metrics, "GetDataJob", dpb.DataJobResponse(), handle)

    async def WatchDataJob(self, request: dpb.WatchDataJobRequest, grpc_context):
        async def events():
            tenant = tenant_of(self.replica.auth, grpc_context)
            watch = self.data_jobs.watch(tenant, request.job_id, request.after_seq)
            while True:
                event = await asyncio.to_thread(next, watch, None)
                if event is None:
                    return
                yield convert.data_event_to_pb(event)

        async for item in streaming(grpc_context, self.metrics, "WatchDataJob", events):
            yield item

    async def CancelDataJob(
        self, request: dpb.GetDataJobRequest, grpc_context
    ) -> dpb.DataJobResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            job = await asyncio.to_thread(self.data_jobs.request_cancel, tenant, request.job_id)
            self.job_states.inc(tags={"state": "CANCEL_REQUESTED"})
            return dpb.DataJobResponse(job=convert.data_job_to_pb(job))

        return await unary(
            grpc_context, self.metrics, "CancelDataJob", dpb.DataJobResponse(), handle
        )

    async def ListDataJobs(
        self, request: dpb.ListDataJobsRequest, grpc_context
    ) -> dpb.ListDataJobsResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)

            def found():
                self.replica.datasets.get_dataset(tenant, request.dataset_id)  # 404s
                return self.data_jobs.list(
                    tenant, limit=request.limit or 100, dataset_id=request.dataset_id
                )

            jobs = await asyncio.to_thread(found)
            return dpb.ListDataJobsResponse(jobs=[convert.data_job_to_pb(j) for j in jobs])

        return await unary(
            grpc_context, self.metrics, "ListDataJobs", dpb.ListDataJobsResponse(), handle
        )


app = TrainingDeployment.bind()  # type: ignore[attr-defined]  # serve.deployment makes it a Deployment
