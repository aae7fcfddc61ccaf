"""Data jobs: importing an archive and precomputing embeddings, as durable jobs.

The import's upload lands here: the archive is spooled to disk (bounded memory), its
index is validated and it is stored with a QUEUED record (``vplab.datajobs.submit_import``),
then the training app, which runs every durable job, launches it. Everything else is a
call to the training app (``service DataJobs``).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from services.gateway import schemas as S
from services.gateway.deps import AuthHeader, DatasetsDep, TenantId, TimeoutsDep, UpstreamDep
from services.gateway.params import (
    ERROR_RESPONSES,
    V1,
    AfterSeqQuery,
    DataJobIdPath,
    DatasetIdPath,
    LastEventIdHeader,
    resume_after,
)
from services.gateway.sse import job_event_stream
from vplab.datajobs import data_jobs, submit_import
from vplab.rpc import convert
from vplab.rpc.convert import TRAINING
from vplab.rpc.v1 import datajobs_pb2 as pb

router = APIRouter(prefix=V1, tags=["data jobs"], responses=ERROR_RESPONSES)

IMPORT_PATH = re.compile(r"/v1/datasets/[^/]+/import")  # bodies up to max_import_bytes
ARCHIVE_BODY = {
    "requestBody": {
        "required": True,
        "description": "The archive's bytes: a zip or a tar (.tar, .tar.gz); any content type",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post(
    "/datasets/{dataset_id}/import",
    summary="Import a zip or tar of images with PNG masks (masks/) or a COCO JSON, as a job",
    description="The archive's index (layout, COCO JSON, classes.json) is checked before "
    "anything is stored: a bad archive is a 400 naming the problem, and nothing changes. "
    "Then each image is imported by the job; follow it at `/v1/data-jobs/{job_id}/events`.",
    status_code=201,
    response_model=S.DataJobOut,
    openapi_extra=ARCHIVE_BODY,
)
async def import_dataset(
    dataset_id: DatasetIdPath,
    request: Request,
    tenant: TenantId,
    authorization: AuthHeader,
    datasets: DatasetsDep,
    up: UpstreamDep,
) -> Any:
    await run_in_threadpool(datasets.get_dataset, tenant, dataset_id)  # 404 before the upload
    with tempfile.TemporaryDirectory(prefix="vplab-upload-") as tmp:
        path = Path(tmp) / "archive"
        with path.open("wb") as spool:  # bounded memory: the archive goes to disk
            async for chunk in request.stream():
                await run_in_threadpool(spool.write, chunk)
        jobs = data_jobs(datasets.store)
        job = await run_in_threadpool(submit_import, datasets, jobs, tenant, dataset_id, path)
    r = await up.unary(TRAINING, "StartImport", pb.StartImportRequest(job_id=job.id), authorization)
    return convert.data_job_from_pb(r.job)


@router.post(
    "/datasets/{dataset_id}/embeddings",
    summary="Precompute the embeddings of every image of a dataset (a job)",
    description="Fills the tenant's embedding cache (SAM and DINOv2 by default), so the first "
    "click on an image and the first visual-prompting run do not wait for the encoder.",
    status_code=201,
    response_model=S.DataJobOut,
)
async def precompute_embeddings(
    dataset_id: DatasetIdPath,
    tenant: TenantId,
    authorization: AuthHeader,
    up: UpstreamDep,
    body: S.EmbeddingsCreate | None = None,
) -> Any:
    encoders = body.encoders if body is not None else []
    request = pb.StartEmbeddingsRequest(dataset_id=dataset_id, encoders=encoders)
    r = await up.unary(TRAINING, "StartEmbeddings", request, authorization)
    return convert.data_job_from_pb(r.job)


@router.get(
    "/datasets/{dataset_id}/data-jobs",
    summary="List a dataset's imports and precomputes, newest first",
    response_model=S.DataJobList,
)
async def list_data_jobs(
    dataset_id: DatasetIdPath,
    tenant: TenantId,
    authorization: AuthHeader,
    up: UpstreamDep,
    limit: Annotated[int, Query(ge=0, le=1000, description="0 = the service default")] = 0,
) -> Any:
    request = pb.ListDataJobsRequest(dataset_id=dataset_id, limit=limit)
    r = await up.unary(TRAINING, "ListDataJobs", request, authorization)
    return {"jobs": [convert.data_job_from_pb(j) for j in r.jobs]}


@router.get("/data-jobs/{job_id}", summary="Get a data job", response_model=S.DataJobOut)
async def get_data_job(
    job_id: DataJobIdPath, tenant: TenantId, authorization: AuthHeader, up: UpstreamDep
) -> Any:
    r = await up.unary(TRAINING, "GetDataJob", pb.GetDataJobRequest(job_id=job_id), authorization)
    return convert.data_job_from_pb(r.job)


@router.delete(
    "/data-jobs/{job_id}",
    summary="Cancel a data job (what was imported or embedded stays)",
    response_model=S.DataJobOut,
    responses={409: {"model": S.ErrorResponse, "description": "The job already ended"}},
)
async def cancel_data_job(
    job_id: DataJobIdPath, tenant: TenantId, authorization: AuthHeader, up: UpstreamDep
) -> Any:
    request = pb.GetDataJobRequest(job_id=job_id)
    r = await up.unary(TRAINING, "CancelDataJob", request, authorization)
    return convert.data_job_from_pb(r.job)


@router.get(
    "/data-jobs/{job_id}/events",
    summary="Follow a data job: server-sent events (`id: seq`, `event: item|progress|end`)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def data_job_events(
    job_id: DataJobIdPath,
    tenant: TenantId,
    authorization: AuthHeader,
    up: UpstreamDep,
    timeouts: TimeoutsDep,
    after_seq: AfterSeqQuery = 0,
    last_event_id: LastEventIdHeader = "",
):
    after_seq = resume_after(after_seq, last_event_id)
    return await job_event_stream(
        up,
        authorization,
        timeouts.keepalive_s,
        ("GetDataJob", pb.GetDataJobRequest(job_id=job_id)),
        ("WatchDataJob", pb.WatchDataJobRequest(job_id=job_id, after_seq=after_seq)),
        convert.data_event_from_pb,
        item=("item", "item"),
    )
