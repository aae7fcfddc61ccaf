"""Ray Serve app ``training``: training jobs as Ray tasks that survive their worker's death.

A job runs as a Ray task with ``max_retries``: if its worker process dies, Ray runs it
again and ``vplab.jobs.run_job`` continues from the job's latest checkpoint. On start the
deployment re-launches jobs left unfinished by a previous replica.
"""

from __future__ import annotations

import asyncio

import ray
from ray import serve

from services.common import Replica
from vplab.jobs import JobStore, run_job, submit_job
from vplab.rpc import convert
from vplab.rpc.v1 import training_pb2 as pb
from vplab.serving.apps import app_role, deployment_options, role_resources
from vplab.serving.grpc_glue import ServiceMetrics, streaming, tenant_of, unary
from vplab.settings import get_settings


def _run_job_task(settings, tenant: str, job_id: str) -> str:
    return run_job(settings, tenant, job_id)


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
        self._running: dict[str, ray.ObjectRef] = {}
        for tenant, job_id in self.jobs.active():  # left unfinished by a previous replica
            self._launch(tenant, job_id)

    def _launch(self, tenant: str, job_id: str) -> None:
        self._running[job_id] = self._task.remote(self.replica.settings, tenant, job_id)

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


app = TrainingDeployment.bind()  # type: ignore[attr-defined]  # serve.deployment makes it a Deployment
