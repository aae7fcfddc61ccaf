"""Ray Serve app ``training``: training jobs as Ray tasks that survive their worker's death.

A job runs as a Ray task with ``max_retries``: if its worker process dies, Ray runs it
again and ``vplab.jobs.run_job`` continues from the job's latest checkpoint. On start the
deployment re-launches jobs left unfinished by a previous replica.
"""

from __future__ import annotations

import asyncio
import json

import ray
from ray import serve

from services.common import Replica
from vplab.errors import InvalidInput
from vplab.jobs import Job, JobStore, run_job
from vplab.peft import get_method
from vplab.rpc.v1 import common_pb2
from vplab.rpc.v1 import training_pb2 as pb
from vplab.serving.grpc_glue import ServiceMetrics, streaming, tenant_of, unary


def _run_job_task(settings, tenant: str, job_id: str) -> str:
    return run_job(settings, tenant, job_id)


def _job_pb(job: Job) -> pb.Job:
    return pb.Job(
        job_id=job.job_id,
        dataset_id=job.dataset_id,
        method=job.method,
        base_model=job.base_model,
        state=common_pb2.JobState.Value(job.state),
        step=job.step,
        total_steps=job.steps,
        best_val_iou=job.best_val_iou,
        initial_val_iou=job.initial_val_iou,
        model_id=job.model_id,
        error=job.error,
        created_at=job.created_at,
        updated_at=job.updated_at,
        attempts=job.attempts,
    )


def _event_pb(e: dict) -> pb.JobEvent:
    return pb.JobEvent(
        seq=e["seq"],
        job_id=e["job_id"],
        state=common_pb2.JobState.Value(e.get("state", "RUNNING")),
        phase=e.get("phase", ""),
        step=e.get("step", 0),
        total_steps=e.get("total_steps", 0),
        loss=e.get("loss") or 0.0,
        val_iou=e.get("val_iou") or 0.0,
        best_val_iou=e.get("best_val_iou") or 0.0,
        eta_s=e.get("eta_s") or 0.0,
        message=e.get("message", ""),
        model_id=e.get("model_id", ""),
        time=e.get("time", ""),
    )


@serve.deployment(name="TrainingDeployment")
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
            num_cpus=1, num_gpus=s.train_num_gpus, max_retries=s.train_max_retries
        )(_run_job_task)
        self._running: dict[str, ray.ObjectRef] = {}
        for tenant, job_id in self.jobs.active():  # left unfinished by a previous replica
            self._launch(tenant, job_id)

    def _launch(self, tenant: str, job_id: str) -> None:
        self._running[job_id] = self._task.remote(self.replica.settings, tenant, job_id)

    async def StartTraining(
        self, request: pb.StartTrainingRequest, grpc_context
    ) -> pb.StartTrainingResponse:
        async def handle():
            from vplab.datasets import DatasetStore

            tenant = tenant_of(self.replica.auth, grpc_context)
            get_method(request.method or "epeft")
            if request.steps <= 0:
                raise InvalidInput(f"steps must be > 0, got {request.steps}")
            try:
                method_config = json.loads(request.method_config_json or "{}")
            except json.JSONDecodeError as e:
                raise InvalidInput(f"method_config_json is not valid JSON: {e}") from None
            if not isinstance(method_config, dict):
                raise InvalidInput("method_config_json must be a JSON object")
            datasets = DatasetStore(self.replica.store, self.replica.settings)
            datasets.get_dataset(tenant, request.dataset_id)  # NotFound for foreign ids
            if not datasets.list_labels(tenant, request.dataset_id):
                raise InvalidInput(
                    f"dataset {request.dataset_id} has no labels: upload corrected masks first"
                )
            self.replica.quotas.check_concurrent_jobs(tenant)
            job = Job(
                job_id=self.jobs.new_id(),
                tenant=tenant,
                dataset_id=request.dataset_id,
                method=request.method or "epeft",
                base_model=request.base_model,
                steps=request.steps,
                method_config=method_config,
                seed=request.seed,
                lr=request.lr or None,
            )
            self.jobs.create(job)
            self._launch(tenant, job.job_id)
            self.job_states.inc(tags={"state": "QUEUED"})
            return pb.StartTrainingResponse(job=_job_pb(job))

        return await unary(
            grpc_context, self.metrics, "StartTraining", pb.StartTrainingResponse(), handle
        )

    async def GetJob(self, request: pb.GetJobRequest, grpc_context) -> pb.GetJobResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            return pb.GetJobResponse(
                job=_job_pb(await asyncio.to_thread(self.jobs.get, tenant, request.job_id))
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
                yield _event_pb(event)

        async for item in streaming(grpc_context, self.metrics, "WatchJob", events):
            yield item

    async def CancelJob(self, request: pb.CancelJobRequest, grpc_context) -> pb.CancelJobResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            job = await asyncio.to_thread(self.jobs.request_cancel, tenant, request.job_id)
            self.job_states.inc(tags={"state": "CANCEL_REQUESTED"})
            return pb.CancelJobResponse(job=_job_pb(job))

        return await unary(grpc_context, self.metrics, "CancelJob", pb.CancelJobResponse(), handle)

    async def ListJobs(self, request: pb.ListJobsRequest, grpc_context) -> pb.ListJobsResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            state = common_pb2.JobState.Name(request.state) if request.state else None
            jobs = await asyncio.to_thread(self.jobs.list, tenant, state, request.limit or 100)
            return pb.ListJobsResponse(jobs=[_job_pb(j) for j in jobs])

        return await unary(grpc_context, self.metrics, "ListJobs", pb.ListJobsResponse(), handle)


app = TrainingDeployment.bind()
