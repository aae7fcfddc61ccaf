"""Rules that every transport shares, tested in the library without any service:
job submission (vplab.jobs.submit_job) and visual-prompt targets (DatasetStore)."""

from __future__ import annotations

import numpy as np
import pytest

from vplab.datasets import DatasetStore
from vplab.errors import InvalidInput, NotFound, PayloadTooLarge, QuotaExceeded
from vplab.images import encode_png
from vplab.jobs import JobStore, submit_job
from vplab.method_names import METHOD_NAMES
from vplab.settings import Settings
from vplab.states import JobState
from vplab.storage import LocalStore


def _image(seed: int) -> bytes:
    return encode_png(np.random.default_rng(seed).integers(0, 255, (16, 20, 3), np.uint8))


@pytest.fixture()
def lab(tmp_path):
    settings = Settings(data_dir=tmp_path, quota_concurrent_jobs=2, max_targets_per_call=4)
    store = LocalStore(tmp_path / "store")
    datasets = DatasetStore(store, settings)
    ds = datasets.create_dataset("t1", "cells").id
    ids = [datasets.add_image("t1", ds, _image(i)) for i in range(4)]
    other = datasets.create_dataset("t1", "other").id
    outsider = datasets.add_image("t1", other, _image(99))
    return datasets, JobStore(store), ds, ids, other, outsider


def _label(datasets, ds, image_id):
    datasets.put_label("t1", ds, image_id, encode_png(np.full((16, 20), 255, np.uint8)))


def test_submit_job_validates_before_writing(lab):
    datasets, jobs, ds, ids, other, _ = lab
    with pytest.raises(InvalidInput, match="no labels"):
        submit_job(datasets, jobs, "t1", ds)
    _label(datasets, ds, ids[0])
    bad = [
        (dict(method="nope"), InvalidInput, "unknown PEFT method"),
        (dict(method_config={"nope": 1}), InvalidInput, "unknown config field"),
        (dict(steps=-1), InvalidInput, "steps"),
        (dict(lr=0.0), InvalidInput, "lr"),
        (dict(lr=float("nan")), InvalidInput, "lr"),
        (dict(seed=-2), InvalidInput, "seed"),
        (dict(recipe="micro-sam"), InvalidInput, "no recipe 'micro-sam'"),  # E-PEFT has none
        (dict(method="lora", recipe="nope"), InvalidInput, "its recipes: vplab, micro-sam"),
    ]
    for kwargs, error, match in bad:
        with pytest.raises(error, match=match):
            submit_job(datasets, jobs, "t1", ds, **kwargs)
    with pytest.raises(NotFound):
        submit_job(datasets, jobs, "t2", ds)  # another tenant's dataset
    with pytest.raises(InvalidInput, match="no labels"):
        submit_job(datasets, jobs, "t1", other)
    assert jobs.list("t1") == []  # nothing was written by any refusal


def test_submit_job_defaults_and_quota(lab):
    datasets, jobs, ds, ids, _, _ = lab
    _label(datasets, ds, ids[0])
    job = submit_job(datasets, jobs, "t1", ds)
    assert (job.method, job.steps, job.state) == ("epeft", 200, JobState.QUEUED)  # the recipe's
    assert jobs.get("t1", job.job_id).state == "QUEUED" and jobs.active() == [("t1", job.job_id)]
    assert job.recipe == "vplab"
    tuned = submit_job(datasets, jobs, "t1", ds, method="lora", recipe="micro-sam")
    assert (tuned.recipe, jobs.get("t1", tuned.job_id).recipe) == ("micro-sam", "micro-sam")
    with pytest.raises(QuotaExceeded):
        submit_job(datasets, jobs, "t1", ds)


def test_visual_prompt_targets(lab):
    datasets, _, ds, ids, _, outsider = lab
    assert datasets.visual_prompt_targets("t1", ds, [ids[0]]) == sorted(ids[1:])
    assert datasets.visual_prompt_targets("t1", ds, [ids[0]], []) == sorted(ids[1:])
    assert datasets.visual_prompt_targets("t1", ds, [ids[0]], [ids[2]]) == [ids[2]]
    for refs, targets in (([outsider], None), ([ids[0]], [outsider])):
        with pytest.raises(NotFound, match="not found in dataset"):
            datasets.visual_prompt_targets("t1", ds, refs, targets)
    with pytest.raises(NotFound):
        datasets.visual_prompt_targets("t2", ds, [ids[0]])
    with pytest.raises(InvalidInput):
        datasets.visual_prompt_targets("t1", "", [ids[0]])
    with pytest.raises(InvalidInput, match="at least one reference"):
        datasets.visual_prompt_targets("t1", ds, [])
    with pytest.raises(InvalidInput, match="no target images"):
        datasets.visual_prompt_targets("t1", ds, ids, None)
    with pytest.raises(PayloadTooLarge):
        datasets.visual_prompt_targets("t1", ds, [*ids, outsider], [ids[0]])  # 5 refs > 4
    with pytest.raises(InvalidInput, match="64 lowercase hex"):
        datasets.visual_prompt_targets("t1", ds, [ids[0]], ["../x"])


def test_method_name_catalogue_equals_the_registry():
    from vplab.peft import method_names

    assert sorted(METHOD_NAMES) == method_names()
