"""Fine-tuning jobs and their progress events: calls to the training app."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from services.gateway import schemas as S
from services.gateway.deps import AuthHeader, TenantId, TimeoutsDep, UpstreamDep
from services.gateway.params import (
    ERROR_RESPONSES,
    V1,
    AfterSeqQuery,
    JobIdPath,
    LastEventIdHeader,
    resume_after,
)
from services.gateway.sse import job_event_stream
from vplab.rpc import convert
from vplab.rpc.convert import TRAINING
from vplab.rpc.v1 import training_pb2
from vplab.states import JobState

router = APIRouter(prefix=V1, tags=["training"], responses=ERROR_RESPONSES)


@router.post(
    "/trainings", summary="Start a fine-tuning job", status_code=201, response_model=S.JobOut
)
async def start_training(
    body: S.TrainingCreate, tenant: TenantId, authorization: AuthHeader, up: UpstreamDep
) -> Any:
    request = convert.start_training_to_pb(
        body.dataset_id,
        body.method,
        body.base_model,
        body.steps,
        body.method_config,
        body.seed,
        body.lr,
        body.recipe,
    )
    r = await up.unary(TRAINING, "StartTraining", request, authorization)
    return convert.job_from_pb(r.job)


@router.get("/trainings", summary="List the tenant's jobs, newest first", response_model=S.JobList)
async def list_trainings(
    tenant: TenantId,
    authorization: AuthHeader,
    up: UpstreamDep,
    limit: Annotated[int, Query(ge=0, le=1000, description="0 = the service default")] = 0,
    state: Annotated[JobState | None, Query()] = None,
) -> Any:
    request = training_pb2.ListJobsRequest(limit=limit, state=convert.job_state_to_pb(state))
    r = await up.unary(TRAINING, "ListJobs", request, authorization)
    return {"jobs": [convert.job_from_pb(j) for j in r.jobs]}


@router.get("/trainings/{job_id}", summary="Get a job", response_model=S.JobOut)
async def get_training(
    job_id: JobIdPath, tenant: TenantId, authorization: AuthHeader, up: UpstreamDep
) -> Any:
    r = await up.unary(TRAINING, "GetJob", training_pb2.GetJobRequest(job_id=job_id), authorization)
    return convert.job_from_pb(r.job)


@router.get(
    "/trainings/{job_id}/events",
    summary="Follow a job: server-sent events (`id: seq`, `event: progress|end`)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def training_events(
    job_id: JobIdPath,
    tenant: TenantId,
    authorization: AuthHeader,
    up: UpstreamDep,
    timeouts: TimeoutsDep,
    after_seq: AfterSeqQuery = 0,
    last_event_id: LastEventIdHeader = "",
):
    return await job_event_stream(
        up,
        authorization,
        timeouts.keepalive_s,
        ("GetJob", training_pb2.GetJobRequest(job_id=job_id)),
        (
            "WatchJob",
            training_pb2.WatchJobRequest(
                job_id=job_id, after_seq=resume_after(after_seq, last_event_id)
            ),
        ),
        convert.event_from_pb,
    )


@router.delete(
    "/trainings/{job_id}",
    summary="Cancel a job",
    response_model=S.JobOut,
    responses={409: {"model": S.ErrorResponse, "description": "The job already ended"}},
)
async def cancel_training(
    job_id: JobIdPath, tenant: TenantId, authorization: AuthHeader, up: UpstreamDep
) -> Any:
    r = await up.unary(
        TRAINING, "CancelJob", training_pb2.CancelJobRequest(job_id=job_id), authorization
    )
    return convert.job_from_pb(r.job)
