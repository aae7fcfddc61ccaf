"""Data jobs without any service: submit rules, the import worker (cancel, resume after a
death, per-file errors) and the embedding precompute on the real feature engine (the
embedded mini models), whose cache a second run finds full."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from vplab import datajobs as D
from vplab.datasets import DatasetStore
from vplab.errors import InvalidInput, NotFound, QuotaExceeded
from vplab.images import encode_png
from vplab.inference.features import FeatureEngine
from vplab.inference.runtime import ModelRuntime
from vplab.masks import encode_label_map
from vplab.settings import Settings
from vplab.storage import LocalStore, keys

T = "t1"


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _images(n: int, size: int = 48) -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    return {
        f"images/im{i}.png": encode_png(rng.integers(0, 255, (size, size, 3), np.uint8))
        for i in range(n)
    }


@pytest.fixture
def env(tmp_path):
    settings = Settings(demo=True, data_dir=tmp_path / "store", quota_concurrent_jobs=3)
    store = LocalStore(tmp_path / "store")
    datasets = DatasetStore(store, settings)
    ds = datasets.create_dataset(T, "target", classes=[{"name": "polyp"}])
    return settings, store, datasets, ds.id, D.data_jobs(store)


def _archive(tmp_path, files: dict[str, bytes]):
    path = tmp_path / "upload.zip"
    path.write_bytes(_zip(files))
    return path


def _snapshot(store) -> dict[str, bytes]:
    return {k: store.get_bytes(k) for k in store.list("")}


def test_submit_rules_write_nothing_on_bad_input(env, tmp_path):
    _, store, datasets, ds, jobs = env
    before = _snapshot(store)
    with pytest.raises(InvalidInput, match="no images"):
        D.submit_import(datasets, jobs, T, ds, _archive(tmp_path, {"notes.txt": b"hi"}))
    bad_coco = b'{"images": [], "annotations": [{"id": 1, "image_id": 9}], "categories": []}'
    with pytest.raises(InvalidInput, match="image id 9"):
        D.submit_import(datasets, jobs, T, ds, _archive(tmp_path, {"c.json": bad_coco}))
    with pytest.raises(NotFound):
        D.submit_import(datasets, jobs, T, "d-000000000000", _archive(tmp_path, _images(1)))
    with pytest.raises(InvalidInput, match="no images to embed"):
        D.submit_embeddings(datasets, jobs, T, ds)
    with pytest.raises(InvalidInput, match="encoders"):
        D.submit_embeddings(datasets, jobs, T, ds, ["clip"])
    assert _snapshot(store) == before
    # A valid archive: its record and archive, and room for as many jobs as the quota says.
    for _ in range(3):
        job = D.submit_import(datasets, jobs, T, ds, _archive(tmp_path, _images(2)))
        assert job.total == 2 and store.exists(keys.data_job_archive(T, job.id))
    with pytest.raises(QuotaExceeded):
        D.submit_import(datasets, jobs, T, ds, _archive(tmp_path, _images(2)))
    assert len(jobs.active()) == 3  # what a restarted training app launches again


def test_an_import_runs_resumes_after_its_worker_died_and_reports_per_file(env, tmp_path):
    _, store, datasets, ds, jobs = env
    files = _images(3)
    mask = np.zeros((48, 48), np.uint8)
    mask[4:20, 4:20] = 1
    files["masks/im0.png"] = encode_label_map(mask)
    files["images/broken.png"] = b"\x89PNG\r\n\x1a\n garbage"
    job = D.submit_import(datasets, jobs, T, ds, _archive(tmp_path, files))
    assert job.total == 4 and datasets.list_images(T, ds) == []  # nothing before it runs
    # A first worker imported one image, then died (its record says RUNNING).
    datasets.add_image(T, ds, files["images/im1.png"], "im1.png")
    job.state, job.attempts = D.RUNNING, 1
    jobs.save(job)
    assert D.run_data_job(store, datasets, T, job.id) == D.SUCCEEDED
    done = jobs.get(T, job.id)
    assert done.attempts == 2 and done.done == 4 and done.total == 4
    assert done.report["images_added"] == 2 and done.report["images_present"] == 1
    assert done.report["labels_written"] == 1
    assert [e["entry"] for e in done.errors] == ["images/broken.png"]
    assert len(datasets.list_images(T, ds)) == 3 and len(datasets.list_labels(T, ds)) == 1
    events = jobs.events(T, job.id)
    assert [e["phase"] for e in events] == ["start", "item", "item", "item", "item", "end"]
    assert [e["seq"] for e in events] == list(range(1, 7))
    assert not store.exists(keys.data_job_archive(T, job.id))  # ended: the upload is gone
    assert D.run_data_job(store, datasets, T, job.id) == D.SUCCEEDED  # ended: a no-op


def test_a_cancelled_import_stops_between_files_and_keeps_what_it_imported(env, tmp_path):
    _, store, datasets, ds, jobs = env
    job = D.submit_import(datasets, jobs, T, ds, _archive(tmp_path, _images(4)))

    class CancelAfterOne(DatasetStore):
        def put_image(self, *args, **kwargs):
            added = super().put_image(*args, **kwargs)
            store.put_bytes(keys.job_cancel(T, job.id, keys.DATA_JOBS), b"1")  # the API's marker
            return added

    cancelling = CancelAfterOne(store, datasets.settings)
    assert D.run_data_job(store, cancelling, T, job.id, cancel_check_s=0.0) == D.CANCELLED
    ended = jobs.get(T, job.id)
    assert ended.done == 1 and len(datasets.list_images(T, ds)) == 1
    assert jobs.events(T, job.id)[-1]["state"] == D.CANCELLED
    assert not store.exists(keys.data_job_archive(T, job.id))


def test_precompute_fills_the_cache_of_every_image_and_a_second_run_finds_it(env):
    settings, store, datasets, ds, jobs = env
    ids = [datasets.add_image(T, ds, data, name) for name, data in _images(3).items()]
    engine = FeatureEngine(ModelRuntime(settings, store))
    job = D.submit_embeddings(datasets, jobs, T, ds)
    assert job.encoders == ["sam", "dinov2"] and job.total == 3
    assert D.run_data_job(store, datasets, T, job.id, engine.precompute) == D.SUCCEEDED
    done = jobs.get(T, job.id)
    assert done.report == {"computed": 6, "cached": 0} and done.errors == []
    for encoder_id in (engine.rt.sam_encoder_id, engine.rt.dino_encoder_id):
        for image_id in ids:
            assert store.exists(keys.embedding(T, encoder_id, image_id))
    misses = engine.misses
    # The first click's embedding now comes from the cache.
    again = D.submit_embeddings(datasets, jobs, T, ds, ["sam"])
    assert D.run_data_job(store, datasets, T, again.id, engine.precompute) == D.SUCCEEDED
    assert jobs.get(T, again.id).report == {"computed": 0, "cached": 3}
    assert engine.misses == misses
    # An image whose bytes are gone is that item's error; the others still count.
    lost = datasets.add_image(T, ds, encode_png(np.zeros((40, 40, 3), np.uint8)), "lost.png")
    store.delete(keys.image(T, lost))
    third = D.submit_embeddings(datasets, jobs, T, ds, ["sam"])
    assert D.run_data_job(store, datasets, T, third.id, engine.precompute) == D.SUCCEEDED
    ended = jobs.get(T, third.id)
    assert [e["entry"] for e in ended.errors] == [lost] and "sam:" in ended.errors[0]["error"]
    assert ended.report == {"computed": 0, "cached": 3} and ended.done == 4
