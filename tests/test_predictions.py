"""Prediction runs without any service: submit rules, the resumable worker, results,
review and provenance (the engine's predict_target on the demo models)."""

from __future__ import annotations

import numpy as np
import pytest

from vplab import predictions as P
from vplab.datasets import DatasetStore
from vplab.demo import load_demo_samples
from vplab.errors import Conflict, InvalidInput, NotFound, QuotaExceeded
from vplab.images import encode_png
from vplab.inference.features import FeatureEngine
from vplab.inference.runtime import ModelRuntime
from vplab.inference.segmentation import SegmentationEngine
from vplab.masks import encode_label_map, encode_rle, read_label_png
from vplab.settings import Settings
from vplab.storage import LocalStore, keys

N_IMAGES, SIZE = 5, 96


def _label_map(mask: np.ndarray) -> np.ndarray:
    """Two classes: the demo objects (1) and a band along the top edge (2)."""
    labels = mask.astype(np.uint8)
    labels[:12, :] = np.where(labels[:12, :] == 0, 2, labels[:12, :])
    return labels


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    settings = Settings(demo=True, data_dir=d, max_targets_per_call=2, quota_concurrent_jobs=50)
    store = LocalStore(d)
    datasets = DatasetStore(store, settings)
    samples = load_demo_samples(N_IMAGES, SIZE, seed=7)
    ds = datasets.create_dataset("t1", "cells", classes=[{"name": "cell"}, {"name": "edge"}])
    ids = [datasets.add_image("t1", ds.id, encode_png(im)) for im, _ in samples]
    labels = [_label_map(m) for _, m in samples]
    datasets.put_label("t1", ds.id, ids[0], encode_label_map(labels[0]))
    other = datasets.create_dataset("t2", "theirs")
    engine = SegmentationEngine(FeatureEngine(ModelRuntime(settings, store)))
    return settings, store, datasets, engine, ds.id, ids, labels, other.id


def _predict(engine):
    def predict(run, image_id):
        return engine.predict_target(run.tenant, run, image_id)

    return predict


def _snapshot(store) -> dict[str, bytes]:
    return {k: store.get_bytes(k) for k in store.list("")}


def test_submit_rules_and_nothing_written(env):
    _, store, datasets, _, ds, ids, labels, other = env
    runs = P.prediction_runs(store)
    before = _snapshot(store)
    one_class = encode_rle(labels[1] == 1)
    bad = [
        ([], InvalidInput, "at least one reference"),
        ([{"image_id": ids[1]}], InvalidInput, "has no label"),
        ([{"image_id": ids[1], "mask": one_class, "class_id": 3}], InvalidInput, r"1\.\.2"),
        ([{"image_id": ids[1], "mask": one_class}], InvalidInput, "together"),
        (
            [{"image_id": ids[1], "mask": encode_rle(np.zeros((SIZE, SIZE), bool)), "class_id": 1}],
            InvalidInput,
            "empty",
        ),
        (
            [{"image_id": ids[1], "mask": encode_rle(np.ones((8, 8), bool)), "class_id": 1}],
            InvalidInput,
            "8x8",
        ),
        ([{"image_id": "0" * 64}], InvalidInput, "not in dataset"),
    ]
    for refs, error, match in bad:
        with pytest.raises(error, match=match):
            P.submit_prediction(datasets, runs, "t1", ds, refs)
    with pytest.raises(NotFound):  # another tenant's dataset
        P.submit_prediction(datasets, runs, "t2", ds, [{"image_id": ids[0]}])
    with pytest.raises(NotFound):
        P.submit_prediction(datasets, runs, "t1", other, [{"image_id": ids[0]}])
    with pytest.raises(NotFound, match="model"):
        P.submit_prediction(datasets, runs, "t1", ds, [{"image_id": ids[0]}], model_id="m-nope")
    with pytest.raises(InvalidInput, match="matcher"):
        P.submit_prediction(datasets, runs, "t1", ds, [{"image_id": ids[0]}], matcher="knn")
    assert _snapshot(store) == before


def test_a_run_segments_every_target_once_and_resumes_where_it_stopped(env):
    _, store, datasets, engine, ds, ids, _, _ = env
    runs = P.prediction_runs(store)
    run = P.submit_prediction(datasets, runs, "t1", ds, [{"image_id": ids[0]}])
    # Past the per-call target limit (2): a run is a job, not one call.
    assert run.targets == sorted(ids[1:]) and run.classes == [1, 2] and run.state == "QUEUED"
    assert run.references == [{"image_id": ids[0], "label_version": 1}]
    assert runs.active() == [("t1", run.run_id)]
    predict, calls = _predict(engine), []

    class WorkerDied(BaseException):  # what a SIGKILL looks like from inside: nothing caught
        pass

    def dies_after_two(r, image_id):
        if len(calls) == 2:
            raise WorkerDied
        calls.append(image_id)
        return predict(r, image_id)

    with pytest.raises(WorkerDied):
        P.run_prediction(store, datasets, "t1", run.run_id, dies_after_two, concurrency=1)
    assert runs.get("t1", run.run_id).state == "RUNNING"
    assert P.result_ids(store, "t1", run.run_id) == sorted(calls)
    resumed: list[str] = []

    def counted(r, image_id):
        resumed.append(image_id)
        return predict(r, image_id)

    assert P.run_prediction(store, datasets, "t1", run.run_id, counted) == "SUCCEEDED"
    assert sorted(calls + resumed) == sorted(ids[1:])  # nothing lost, nothing done twice
    done = runs.get("t1", run.run_id)
    assert (done.done, done.total, done.errors, done.attempts) == (4, 4, [], 2)
    assert runs.active() == []
    events = runs.events("t1", run.run_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    targets = [e["image_id"] for e in events if e["phase"] == "target"]
    assert sorted(targets) == sorted(ids[1:])  # one event per target across both attempts
    assert events[-1]["phase"] == "end" and events[-1]["state"] == "SUCCEEDED"
    assert P.run_prediction(store, datasets, "t1", run.run_id, counted) == "SUCCEEDED"
    assert len(resumed) == 2  # ended: idempotent

    result = P.get_result(store, "t1", run.run_id, ids[1])
    assert set(result["classes"]) == {"1", "2"} and (result["height"], result["width"]) == (96, 96)
    assert 0.0 <= result["uncertainty"] <= 1.0
    label_map = P.result_label_map(result)
    assert set(np.unique(label_map)) <= {0, 1, 2}


def test_results_pages_in_every_order_without_gaps(env):
    _, store, datasets, engine, ds, ids, _, _ = env
    runs = P.prediction_runs(store)
    run = P.submit_prediction(datasets, runs, "t1", ds, [{"image_id": ids[0]}], matcher="prototype")
    assert P.run_prediction(store, datasets, "t1", run.run_id, _predict(engine)) == "SUCCEEDED"
    for order in P.ORDERS:
        seen, after = [], None
        while True:
            page, after = P.list_results(store, runs, "t1", run.run_id, order, 3, after)
            seen += page
            if after is None:
                break
        assert sorted(r["image_id"] for r in seen) == sorted(ids[1:])
        if order == "uncertainty":
            u = [r["uncertainty"] for r in seen]
            assert u == sorted(u, reverse=True)
        if order == "score":
            s = [r["score"] for r in seen]
            assert s == sorted(s, reverse=True)
    with pytest.raises(InvalidInput, match="order"):
        P.list_results(store, runs, "t1", run.run_id, "area")
    with pytest.raises(InvalidInput, match="cursor"):
        P.list_results(store, runs, "t1", run.run_id, after="bogus")
    with pytest.raises(NotFound):
        P.list_results(store, runs, "t2", run.run_id)


def test_target_failures_retry_or_are_recorded(env):
    _, store, datasets, engine, ds, ids, _, _ = env
    runs = P.prediction_runs(store)
    run = P.submit_prediction(datasets, runs, "t1", ds, [{"image_id": ids[0]}], targets=ids[1:3])
    predict, tries = _predict(engine), {}

    def flaky(r, image_id):
        tries[image_id] = tries.get(image_id, 0) + 1
        if image_id == ids[1] and tries[image_id] == 1:
            raise RuntimeError("replica died")  # tried again
        if image_id == ids[2]:
            raise NotFound("image gone")  # a user error: recorded at once
        return predict(r, image_id)

    state = P.run_prediction(store, datasets, "t1", run.run_id, flaky, retry_wait_s=0)
    assert state == "SUCCEEDED" and tries == {ids[1]: 2, ids[2]: 1}
    done = runs.get("t1", run.run_id)
    assert done.done == 2 and done.errors == [{"image_id": ids[2], "error": "image gone"}]
    assert P.result_ids(store, "t1", run.run_id) == [ids[1]]


def test_review_writes_label_versions_with_provenance(env):
    _, store, datasets, engine, ds, ids, labels, _ = env
    runs = P.prediction_runs(store)
    run = P.submit_prediction(datasets, runs, "t1", ds, [{"image_id": ids[0]}], targets=ids[1:4])
    P.run_prediction(store, datasets, "t1", run.run_id, _predict(engine))
    accepted = P.review_result(datasets, runs, "t1", run.run_id, ids[1], P.ACCEPTED)
    assert accepted["verdict"] == "accepted"
    label = datasets.get_label("t1", ds, ids[1])
    assert label.version == accepted["label_version"]
    expected = P.result_label_map(P.get_result(store, "t1", run.run_id, ids[1]))
    assert np.array_equal(label.label_map(), expected)
    assert datasets.label_provenance("t1", ds, ids[1], label.version) == {
        "run_id": run.run_id,
        "model_id": "",
        "source": "accepted",
    }
    edited = P.review_result(
        datasets, runs, "t1", run.run_id, ids[2], P.ACCEPTED, encode_label_map(labels[2])
    )
    assert edited["verdict"] == "edited"
    assert np.array_equal(datasets.get_label("t1", ds, ids[2]).label_map(), labels[2])
    before = _snapshot(store)
    with pytest.raises(Conflict, match="already accepted"):
        P.review_result(datasets, runs, "t1", run.run_id, ids[1], P.REJECTED)
    bad = labels[3].copy()
    bad[0, 0] = 7
    with pytest.raises(InvalidInput, match="7"):
        P.review_result(datasets, runs, "t1", run.run_id, ids[3], P.ACCEPTED, encode_label_map(bad))
    with pytest.raises(NotFound):
        P.review_result(datasets, runs, "t2", run.run_id, ids[3], P.ACCEPTED)
    with pytest.raises(NotFound):  # no result for a reference
        P.review_result(datasets, runs, "t1", run.run_id, ids[0], P.ACCEPTED)
    assert _snapshot(store) == before
    rejected = P.review_result(datasets, runs, "t1", run.run_id, ids[3], P.REJECTED)
    assert "label_version" not in rejected
    details = {d["image_id"]: d for d in P.image_details(datasets, runs, "t1", ds)}
    assert details[ids[0]]["provenance"] == {"source": "manual"}
    assert details[ids[1]]["provenance"]["source"] == "accepted"
    assert details[ids[2]]["provenance"]["source"] == "edited"
    assert details[ids[3]]["label_version"] is None
    assert details[ids[3]]["prediction"]["review"] == "rejected"
    assert details[ids[3]]["prediction"]["run_id"] == run.run_id


def test_cancelled_runs_stop_and_their_results_cannot_be_accepted(env):
    _, store, datasets, engine, ds, ids, _, _ = env
    runs = P.prediction_runs(store)
    run = P.submit_prediction(datasets, runs, "t1", ds, [{"image_id": ids[0]}], targets=ids[1:3])
    predict = _predict(engine)

    def cancel_after_first(r, image_id):
        out = predict(r, image_id)
        runs.request_cancel("t1", r.run_id)
        return out

    state = P.run_prediction(store, datasets, "t1", run.run_id, cancel_after_first, concurrency=1)
    assert state == "CANCELLED"
    done = P.result_ids(store, "t1", run.run_id)
    assert len(done) == 1
    with pytest.raises(Conflict, match="cancelled"):
        P.review_result(datasets, runs, "t1", run.run_id, done[0], P.ACCEPTED)
    with pytest.raises(Conflict, match="already ended"):
        runs.request_cancel("t1", run.run_id)


def test_results_count_towards_the_storage_quota(env, tmp_path):
    settings, store, datasets, engine, ds, ids, _, _ = env
    used = datasets.quotas.usage("t1", fresh=True).bytes
    tight = DatasetStore(store, settings.model_copy(update={"quota_bytes": used + 10}))
    runs = P.prediction_runs(store)
    run = P.submit_prediction(tight, runs, "t1", ds, [{"image_id": ids[0]}], targets=ids[1:2])
    state = P.run_prediction(store, tight, "t1", run.run_id, _predict(engine))
    assert state == "FAILED" and "storage quota" in runs.get("t1", run.run_id).error
    assert P.result_ids(store, "t1", run.run_id) == []
    full = DatasetStore(store, settings.model_copy(update={"quota_bytes": used}))
    with pytest.raises(QuotaExceeded):
        P.submit_prediction(full, runs, "t1", ds, [{"image_id": ids[0]}])


def test_run_keys_and_label_provenance_keys():
    assert keys.job_state("t", "p-1", keys.PREDICTIONS) == "tenants/t/predictions/p-1/state.json"
    sha = "a" * 64
    assert (
        keys.prediction_result("t", "p-1", sha) == f"tenants/t/predictions/p-1/results/{sha}.json"
    )
    assert keys.label_provenance("t", "d", sha, 3).endswith(f"/{sha}/v3.json")
    with pytest.raises(InvalidInput):
        keys.jobs_prefix("t", "elsewhere")
    prefix = keys.prediction_results_prefix("t", "p-1")
    assert keys.parse_prediction_object(f"{prefix}{sha}.json", prefix) == sha
    assert keys.parse_prediction_object(f"{prefix}x.json", prefix) is None
    png = encode_label_map(np.array([[0, 2]], np.uint8))
    assert read_label_png(png).tolist() == [[0, 2]]


def _truth_predictor(truth: dict[str, np.ndarray]):
    """A predictor that answers with the ground truth: an evaluation must score it 1.0."""

    def predict(run, image_id):
        labels = truth[image_id]
        return {
            "height": labels.shape[0],
            "width": labels.shape[1],
            "classes": {
                str(c): {"mask": encode_rle(labels == c), "score": 1.0, "points": []}
                for c in run.classes
            },
            "score": 1.0,
            "disagreement": 0.0,
            "uncertainty": 0.0,
        }

    return predict


def test_evaluations_score_against_the_pinned_labels(env):
    from vplab.evaluation import evaluate

    _, store, datasets, engine, _, ids, labels, _ = env
    ds = datasets.create_dataset("t1", "scored", classes=[{"name": "cell"}, {"name": "edge"}])
    for image_id in ids:
        datasets.add_image("t1", ds.id, store.get_bytes(keys.image("t1", image_id)))
    truth = dict(zip(ids, labels))
    for image_id in ids[:4]:
        datasets.put_label("t1", ds.id, image_id, encode_label_map(truth[image_id]))
    evals = P.evaluations(store)
    with pytest.raises(InvalidInput, match="no label to compare"):
        P.submit_evaluation(datasets, evals, "t1", ds.id, [{"image_id": ids[0]}], images=[ids[4]])
    with pytest.raises(NotFound):
        P.submit_evaluation(datasets, evals, "t2", ds.id, [{"image_id": ids[0]}])
    perfect = P.submit_evaluation(datasets, evals, "t1", ds.id, [{"image_id": ids[0]}])
    assert perfect.targets == sorted(ids[1:4]) and perfect.ground_truth == dict.fromkeys(
        sorted(ids[1:4]), 1
    )
    # A label saved after the evaluation started does not move its ground truth.
    datasets.put_label("t1", ds.id, ids[1], encode_label_map(np.zeros((SIZE, SIZE), np.uint8)))
    state = P.run_prediction(
        store, datasets, "t1", perfect.run_id, _truth_predictor(truth), runs=evals
    )
    done = evals.get("t1", perfect.run_id)
    assert state == "SUCCEEDED" and done.miou == 1.0 and done.mean_dice == 1.0
    assert done.n_images == 3 and set(done.per_class) == {"1", "2"}
    assert P.prediction_runs(store).list("t1", dataset_id=ds.id) == []  # its own folder

    real = P.submit_evaluation(
        datasets, evals, "t1", ds.id, [{"image_id": ids[0]}], images=ids[2:4]
    )
    assert P.run_prediction(store, datasets, "t1", real.run_id, _predict(engine), runs=evals) == (
        "SUCCEEDED"
    )
    done = evals.get("t1", real.run_id)
    items = [
        (
            i,
            P.result_label_map(P.get_result(store, "t1", real.run_id, i, keys.EVALUATIONS)),
            truth[i],
        )
        for i in ids[2:4]
    ]
    expected = evaluate(items, [1, 2]).to_json()
    assert done.miou == pytest.approx(expected["miou"]) and done.per_image == expected["per_image"]
    assert 0.0 <= done.miou < 1.0
    assert [e.run_id for e in evals.list("t1", dataset_id=ds.id)] == [real.run_id, perfect.run_id]


def test_a_tuned_models_evaluation_leaves_out_its_training_images(env):
    from vplab.jobs import Job, JobStore

    _, store, datasets, _, _, ids, labels, _ = env
    ds = datasets.create_dataset("t1", "rounds", classes=[{"name": "cell"}, {"name": "edge"}])
    for image_id, label in zip(ids, labels):
        datasets.add_image("t1", ds.id, store.get_bytes(keys.image("t1", image_id)))
        datasets.put_label("t1", ds.id, image_id, encode_label_map(label))
    jobs = JobStore(store)
    jobs.save(
        Job(
            job_id="j-round1",
            tenant="t1",
            dataset_id=ds.id,
            method="epeft",
            base_model="",
            steps=1,
            state="SUCCEEDED",
            train_images=ids[:3],
        )
    )
    store.put_json(keys.model_config("t1", "m-round1"), {"method": "epeft"})
    assert P.model_training_images(store, "t1", "m-round1") == ids[:3]
    evals = P.evaluations(store)
    e = P.submit_evaluation(datasets, evals, "t1", ds.id, [{"image_id": ids[0]}], "m-round1")
    assert e.targets == sorted(ids[3:]) and e.model_id == "m-round1"
    stock = P.submit_evaluation(datasets, evals, "t1", ds.id, [{"image_id": ids[0]}])
    assert stock.targets == sorted(ids[1:])
    with pytest.raises(InvalidInput, match="training images"):
        P.submit_evaluation(
            datasets, evals, "t1", ds.id, [{"image_id": i} for i in ids[3:]], "m-round1"
        )


def test_a_multi_class_dataset_trains_one_adapter_that_serves_every_class(env):
    from vplab.jobs import Job, JobStore, run_job

    settings, store, datasets, engine, _, ids, labels, _ = env
    ds = datasets.create_dataset("t1", "two", classes=[{"name": "cell"}, {"name": "edge"}])
    for image_id, label in list(zip(ids, labels))[:3]:
        datasets.add_image("t1", ds.id, store.get_bytes(keys.image("t1", image_id)))
        datasets.put_label("t1", ds.id, image_id, encode_label_map(label))
    datasets.add_image("t1", ds.id, store.get_bytes(keys.image("t1", ids[3])))
    jobs: JobStore[Job] = JobStore(store)
    job = jobs.create(
        Job(jobs.new_id(), "t1", ds.id, "epeft", "", steps=2, method_config={}, seed=0)
    )
    assert run_job(settings.model_copy(update={"train_views": 1}), "t1", job.job_id) == "SUCCEEDED"
    done = jobs.get("t1", job.job_id)
    assert done.train_images == sorted(ids[:3])  # images, not the per-class samples
    model = engine.model("t1", done.model_id)
    runs = P.prediction_runs(store)
    run = P.submit_prediction(
        datasets, runs, "t1", ds.id, [{"image_id": ids[0]}], model_id=done.model_id
    )
    assert run.targets == sorted(ids[1:4]) and run.classes == [1, 2]
    result = engine.predict_target("t1", run, ids[3], model)
    assert set(result["classes"]) == {"1", "2"}


def test_image_listing_reads_written_once_objects_once_and_still_sees_new_ones(env, monkeypatch):
    """A listing of every image reads each result, verdict and label provenance from the
    store once per process (they never change once written), yet shows a verdict or label
    written after the previous listing."""
    _, store, datasets, engine, ds, ids, _, _ = env
    runs = P.prediction_runs(store)
    run = P.submit_prediction(datasets, runs, "t1", ds, [{"image_id": ids[0]}], targets=ids[1:4])
    P.run_prediction(store, datasets, "t1", run.run_id, _predict(engine))
    first = {d["image_id"]: d for d in P.image_details(datasets, runs, "t1", ds)}
    assert first[ids[2]]["prediction"]["run_id"] == run.run_id
    assert first[ids[2]]["prediction"]["review"] is None
    read: list[str] = []
    get_json = store.get_json
    monkeypatch.setattr(store, "get_json", lambda key: read.append(key) or get_json(key))
    P.image_details(datasets, runs, "t1", ds)
    once = ("/results/", "/reviews/", "/labels/")
    assert not [k for k in read if any(part in k for part in once)], read
    P.review_result(datasets, runs, "t1", run.run_id, ids[2], P.ACCEPTED)
    read.clear()
    after = {d["image_id"]: d for d in P.image_details(datasets, runs, "t1", ds)}
    assert after[ids[2]]["prediction"]["review"] == "accepted"
    assert after[ids[2]]["provenance"] == {
        "run_id": run.run_id,
        "model_id": "",
        "source": "accepted",
    }
    assert after[ids[2]]["label_version"] == datasets.list_labels("t1", ds)[ids[2]]
    assert len([k for k in read if any(part in k for part in once)]) == 2  # the new two
    page, _ = P.list_results(store, runs, "t1", run.run_id, "image", 10)
    assert [r["image_id"] for r in page] == sorted(ids[1:4])
