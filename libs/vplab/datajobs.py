"""Data jobs: work over a whole dataset's files, as durable jobs with progress events.

Two kinds share one record (``DataJob``) and the layout of every lab job
(``vplab.jobs.JobStore``: ``tenants/{t}/data-jobs/{job}/state.json``, ``events.jsonl``, a
``cancel`` marker):

- ``import``: an uploaded archive of images and labels (``vplab.dataio.importing``). The
  archive's index is validated when the job is submitted - a bad archive is a 400 and
  nothing is written or queued - and the archive is stored beside the record
  (``archive``), where the worker reads it and deletes it when the job ends.
- ``embeddings``: fills the tenant's embedding cache for every image of the dataset (SAM
  and DINOv2 by default), so a user's first click and a first visual-prompting run do not
  wait for the encoder. The worker only coordinates: ``embed`` is the features service's
  batch call.

Both are idempotent, so a worker that died is simply started again: an import re-reads
its archive (images are content-addressed and an unchanged label is not rewritten), a
precompute finds what is cached already. ``done`` counts the items of the current attempt.
"""

from __future__ import annotations

import os
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vplab.errors import InvalidInput, NotFound, VPLabError
from vplab.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, TERMINAL, EventLog, JobStore
from vplab.jobs import now as _now
from vplab.storage import ArtifactStore, keys

if TYPE_CHECKING:
    from vplab.datasets import DatasetStore

KINDS = ("import", "embeddings")
ENCODERS = ("sam", "dinov2")  # what the features service embeds (vplab.inference.features)
EMBED_BATCH = 8  # images per EmbedBatch call: the features replica's encoder batch

# (tenant, image ids, encoder) -> per image: whether it was cached already, or the error's
# message (``FeatureEngine.precompute``, or a call to the features app that runs it).
Embed = Callable[[str, list[str], str], Sequence[bool | str]]


@dataclass
class DataJob:
    job_id: str
    tenant: str
    dataset_id: str
    kind: str  # one of KINDS
    total: int = 0  # images to import / to embed
    encoders: list[str] = field(default_factory=list)  # embeddings: which caches to fill
    state: str = QUEUED
    done: int = 0  # items finished (with or without an error) in the current attempt
    errors: list[dict[str, str]] = field(default_factory=list)  # [{entry, error}]
    # What the job did: import, the ImportReport's counts; embeddings, computed / cached.
    report: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # why the job FAILED
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    attempts: int = 0
    worker_pid: int = 0

    @property
    def id(self) -> str:
        return self.job_id


def data_jobs(store: ArtifactStore) -> JobStore[DataJob]:
    return JobStore(store, DataJob, keys.DATA_JOBS, "d-", "data job")


# --- submitting ------------------------------------------------------------------------------


def submit_import(
    datasets: DatasetStore, jobs: JobStore[DataJob], tenant: str, dataset_id: str, path: Path
) -> DataJob:
    """Validate the archive at ``path`` (its whole index: layout, COCO JSON, classes) and
    queue its import. Nothing is stored unless it is valid; the caller launches the job."""
    from vplab.dataio.importing import plan_import

    datasets.quotas.check_concurrent_jobs(tenant)
    plan = plan_import(datasets, tenant, dataset_id, path, dry=True)  # NotFound, InvalidInput
    plan.archive.close()
    job = DataJob(job_id=jobs.new_id(), tenant=tenant, dataset_id=dataset_id, kind="import")
    job.total = plan.total
    # The archive first: a queued record always has its archive.
    jobs.store.put_file(keys.data_job_archive(tenant, job.id), path)
    return jobs.create(job)


def submit_embeddings(
    datasets: DatasetStore,
    jobs: JobStore[DataJob],
    tenant: str,
    dataset_id: str,
    encoders: Sequence[str] = (),
) -> DataJob:
    """Queue filling the embedding cache of every image of the dataset (``encoders``:
    empty = all of ``ENCODERS``); the caller launches the job."""
    chosen = list(dict.fromkeys(encoders)) or list(ENCODERS)
    unknown = [e for e in chosen if e not in ENCODERS]
    if unknown:
        raise InvalidInput(f"encoders must be among {list(ENCODERS)}, got {unknown}")
    images = datasets.list_images(tenant, dataset_id)  # NotFound: unknown or foreign dataset
    if not images:
        raise InvalidInput(f"dataset {dataset_id} has no images to embed")
    datasets.quotas.check_concurrent_jobs(tenant)
    job = DataJob(
        job_id=jobs.new_id(),
        tenant=tenant,
        dataset_id=dataset_id,
        kind="embeddings",
        total=len(images),
        encoders=chosen,
    )
    return jobs.create(job)


# --- running ---------------------------------------------------------------------------------


class _Stop:
    """The cancel marker, looked up at most every ``interval_s`` (one HEAD each)."""

    def __init__(self, jobs: JobStore[DataJob], job: DataJob, interval_s: float = 0.5):
        self.jobs, self.job, self.interval_s = jobs, job, interval_s
        self.last, self.requested = 0.0, False

    def __call__(self) -> bool:
        if not self.requested and time.monotonic() - self.last >= self.interval_s:
            self.last = time.monotonic()
            self.requested = self.jobs.cancel_requested(self.job.tenant, self.job.id)
        return self.requested


def run_data_job(
    store: ArtifactStore,
    datasets: DatasetStore,
    tenant: str,
    job_id: str,
    embed: Embed | None = None,
    jobs: JobStore[DataJob] | None = None,
    cancel_check_s: float = 0.5,
) -> str:
    """Run (or run again) a data job to its end; returns its final state. ``embed`` is
    needed by an embeddings job; the cancel marker is looked up at most every
    ``cancel_check_s``."""
    jobs = jobs if jobs is not None else data_jobs(store)
    job = jobs.get(tenant, job_id)
    if job.state in TERMINAL:
        return job.state
    job.state, job.attempts, job.worker_pid, job.error = RUNNING, job.attempts + 1, os.getpid(), ""
    job.done, job.errors = 0, []
    log = EventLog(jobs, job)
    log.add(
        force=True, state=RUNNING, phase="start", done=0, total=job.total,
        message=f"attempt {job.attempts}",
    )  # fmt: skip
    stop = _Stop(jobs, job, cancel_check_s)
    try:
        if job.kind == "import":
            _run_import(store, datasets, job, log, stop)
        elif job.kind == "embeddings":
            if embed is None:
                raise RuntimeError("an embeddings job needs an embed function")
            _run_embeddings(datasets, job, log, stop, embed)
        else:
            raise InvalidInput(f"unknown data job kind {job.kind!r}")
        job.state = CANCELLED if stop.requested else SUCCEEDED
    except VPLabError as e:
        job.state, job.error = FAILED, e.message
    except Exception as e:  # noqa: BLE001 - a bug: record it for the user, keep the trace in the worker log
        traceback.print_exc()
        job.state, job.error = FAILED, f"internal error: {type(e).__name__}: {e}"
    if job.kind == "import":
        store.delete(keys.data_job_archive(tenant, job_id))  # the job ended: its input goes
    log.add(
        force=True, state=job.state, phase="end", done=job.done, total=job.total,
        message=job.error,
    )  # fmt: skip
    jobs.finish(job)
    return job.state


def _item(log: EventLog, job: DataJob, entry: str, error: str = "") -> None:
    job.done += 1
    if error:
        job.errors.append({"entry": entry, "error": error})
    log.add(state=RUNNING, phase="item", entry=entry, done=job.done, total=job.total, message=error)


def _run_import(
    store: ArtifactStore, datasets: DatasetStore, job: DataJob, log: EventLog, stop: _Stop
) -> None:
    from vplab.dataio.importing import ImportReport, import_archive

    seen_errors = [0]

    def on_item(entry: str, report: ImportReport) -> None:
        new = report.errors[seen_errors[0] :]
        seen_errors[0] = len(report.errors)
        job.report = report.plain() | {"errors": len(report.errors)}
        _item(log, job, entry, "; ".join(e["error"] for e in new))

    with tempfile.TemporaryDirectory(prefix="vplab-import-") as tmp:
        path = Path(tmp) / "archive"
        try:
            store.get_file(keys.data_job_archive(job.tenant, job.id), path)
        except NotFound:
            raise InvalidInput(f"the archive of {job.id} is gone (it was deleted)") from None
        report = import_archive(
            datasets, job.tenant, job.dataset_id, path, on_item=on_item, should_stop=stop
        )
    job.report = report.plain() | {"errors": len(report.errors)}


def _run_embeddings(
    datasets: DatasetStore, job: DataJob, log: EventLog, stop: _Stop, embed: Embed
) -> None:
    images = datasets.list_images(job.tenant, job.dataset_id)
    job.total = len(images)  # images added or removed since the job was queued count
    counts = {"computed": 0, "cached": 0}
    for start in range(0, len(images), EMBED_BATCH):
        if stop():
            break
        batch = images[start : start + EMBED_BATCH]
        failed: dict[str, str] = {}
        for encoder in job.encoders:
            for image_id, outcome in zip(batch, embed(job.tenant, batch, encoder), strict=True):
                if isinstance(outcome, str):
                    failed.setdefault(image_id, f"{encoder}: {outcome}")
                else:
                    counts["cached" if outcome else "computed"] += 1
        for image_id in batch:
            _item(log, job, image_id, failed.get(image_id, ""))
        job.report = dict(counts)
    job.report = dict(counts)
