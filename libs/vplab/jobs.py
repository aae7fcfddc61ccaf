"""Training jobs: records in the object store and the resumable worker body.

A job is ``tenants/{t}/jobs/{job}/state.json`` (the record), ``events.jsonl`` (progress,
written by the worker alone), a ``cancel`` marker (written by the API alone, so the two
writers never overwrite each other) and ``ckpt/`` (trainer checkpoints). ``run_job`` is
idempotent: started again after its worker died, it continues from the latest checkpoint.
"""

from __future__ import annotations

import builtins
import json
import os
import secrets
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

from vplab.errors import Conflict, InvalidInput, NotFound, VPLabError
from vplab.method_names import DEFAULT_METHOD, DEFAULT_RECIPE
from vplab.states import ACTIVE_STATES, TERMINAL_STATES, JobState
from vplab.storage import ArtifactStore, keys

if TYPE_CHECKING:
    from vplab.datasets import DatasetStore

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = (
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELLED,
)
TERMINAL = TERMINAL_STATES
ACTIVE = ACTIVE_STATES


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Job:
    job_id: str
    tenant: str
    dataset_id: str
    method: str
    base_model: str
    steps: int
    method_config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    lr: float | None = None
    recipe: str = DEFAULT_RECIPE  # the method's named training recipe
    state: str = QUEUED
    step: int = 0
    best_val_iou: float = 0.0
    # Fewer than 10 labelled images: every one trains, so validation ran on training images
    # and best_val_iou overstates held-out quality (BENCHMARKS.md section 14).
    val_on_train: bool = False
    initial_val_iou: float = 0.0
    model_id: str = ""
    error: str = ""
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    attempts: int = 0
    worker_pid: int = 0
    train_images: list[str] = field(default_factory=list)  # what the model was trained on
    # The round's gain: visual prompting with the stock pipeline and with the tuned model on
    # the labelled images it did not train on (None when there were none).
    zero_shot_miou: float | None = None
    tuned_miou: float | None = None
    gain_images: int = 0

    @property
    def total_steps(self) -> int:
        return self.steps

    @property
    def id(self) -> str:
        return self.job_id


class JobRecord(Protocol):
    """What a ``JobStore`` needs of its records (dataclasses: ``Job``, ``PredictionRun``)."""

    tenant: str
    state: str
    created_at: str
    updated_at: str

    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=JobRecord)


class JobStore(Generic[R]):
    """Durable job records of one kind (``folder``): training jobs by default; prediction
    runs (``vplab.predictions``) share the layout, the event log and the cancel marker."""

    def __init__(
        self,
        store: ArtifactStore,
        record: Callable[..., R] = Job,  # type: ignore[assignment]  # R is Job by default
        folder: str = keys.JOBS,
        id_prefix: str = "j-",
        noun: str = "job",
    ):
        self.store = store
        self.record, self.folder, self.id_prefix, self.noun = record, folder, id_prefix, noun

    def new_id(self) -> str:
        return f"{self.id_prefix}{secrets.token_hex(6)}"

    def create(self, job: R) -> R:
        self.store.put_bytes(keys.active_job(job.tenant, job.id), b"")
        self.save(job)
        return job

    def active(self) -> builtins.list[tuple[str, str]]:
        """(tenant, id) of every job of this kind not yet ended, across tenants (restarts)."""
        found = [keys.parse_active_job(k) for k in self.store.list(keys.active_jobs_prefix())]
        return [(t, j) for t, j in found if j.startswith(self.id_prefix)]

    def finish(self, job: R) -> None:
        self.save(job)
        self.store.delete(keys.active_job(job.tenant, job.id))

    def save(self, job: R) -> None:
        job.updated_at = now()
        self.store.put_json(keys.job_state(job.tenant, job.id, self.folder), asdict(cast(Any, job)))

    def get(self, tenant: str, job_id: str) -> R:
        try:
            key = keys.job_state(tenant, keys.check_id(job_id, f"{self.noun} id"), self.folder)
            data = self.store.get_json(key)
        except (NotFound, InvalidInput):
            raise NotFound(f"{self.noun} {job_id} not found") from None
        return self.record(**data)

    def list(
        self, tenant: str, state: str | None = None, limit: int = 100, **match: Any
    ) -> builtins.list[R]:
        """Newest first; ``state`` and ``match`` (field=value) filter."""
        prefix = keys.jobs_prefix(tenant, self.folder)
        parsed = (keys.parse_job_state(k, tenant, self.folder) for k in self.store.list(prefix))
        ids = sorted({job_id for job_id in parsed if job_id is not None})
        jobs = []
        for job_id in ids:
            try:
                job = self.get(tenant, job_id)
            except NotFound:
                continue
            if state is not None and job.state != state:
                continue
            if all(getattr(job, k) == v for k, v in match.items()):
                jobs.append(job)
        jobs.sort(key=lambda j: j.created_at, reverse=True)
        return jobs[:limit]

    def request_cancel(self, tenant: str, job_id: str) -> R:
        job = self.get(tenant, job_id)
        if job.state in TERMINAL:
            raise Conflict(f"{self.noun} {job_id} already ended ({job.state})")
        self.store.put_bytes(keys.job_cancel(tenant, job_id, self.folder), b"1")
        return job

    def cancel_requested(self, tenant: str, job_id: str) -> bool:
        return self.store.exists(keys.job_cancel(tenant, job_id, self.folder))

    def events(self, tenant: str, job_id: str, after_seq: int = 0) -> builtins.list[dict[str, Any]]:
        try:
            text = self.store.get_bytes(keys.job_events(tenant, job_id, self.folder)).decode()
        except NotFound:
            return []
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [e for e in events if e["seq"] > after_seq]

    def watch(
        self,
        tenant: str,
        job_id: str,
        after_seq: int = 0,
        poll_s: float = 0.25,
        timeout_s: float = 3600.0,
    ) -> Iterator[dict[str, Any]]:
        """Yield events after ``after_seq`` until the job ends (then one last pass)."""
        self.get(tenant, job_id)  # NotFound for unknown / foreign jobs
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ended = self.get(tenant, job_id).state in TERMINAL
            for event in self.events(tenant, job_id, after_seq):
                after_seq = event["seq"]
                yield event
            if ended:
                return
            time.sleep(poll_s)


def submit_job(
    datasets: DatasetStore,
    jobs: JobStore[Job],
    tenant: str,
    dataset_id: str,
    method: str = "",
    base_model: str = "",
    steps: int = 0,
    method_config: dict[str, Any] | None = None,
    seed: int = 0,
    lr: float | None = None,
    recipe: str = "",
) -> Job:
    """Validate a training request and record it as a QUEUED job (the caller launches it).

    The rules every transport shares: a known method (default E-PEFT), ``steps`` > 0 or 0
    for the default, a JSON-object config, a positive finite ``lr`` if given, a dataset of
    the tenant that has labels, and room in the tenant's concurrent-job quota. Nothing is
    written unless all of them hold.
    """
    import math

    from vplab.peft import get_method, make_config

    method = method or DEFAULT_METHOD
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise InvalidInput(f"steps must be > 0 (or 0 for the default), got {steps!r}")
    if method_config is not None and not isinstance(method_config, dict):
        raise InvalidInput("method_config must be a JSON object")
    make_config(method, method_config)  # InvalidInput: unknown method, unknown or bad fields
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InvalidInput(f"lr must be a positive number, got {lr!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInput(f"seed must be a non-negative integer, got {seed!r}")
    chosen = get_method(method).recipe_named(recipe)  # InvalidInput: not this method's
    datasets.get_dataset(tenant, dataset_id)  # NotFound for unknown or foreign ids
    if not datasets.list_labels(tenant, dataset_id):
        raise InvalidInput(f"dataset {dataset_id} has no labels: upload corrected masks first")
    datasets.quotas.check_concurrent_jobs(tenant)
    job = Job(
        job_id=jobs.new_id(),
        tenant=tenant,
        dataset_id=dataset_id,
        method=method,
        base_model=base_model,
        steps=steps or chosen.steps,  # 0 on the wire: the recipe's
        method_config=dict(method_config or {}),
        seed=seed,
        lr=lr,
        recipe=chosen.name,
    )
    return jobs.create(job)


class EventLog:
    """A worker's progress log (the job's one writer); written with the job's record at
    most every ``interval_s`` (and when forced). ``id_field`` names the job in each event."""

    def __init__(self, jobs: JobStore, job: Any, interval_s: float = 0.5, id_field: str = "job_id"):
        self.jobs, self.job, self.interval_s, self.id_field = jobs, job, interval_s, id_field
        self.events = jobs.events(job.tenant, job.id)  # keep numbering across restarts
        self.last_flush = 0.0

    def add(self, force: bool = False, **fields: Any) -> None:
        seq = self.events[-1]["seq"] + 1 if self.events else 1
        self.events.append({"seq": seq, self.id_field: self.job.id, "time": now(), **fields})
        if force or time.monotonic() - self.last_flush >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        data = "".join(json.dumps(e) + "\n" for e in self.events).encode()
        key = keys.job_events(self.job.tenant, self.job.id, self.jobs.folder)
        self.jobs.store.put_bytes(key, data)
        self.jobs.save(self.job)
        self.last_flush = time.monotonic()


def run_job(settings, tenant: str, job_id: str) -> str:
    """Run (or continue) a training job to its end. Returns the final state."""
    from vplab.datasets import DatasetStore
    from vplab.inference.runtime import ModelRuntime
    from vplab.models import configure_compute
    from vplab.segmentation.tiling import default_halo
    from vplab.storage import open_store
    from vplab.training import CheckpointStore, TrainConfig, Trainer
    from vplab.training.data import per_class_samples, tile_samples
    from vplab.training.feature_cache import StoreFeatureCache
    from vplab.tuned import save_tuned_model

    store = open_store(settings)
    jobs: JobStore[Job] = JobStore(store)
    job = jobs.get(tenant, job_id)
    if job.state in TERMINAL:
        return job.state
    configure_compute(settings)  # a Ray task would otherwise train on one thread
    job.state, job.attempts, job.worker_pid, job.error = RUNNING, job.attempts + 1, os.getpid(), ""
    log = EventLog(jobs, job)
    log.add(
        force=True,
        state=RUNNING,
        phase="start",
        step=job.step,
        total_steps=job.steps,
        message=f"attempt {job.attempts}",
    )
    last_cancel_check: list[float] = [0.0]
    cancelled = [False]

    def should_stop() -> bool:
        if time.monotonic() - last_cancel_check[0] > 0.5:
            last_cancel_check[0] = time.monotonic()
            cancelled[0] = jobs.cancel_requested(tenant, job_id)
        return cancelled[0]

    def on_progress(event) -> None:
        job.step = event.step
        if event.best_val_iou is not None:
            job.best_val_iou = event.best_val_iou
        fields = {k: v for k, v in asdict(event).items() if v is not None}
        fields["total_steps"] = fields.pop("total_steps", job.steps)
        log.add(force=event.val_iou is not None, state=RUNNING, **fields)

    try:
        runtime = ModelRuntime(settings, store)
        if job.base_model not in ("", runtime.base.name):
            raise InvalidInput(
                f"base model {job.base_model!r} is not served here; available: {runtime.base.name!r}"
            )
        datasets = DatasetStore(store, settings)
        n_classes = len(datasets.get_dataset(tenant, job.dataset_id).classes)
        # A multi-class dataset trains one adapter on every class (one sample per class).
        samples = [
            sample
            for image_id, image, label_map in datasets.labeled_samples(
                tenant, job.dataset_id, label_maps=True
            )
            for sample in per_class_samples(image_id, image, label_map, n_classes)
        ]
        sam = runtime.base.build(store)
        if settings.tile_large_images:  # trained on the tiles it will be served on
            window = sam.image_encoder.img_size
            samples = tile_samples(samples, window, settings.tile_halo or default_halo(window))
        config = TrainConfig(
            method=job.method,
            method_config=dict(job.method_config),
            steps=job.steps,
            lr=job.lr,
            recipe=job.recipe,
            seed=job.seed,
            checkpoint_every=settings.train_checkpoint_every,
            eval_every=settings.train_eval_every,
            n_dihedral=settings.train_views,
        )
        trainer = Trainer(
            sam,
            config,
            samples,
            checkpoints=CheckpointStore(store, tenant, job_id),
            on_progress=on_progress,
            should_stop=should_stop,
            feature_cache=StoreFeatureCache(store, tenant, runtime.sam_encoder_id),
        )
        result = trainer.run()
        job.initial_val_iou, job.best_val_iou, job.step = (
            result.initial_val_iou,
            result.best_val_iou,
            result.steps_done,
        )
        job.val_on_train = result.val_on_train
        if result.cancelled:
            job.state = CANCELLED
        else:
            model_id = "m-" + job_id.removeprefix("j-")
            save_tuned_model(
                store,
                tenant,
                model_id,
                result.model,
                job.method,
                result.method_config,
                runtime.base.ref(),
                result.output,
            )
            job.train_images = list(result.trained_on)
            try:
                _report_gain(settings, store, runtime, job, model_id)
            except Exception as e:  # noqa: BLE001 - a report: the trained model stands without it
                traceback.print_exc()
                log.add(state=RUNNING, phase="gain", message=f"no gain report: {e}")
            job.model_id, job.state = model_id, SUCCEEDED
    except VPLabError as e:
        job.state, job.error = FAILED, e.message
    except Exception as e:  # noqa: BLE001 - a bug: record it for the user, keep the trace in the worker log
        traceback.print_exc()
        job.state, job.error = FAILED, f"internal error: {type(e).__name__}: {e}"
    log.add(
        force=True,
        state=job.state,
        phase="end",
        step=job.step,
        total_steps=job.steps,
        best_val_iou=job.best_val_iou,
        model_id=job.model_id,
        message=job.error,
    )
    jobs.finish(job)
    return job.state


def _report_gain(settings, store, runtime, job: Job, model_id: str) -> None:
    """The round's gain on the labelled images the model did not train on (if any)."""
    from vplab.datasets import DatasetStore
    from vplab.inference.features import FeatureEngine
    from vplab.inference.segmentation import SegmentationEngine
    from vplab.predictions import training_gain

    engine = SegmentationEngine(FeatureEngine(runtime))
    model = engine.load_model(job.tenant, model_id)
    if model.prompt_free:
        return  # PTSAM does not visual-prompt
    gain = training_gain(
        engine, DatasetStore(store, settings), job.tenant, job.dataset_id, job.train_images, model
    )
    if gain is not None:
        job.zero_shot_miou, job.tuned_miou, job.gain_images = gain
