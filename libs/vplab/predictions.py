"""Prediction runs: visual prompting over a whole dataset as a durable job, and review.

A run is ``tenants/{t}/predictions/{run}/`` in the object store, in the layout of a
training job (``vplab.jobs.JobStore``): ``state.json`` (the record), ``events.jsonl`` (one
event per finished target, written by the worker alone), a ``cancel`` marker (the API's),
and besides those ``results/{image}.json`` (one per target, create-only: a target is never
done twice, even by two workers) and ``reviews/{image}.json`` (the reviewer's verdict,
create-only). ``run_prediction`` is idempotent: started again after its worker died, it
segments only the targets without a result.

The references are resolved when the run is created (each label reference pins its label
version), so a resumed run segments with exactly the references it started with.
"""

from __future__ import annotations

import base64
import json
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vplab.errors import Conflict, InvalidInput, NotFound, VPLabError
from vplab.jobs import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, TERMINAL, EventLog, JobStore
from vplab.jobs import now as _now
from vplab.masks import decode_rle, encode_label_map, encode_rle
from vplab.storage import ArtifactStore, keys
from vplab.storage.create_only import CREATE_ONLY

if TYPE_CHECKING:
    from vplab.datasets import DatasetStore

ORDERS = ("uncertainty", "score", "image")
MATCHERS = ("soft", "prototype")
# A target whose call failed for a reason other than its input (a replica that died, a
# timeout) is tried again after 1, 2, 4, 8, 10, 10... s, this many times in all: about a
# minute, what Serve needs to bring a killed replica back on a busy machine.
TARGET_ATTEMPTS = 10


@dataclass
class PredictionRun:
    run_id: str
    tenant: str
    dataset_id: str
    # Resolved: {"image_id", "label_version"} (every class of that label) or
    # {"image_id", "class_id", "mask": COCO RLE} (one class's mask).
    references: list[dict[str, Any]]
    targets: list[str]
    classes: list[int]  # the class ids the references show, ascending
    model_id: str = ""
    matcher: str = "soft"
    seed: int = 0
    state: str = QUEUED
    done: int = 0  # targets with a result or an error
    errors: list[dict[str, str]] = field(default_factory=list)  # [{image_id, error}]
    error: str = ""
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    attempts: int = 0
    worker_pid: int = 0

    @property
    def id(self) -> str:
        return self.run_id

    @property
    def total(self) -> int:
        return len(self.targets)


def prediction_runs(store: ArtifactStore) -> JobStore[PredictionRun]:
    return JobStore(store, PredictionRun, keys.PREDICTIONS, "p-", "prediction run")


# --- submitting ---------------------------------------------------------------------------


def _check_run_options(matcher: str, seed: object, references: object) -> str:
    matcher = matcher or "soft"
    if matcher not in MATCHERS:
        raise InvalidInput(f"matcher must be one of {list(MATCHERS)}, got {matcher!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InvalidInput(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(references, list) or not references:
        raise InvalidInput(
            "give at least one reference: [{image_id}] or [{image_id, mask, class_id}]"
        )
    return matcher


def _reference_ids(references: list[dict[str, Any]]) -> list[str]:
    return [
        keys.check_sha256(r.get("image_id"), f"references[{i}].image_id")
        for i, r in enumerate(references)
    ]


def _check_members(
    datasets: DatasetStore, tenant: str, dataset_id: str, field: str, image_ids: list[str]
) -> None:
    """Images named in a run's body must be the dataset's: a 400 naming the first that is
    not (the dataset itself, the path's resource, is a 404 when unknown)."""
    members = set(datasets.list_images(tenant, dataset_id))  # NotFound: unknown dataset
    for i, image_id in enumerate(image_ids):
        keys.check_sha256(image_id, f"{field}[{i}]")
        if image_id not in members:
            raise InvalidInput(f"{field}[{i}]: image {image_id} is not in dataset {dataset_id}")


def _resolve_references(
    datasets: DatasetStore, tenant: str, dataset_id: str, references: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[int]]:
    """(references with label versions pinned and masks checked, the class ids they show)."""
    n_classes = len(datasets.get_dataset(tenant, dataset_id).classes)
    labels = datasets.list_labels(tenant, dataset_id)
    resolved: list[dict[str, Any]] = []
    classes: set[int] = set()
    for i, (ref, image_id) in enumerate(zip(references, _reference_ids(references))):
        mask, class_id = ref.get("mask"), ref.get("class_id")
        if mask is None and class_id is None:
            if image_id not in labels:
                raise InvalidInput(
                    f"references[{i}]: image {image_id} has no label; label it first or "
                    "give a mask and class_id"
                )
            label = datasets.get_label(tenant, dataset_id, image_id, labels[image_id])
            present = {int(v) for v in np.unique(label.label_map()) if v > 0}
            if not present:
                raise InvalidInput(f"references[{i}]: the label of image {image_id} is empty")
            classes |= present
            resolved.append({"image_id": image_id, "label_version": label.version})
            continue
        if mask is None or class_id is None:
            raise InvalidInput(f"references[{i}]: give mask and class_id together")
        if (
            isinstance(class_id, bool)
            or not isinstance(class_id, int)
            or not 1 <= class_id <= n_classes
        ):
            raise InvalidInput(
                f"references[{i}].class_id must be a class of the dataset (1..{n_classes}), "
                f"got {class_id!r}"
            )
        binary = decode_rle(mask)
        height, width = datasets.get_image(tenant, image_id).shape[:2]
        if binary.shape != (height, width):
            raise InvalidInput(
                f"references[{i}].mask is {binary.shape[1]}x{binary.shape[0]} but image "
                f"{image_id} is {width}x{height}"
            )
        if not binary.any():
            raise InvalidInput(f"references[{i}].mask is empty")
        classes.add(class_id)
        resolved.append({"image_id": image_id, "class_id": class_id, "mask": encode_rle(binary)})
    return resolved, sorted(classes)


def _check_model(datasets: DatasetStore, tenant: str, model_id: str) -> None:
    if not model_id:
        return
    from vplab.peft import get_method
    from vplab.tuned import read_tuned_config

    config = read_tuned_config(datasets.store, tenant, model_id)  # NotFound: unknown/foreign
    if get_method(config["method"]).prompt_free:
        raise InvalidInput(
            f"model {model_id} ({config['method']}) is prompt-free: it cannot visual-prompt"
        )


def _check_room(datasets: DatasetStore, tenant: str) -> None:
    datasets.quotas.check_concurrent_jobs(tenant)
    datasets.quotas.check_new_bytes(tenant, 0)  # no room left at all: refuse before starting


def submit_prediction(
    datasets: DatasetStore,
    runs: JobStore[PredictionRun],
    tenant: str,
    dataset_id: str,
    references: list[dict[str, Any]],
    model_id: str = "",
    targets: list[str] | None = None,
    matcher: str = "",
    seed: int = 0,
) -> PredictionRun:
    """Validate a run request and record it as QUEUED (the caller launches it).

    ``references``: ``[{image_id}]`` (its latest label, every class in it) or
    ``[{image_id, mask, class_id}]`` (a COCO RLE of one class). ``targets`` None or empty:
    every image of the dataset that is not a reference. Nothing is written unless every
    rule holds.
    """
    matcher = _check_run_options(matcher, seed, references)
    _check_members(datasets, tenant, dataset_id, "references", _reference_ids(references))
    _check_members(datasets, tenant, dataset_id, "targets", list(targets or []))
    resolved_targets = datasets.visual_prompt_targets(
        tenant, dataset_id, _reference_ids(references), targets or None, per_call_limits=False
    )
    resolved, classes = _resolve_references(datasets, tenant, dataset_id, references)
    _check_model(datasets, tenant, model_id)
    _check_room(datasets, tenant)
    run = PredictionRun(
        run_id=runs.new_id(),
        tenant=tenant,
        dataset_id=dataset_id,
        references=resolved,
        targets=resolved_targets,
        classes=classes,
        model_id=model_id,
        matcher=matcher,
        seed=seed,
    )
    return runs.create(run)


# --- evaluations --------------------------------------------------------------------------


@dataclass
class Evaluation(PredictionRun):
    """A prediction run over labelled images, scored against their labels when it ends."""

    ground_truth: dict[str, int] = field(default_factory=dict)  # image -> pinned label version
    miou: float | None = None
    mean_dice: float | None = None
    n_images: int = 0
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    per_image: list[dict[str, Any]] = field(default_factory=list)


def evaluations(store: ArtifactStore) -> JobStore[Evaluation]:
    return JobStore(store, Evaluation, keys.EVALUATIONS, "e-", "evaluation")


def run_store(store: ArtifactStore, folder: str) -> JobStore:
    """The records of prediction runs (``keys.PREDICTIONS``) or evaluations."""
    return evaluations(store) if folder == keys.EVALUATIONS else prediction_runs(store)


def model_training_images(store: ArtifactStore, tenant: str, model_id: str) -> list[str]:
    """The images a tuned model was trained on (from the job that made it; [] if unknown)."""
    from vplab.jobs import Job

    try:
        job = JobStore[Job](store).get(tenant, "j-" + model_id.removeprefix("m-"))
    except NotFound:
        return []
    return list(job.train_images)


def submit_evaluation(
    datasets: DatasetStore,
    evals: JobStore[Evaluation],
    tenant: str,
    dataset_id: str,
    references: list[dict[str, Any]],
    model_id: str = "",
    images: list[str] | None = None,
    matcher: str = "",
    seed: int = 0,
) -> Evaluation:
    """Validate an evaluation and record it as QUEUED (the caller launches it).

    ``images`` None or empty: every labelled image of the dataset that is not a reference
    and, for a tuned model, was not in its training set. Each must have a label: its latest
    version, pinned now, is the ground truth.
    """
    matcher = _check_run_options(matcher, seed, references)
    ref_ids = set(_reference_ids(references))
    _check_members(datasets, tenant, dataset_id, "references", sorted(ref_ids))
    _check_members(datasets, tenant, dataset_id, "images", list(images or []))
    labels = datasets.list_labels(tenant, dataset_id)
    _check_model(datasets, tenant, model_id)
    if images:
        for i, image_id in enumerate(images):
            keys.check_sha256(image_id, f"images[{i}]")
            if image_id not in labels:
                raise InvalidInput(f"images[{i}]: image {image_id} has no label to compare with")
        chosen = list(dict.fromkeys(images))
    else:
        trained = (
            set(model_training_images(datasets.store, tenant, model_id)) if model_id else set()
        )
        chosen = [i for i in labels if i not in ref_ids and i not in trained]
    if not chosen:
        raise InvalidInput(
            "nothing to evaluate: no labelled image besides the references"
            + (" and the model's training images" if model_id else "")
        )
    resolved, classes = _resolve_references(datasets, tenant, dataset_id, references)
    _check_room(datasets, tenant)
    evaluation = Evaluation(
        run_id=evals.new_id(),
        tenant=tenant,
        dataset_id=dataset_id,
        references=resolved,
        targets=chosen,
        classes=classes,
        model_id=model_id,
        matcher=matcher,
        seed=seed,
        ground_truth={i: labels[i] for i in chosen},
    )
    return evals.create(evaluation)


def _score(datasets: DatasetStore, runs: JobStore, run: Evaluation) -> None:
    """Fill an evaluation's metrics from its results and its pinned labels (every class of
    the dataset is scored: one the references do not show counts as missed)."""
    from vplab.evaluation import evaluate

    store, t = datasets.store, run.tenant
    items = []
    for image_id in result_ids(store, t, run.run_id, runs.folder):
        result = get_result(store, t, run.run_id, image_id, runs.folder)
        label = datasets.get_label(t, run.dataset_id, image_id, run.ground_truth[image_id])
        items.append((image_id, result_label_map(result), label.label_map()))
    if not items:
        raise InvalidInput("no target could be segmented: nothing to score")
    n_classes = len(datasets.get_dataset(t, run.dataset_id).classes)
    report = evaluate(items, range(1, n_classes + 1)).to_json()
    run.miou, run.mean_dice, run.n_images = report["miou"], report["mean_dice"], report["n_images"]
    run.per_class, run.per_image = report["per_class"], report["per_image"]


# --- the worker ---------------------------------------------------------------------------

# (run, target image id) -> the target's result (``SegmentationEngine.predict_target``).
Predict = Callable[[PredictionRun, str], dict[str, Any]]


def _retryable(error: BaseException) -> bool:
    """A user error (bad image, unknown model) fails its target at once; anything else (a
    replica that died, a timeout) is tried again."""
    return not isinstance(error, VPLabError)


def run_prediction(
    store: ArtifactStore,
    datasets: DatasetStore,
    tenant: str,
    run_id: str,
    predict: Predict,
    concurrency: int = 2,
    retry_wait_s: float = 1.0,
    runs: JobStore | None = None,
) -> str:
    """Run (or continue) a prediction run to its end; returns its final state.

    ``concurrency`` targets are in flight at once (``predict`` spreads them over the
    segmentation replicas). Each result is written create-only: when it exists already (a
    previous worker wrote it), it is neither redone nor counted twice. ``runs``: the
    records' store (default prediction runs; ``evaluations(store)``: scored at the end).
    """
    runs = runs if runs is not None else prediction_runs(store)
    folder = runs.folder
    run = runs.get(tenant, run_id)
    if run.state in TERMINAL:
        return run.state
    run.state, run.attempts, run.worker_pid, run.error = RUNNING, run.attempts + 1, os.getpid(), ""
    log = EventLog(runs, run, id_field="run_id")
    logged = {e["image_id"] for e in log.events if e.get("phase") == "target"}
    stored = set(result_ids(store, tenant, run_id, folder))
    failed = {e["image_id"] for e in run.errors}
    run.done = len((stored | failed) & set(run.targets))
    for image_id in sorted(stored - logged):  # written, then the worker died before its event
        log.add(**_target_fields(run, get_result(store, tenant, run_id, image_id, folder)))
    log.add(
        force=True,
        state=RUNNING,
        phase="start",
        done=run.done,
        total=run.total,
        message=f"attempt {run.attempts}",
    )
    pending = [t for t in run.targets if t not in stored and t not in failed]
    tries: dict[str, int] = {}
    retry_at: dict[str, float] = {}  # monotonic time before which a target is not retried
    try:
        with ThreadPoolExecutor(max(1, concurrency), "vplab-predict") as pool:
            inflight: dict[Future, str] = {}
            last_check, cap = 0.0, max(1, concurrency)
            while pending or inflight:
                ready = [t for t in pending if retry_at.get(t, 0.0) <= time.monotonic()]
                # Before each new target (and every 0.5 s while waiting): one HEAD.
                if (ready and len(inflight) < cap) or time.monotonic() - last_check > 0.5:
                    last_check = time.monotonic()
                    if runs.cancel_requested(tenant, run_id):
                        for f in inflight:
                            f.cancel()
                        run.state = CANCELLED
                        break
                while ready and len(inflight) < cap:
                    image_id = ready.pop(0)
                    pending.remove(image_id)
                    inflight[pool.submit(predict, run, image_id)] = image_id
                if not inflight:
                    time.sleep(0.1)  # only targets waiting to be tried again
                    continue
                finished, _ = wait(inflight, timeout=0.5, return_when=FIRST_COMPLETED)
                for f in finished:
                    image_id = inflight.pop(f)
                    error = f.exception()
                    if error is None:
                        record = _store_result(store, datasets, run, image_id, f.result(), folder)
                        if record is not None:
                            run.done += 1
                            log.add(**_target_fields(run, record))
                        continue
                    if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit
                        raise error
                    tries[image_id] = tries.get(image_id, 0) + 1
                    if _retryable(error) and tries[image_id] < TARGET_ATTEMPTS:
                        backoff = min(retry_wait_s * 2 ** (tries[image_id] - 1), 10 * retry_wait_s)
                        retry_at[image_id] = time.monotonic() + backoff
                        pending.append(image_id)
                        continue
                    message = (
                        error.message
                        if isinstance(error, VPLabError)
                        else f"{type(error).__name__}: {error}"
                    )
                    run.errors.append({"image_id": image_id, "error": message})
                    run.done += 1
                    log.add(
                        state=RUNNING,
                        phase="target",
                        image_id=image_id,
                        done=run.done,
                        total=run.total,
                        message=message,
                    )
        if run.state != CANCELLED:
            if isinstance(run, Evaluation):
                _score(datasets, runs, run)
            run.state = SUCCEEDED
    except VPLabError as e:  # e.g. the storage quota: the run stops, its results stay
        run.state, run.error = FAILED, e.message
    except Exception as e:  # noqa: BLE001 - a bug: record it, keep the trace in the worker log
        traceback.print_exc()
        run.state, run.error = FAILED, f"internal error: {type(e).__name__}: {e}"
    log.add(
        force=True, state=run.state, phase="end", done=run.done, total=run.total, message=run.error
    )
    runs.finish(run)
    return run.state


def _target_fields(run: PredictionRun, result: dict[str, Any]) -> dict[str, Any]:
    """The event of one finished target."""
    return {
        "state": RUNNING,
        "phase": "target",
        "image_id": result["image_id"],
        "done": run.done,
        "total": run.total,
        "uncertainty": result["uncertainty"],
        "score": result["score"],
    }


def _store_result(
    store: ArtifactStore,
    datasets: DatasetStore,
    run: PredictionRun,
    image_id: str,
    result: dict[str, Any],
    folder: str,
) -> dict[str, Any] | None:
    """Write one target's result, create-only: the record, or None when it was written
    before (by an earlier attempt)."""
    record = {
        "image_id": image_id,
        "run_id": run.run_id,
        "model_id": run.model_id,
        "created_at": _now(),
        **result,
    }
    data = json.dumps(record).encode()
    datasets.quotas.check_new_bytes(run.tenant, len(data))
    key = keys.prediction_result(run.tenant, run.run_id, image_id, folder)
    return record if store.create_bytes(key, data, "application/json") else None


# --- results ------------------------------------------------------------------------------


def result_ids(
    store: ArtifactStore, tenant: str, run_id: str, folder: str = keys.PREDICTIONS
) -> list[str]:
    prefix = keys.prediction_results_prefix(tenant, run_id, folder)
    found = (keys.parse_prediction_object(k, prefix) for k in store.list(prefix))
    return sorted(i for i in found if i is not None)


def get_result(
    store: ArtifactStore, tenant: str, run_id: str, image_id: str, folder: str = keys.PREDICTIONS
) -> dict[str, Any]:
    try:
        return store.get_json(
            keys.prediction_result(tenant, run_id, keys.check_sha256(image_id, "image_id"), folder)
        )
    except NotFound:
        raise NotFound(f"run {run_id} has no result for image {image_id}") from None


def result_label_map(result: dict[str, Any]) -> np.ndarray:
    """(H, W) class ids of a result: its per-class masks do not overlap (argmax)."""
    labels = np.zeros((result["height"], result["width"]), np.uint16)
    for class_id, c in result["classes"].items():
        labels[decode_rle(c["mask"])] = int(class_id)
    return labels


def result_summary(result: dict[str, Any]) -> dict[str, Any]:
    """A result without its masks: what a results page lists."""
    return {
        "image_id": result["image_id"],
        "score": result["score"],
        "uncertainty": result["uncertainty"],
        "scores": {cid: c["score"] for cid, c in result["classes"].items()},
        "points": {cid: c["points"] for cid, c in result["classes"].items()},
    }


def cached_summary(
    store: ArtifactStore, tenant: str, run_id: str, image_id: str, folder: str = keys.PREDICTIONS
) -> dict[str, Any]:
    """``result_summary`` of a stored result, read from the store once per process (results
    are create-only)."""
    key = keys.prediction_result(tenant, run_id, keys.check_sha256(image_id, "image_id"), folder)
    try:
        return CREATE_ONLY.get(store, key, result_summary)
    except NotFound:
        raise NotFound(f"run {run_id} has no result for image {image_id}") from None


def review_ids(store: ArtifactStore, tenant: str, run_id: str) -> list[str]:
    """The images whose result in the run has a verdict (one listing)."""
    prefix = keys.prediction_reviews_prefix(tenant, run_id)
    found = (keys.parse_prediction_object(k, prefix) for k in store.list(prefix))
    return sorted(i for i in found if i is not None)


def _cursor(item: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(item["image_id"].encode()).decode().rstrip("=")


def list_results(
    store: ArtifactStore,
    runs: JobStore[PredictionRun],
    tenant: str,
    run_id: str,
    order: str = "uncertainty",
    limit: int = 50,
    after: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """(one page of result summaries, the cursor of the next page or None).

    ``order``: "uncertainty" (correct these first: most uncertain first), "score" (highest
    first) or "image" (by id). Ties break by image id, so pages never skip or repeat.
    """
    runs.get(tenant, run_id)  # NotFound: unknown or another tenant's
    if order not in ORDERS:
        raise InvalidInput(f"order must be one of {list(ORDERS)}, got {order!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise InvalidInput(f"limit must be 1..1000, got {limit!r}")
    items = [cached_summary(store, tenant, run_id, i) for i in result_ids(store, tenant, run_id)]
    if order == "uncertainty":
        items.sort(key=lambda r: (-r["uncertainty"], r["image_id"]))
    elif order == "score":
        items.sort(key=lambda r: (-r["score"], r["image_id"]))
    start = 0
    if after:
        cursors = [_cursor(r) for r in items]
        if after not in cursors:
            raise InvalidInput("after is not a cursor of this run's results")
        start = cursors.index(after) + 1
    page = items[start : start + limit]
    more = start + limit < len(items)
    return page, (_cursor(page[-1]) if more and page else None)


# --- review -------------------------------------------------------------------------------

ACCEPTED, EDITED, REJECTED = "accepted", "edited", "rejected"


def get_review(
    store: ArtifactStore, tenant: str, run_id: str, image_id: str
) -> dict[str, Any] | None:
    try:
        return store.get_json(keys.prediction_review(tenant, run_id, image_id))
    except NotFound:
        return None


def review_result(
    datasets: DatasetStore,
    runs: JobStore[PredictionRun],
    tenant: str,
    run_id: str,
    image_id: str,
    verdict: str,
    edited_png: bytes | None = None,
) -> dict[str, Any]:
    """Accept (optionally edited) or reject one result; returns the review record.

    Accepting saves the prediction (or ``edited_png``, a label map) as the image's next
    label version with its provenance (run, model, accepted / edited). One verdict per
    result: a second is a ``Conflict``; a result of a cancelled run cannot be accepted.
    """
    store = datasets.store
    run = runs.get(tenant, run_id)
    result = get_result(store, tenant, run_id, image_id)
    if verdict not in (ACCEPTED, REJECTED):
        raise InvalidInput(f"verdict must be {ACCEPTED!r} or {REJECTED!r}")
    if run.state == CANCELLED and verdict == ACCEPTED:
        raise Conflict(f"run {run_id} was cancelled: its results cannot be accepted")
    if edited_png is not None and verdict != ACCEPTED:
        raise InvalidInput("only an accepted result takes an edited label map")
    existing = get_review(store, tenant, run_id, image_id)
    if existing is not None:
        raise Conflict(f"the result for image {image_id} was already {existing['verdict']}")
    record: dict[str, Any] = {
        "image_id": image_id,
        "run_id": run_id,
        "model_id": run.model_id,
        "verdict": verdict,
        "reviewed_at": _now(),
    }
    if verdict == ACCEPTED:
        png = edited_png if edited_png is not None else encode_label_map(result_label_map(result))
        record["verdict"] = EDITED if edited_png is not None else ACCEPTED
        provenance = {"run_id": run_id, "model_id": run.model_id, "source": record["verdict"]}
        label = datasets.put_label(tenant, run.dataset_id, image_id, png, provenance=provenance)
        record["label_version"] = label.version
    key = keys.prediction_review(tenant, run_id, image_id)
    if not store.create_bytes(key, json.dumps(record).encode(), "application/json"):
        raise Conflict(f"the result for image {image_id} was reviewed by someone else meanwhile")
    return record


def latest_results(
    store: ArtifactStore, runs: JobStore[PredictionRun], tenant: str, dataset_id: str
) -> dict[str, dict[str, Any]]:
    """``{image_id: {run_id, score, uncertainty, review}}`` from the newest run that has a
    result for the image."""
    latest: dict[str, dict[str, Any]] = {}
    for run in runs.list(tenant, limit=10_000, dataset_id=dataset_id):  # newest first
        reviewed = set(review_ids(store, tenant, run.run_id))
        for image_id in result_ids(store, tenant, run.run_id):
            if image_id in latest:
                continue
            summary = cached_summary(store, tenant, run.run_id, image_id)
            review = (
                CREATE_ONLY.get(store, keys.prediction_review(tenant, run.run_id, image_id))
                if image_id in reviewed
                else None
            )
            latest[image_id] = {
                "run_id": run.run_id,
                "model_id": run.model_id,
                "score": summary["score"],
                "uncertainty": summary["uncertainty"],
                "review": review["verdict"] if review else None,
            }
    return latest


def image_details(
    datasets: DatasetStore, runs: JobStore[PredictionRun], tenant: str, dataset_id: str
) -> list[dict[str, Any]]:
    """Per image of the dataset (sorted): its latest label version, where that came from,
    and its latest prediction (``latest_results``)."""
    images = datasets.list_images(tenant, dataset_id)
    labels = datasets.latest_labels(tenant, dataset_id)
    predicted = latest_results(datasets.store, runs, tenant, dataset_id)
    out = []
    for image_id in images:
        version, provenance = labels.get(image_id, (None, None))
        out.append(
            {
                "image_id": image_id,
                "label_version": version,
                "provenance": provenance,
                "prediction": predicted.get(image_id),
            }
        )
    return out


# --- a training round's gain ----------------------------------------------------------------


def training_gain(
    engine: Any,
    datasets: DatasetStore,
    tenant: str,
    dataset_id: str,
    trained_on: list[str],
    model: Any,
    n_references: int = 2,
) -> tuple[float, float, int] | None:
    """(stock mIoU, tuned mIoU, images) of visual prompting on the dataset's labelled images
    that the model did not train on, the references being its first ``n_references``
    training images; None when every labelled image was trained on.

    ``engine``: a ``SegmentationEngine``; ``model``: the tuned model it loaded.
    """
    from vplab.evaluation import evaluate

    labels = datasets.list_labels(tenant, dataset_id)
    held_out = [i for i in labels if i not in set(trained_on)]
    if not held_out:
        return None
    refs = [
        i
        for i in trained_on
        if i in labels and datasets.get_label(tenant, dataset_id, i, labels[i]).label_map().any()
    ][:n_references]  # an empty label shows nothing to match
    if not refs:
        return None
    references, classes = _resolve_references(
        datasets, tenant, dataset_id, [{"image_id": i} for i in refs]
    )
    n_classes = len(datasets.get_dataset(tenant, dataset_id).classes)
    truth = {i: datasets.get_label(tenant, dataset_id, i, labels[i]).label_map() for i in held_out}
    scores = []
    for tuned in (None, model):
        run = PredictionRun(
            run_id=f"gain-{model.model_id}",  # names the prompters' cache entry only
            tenant=tenant,
            dataset_id=dataset_id,
            references=references,
            targets=held_out,
            classes=classes,
        )
        items = [
            (i, result_label_map(engine.predict_target(tenant, run, i, tuned)), truth[i])
            for i in held_out
        ]
        scores.append(evaluate(items, range(1, n_classes + 1)).miou)
    return scores[0], scores[1], len(held_out)
