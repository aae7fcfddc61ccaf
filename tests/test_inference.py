"""Service engines without any service: FeatureEngine, SegmentationEngine, run_job."""

import numpy as np
import pytest
import torch

from vplab.datasets import DatasetStore
from vplab.demo import load_demo_samples
from vplab.errors import InvalidInput, NotFound, PayloadTooLarge, Unavailable
from vplab.images import encode_png
from vplab.inference.features import FeatureEngine
from vplab.inference.runtime import ModelRuntime
from vplab.inference.segmentation import Prompt, SegmentationEngine
from vplab.jobs import Job, JobStore, run_job
from vplab.masks import decode_rle, encode_rle
from vplab.predictions import training_gain
from vplab.settings import Settings
from vplab.storage import LocalStore, keys


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    settings = Settings(
        demo=True,
        data_dir=d,
        train_checkpoint_every=2,
        train_eval_every=2,
        train_views=1,
        max_targets_per_call=3,
    )
    store = LocalStore(d)
    datasets = DatasetStore(store, settings)
    samples = load_demo_samples(3, 96, seed=5)
    ids = {}
    for tenant in ("t1", "t2"):
        ds = datasets.create_dataset(tenant, "cells")
        offset = 0 if tenant == "t1" else 50
        ids[tenant] = (
            ds.id,
            [
                datasets.add_image(
                    tenant,
                    ds.id,
                    encode_png(np.clip(im.astype(int) + offset, 0, 255).astype(np.uint8)),
                )
                for im, _ in samples
            ],
        )
    for image_id, (_, m) in zip(ids["t1"][1], samples):
        datasets.put_label("t1", ids["t1"][0], image_id, encode_png(m.astype(np.uint8) * 255))
    features = FeatureEngine(ModelRuntime(settings, store))
    return settings, store, features, SegmentationEngine(features), ids, samples


def test_embedding_cache_miss_then_hit_per_tenant(env):
    _settings, store, features, _, ids, _ = env
    features.lru = type(features.lru)(features.lru.max_bytes)  # cold in-process cache
    image = ids["t1"][1][0]
    miss = features.embed("t1", image)
    assert not miss.cache_hit and store.exists(miss.cache_key)
    assert miss.cache_key == keys.embedding("t1", features.rt.sam_encoder_id, image)
    hit = features.embed("t1", image)
    assert hit.cache_hit and hit.shape == (1, 256, 16, 16)
    features.lru = type(features.lru)(features.lru.max_bytes)
    assert features.embed("t1", image).cache_hit  # from the object store
    assert not features.embed("t1", image, "dinov2").cache_hit
    with pytest.raises(NotFound):
        features.embed("t2", image)  # t1's image is not t2's
    with pytest.raises(InvalidInput, match="unknown encoder"):
        features.embed("t1", image, "clip")


def test_dino_encoder_id_without_a_checkpoint_is_unavailable(tmp_path):
    # The DINOv2 cache key is computed before any model is built: no checkpoint configured
    # must be the same clear Unavailable as building the model, not a TypeError.
    rt = ModelRuntime(Settings(data_dir=tmp_path, dino_checkpoint=None), LocalStore(tmp_path))
    with pytest.raises(Unavailable, match="VPLAB_DINO_CHECKPOINT"):
        _ = rt.dino_encoder_id


def test_segment_prompt_and_mask_input(env):
    _, _, _, engine, ids, _ = env
    image = ids["t1"][1][0]
    masks, (h, w) = engine.segment_prompt(
        "t1", image, Prompt(points=[(40.0, 40.0, 1), (2.0, 2.0, 0)], multimask=True)
    )
    assert (h, w) == (96, 96) and len(masks) == 3
    assert masks[0][1] >= masks[1][1] >= masks[2][1]  # best first
    again, _ = engine.segment_prompt(
        "t1", image, Prompt(points=[(40.0, 40.0, 1)], mask_input=masks[0][0])
    )
    assert decode_rle(again[0][0]).shape == (96, 96)
    with pytest.raises(InvalidInput, match="mask_input is"):
        engine.segment_prompt(
            "t1",
            image,
            Prompt(points=[(1.0, 1.0, 1)], mask_input=encode_rle(np.ones((5, 5), bool))),
        )
    with pytest.raises(InvalidInput, match="outside"):
        engine.segment_prompt("t1", image, Prompt(points=[(500.0, 1.0, 1)]))
    with pytest.raises(PayloadTooLarge):
        engine.segment_prompt("t1", image, Prompt(points=[(1.0, 1.0, 1)] * 1000))
    with pytest.raises(InvalidInput, match="at least one"):
        engine.segment_prompt("t1", image, Prompt(points=[]))


def test_segment_prompts_batches_what_shares_an_embedding_and_isolates_errors(env):
    _, _, _, engine, ids, _ = env
    a, b = ids["t1"][1][:2]
    calls = [
        ("t1", a, Prompt(points=[(40.0, 40.0, 1)], multimask=True)),
        ("t1", a, Prompt(points=[(20.0, 60.0, 1)], multimask=True)),  # batched with the first
        ("t1", a, Prompt(points=[(20.0, 60.0, 1), (2.0, 2.0, 0)], multimask=True)),  # 2 points
        ("t1", b, Prompt(points=[(40.0, 40.0, 1)], multimask=True)),  # another embedding
        ("t1", a, Prompt(points=[(500.0, 1.0, 1)])),  # invalid: fails alone
        ("t1", a, Prompt(points=[], box=(10.0, 10.0, 60.0, 60.0))),  # a box: on its own
        ("t1", a, Prompt(points=[(30.0, 30.0, 1)])),  # single mask output
        ("t2", a, Prompt(points=[(40.0, 40.0, 1)])),  # t1's image: NotFound for t2
    ]
    decoded = []
    original = engine.features.segmenter.decode

    def counting(*args, **kwargs):
        decoded.append(len(args[1]) if args[1] is not None else 1)
        return original(*args, **kwargs)

    engine.features.segmenter.decode = counting
    try:
        out = engine.segment_prompts([(t, i, p, None) for t, i, p in calls])
    finally:
        del engine.features.segmenter.decode
    assert isinstance(out[4], InvalidInput) and isinstance(out[7], NotFound)
    # Batch of 2 (same image, one point, multimask), then one call for each other shape.
    assert sorted(decoded) == [1, 1, 1, 1, 2], decoded
    for (tenant, image, prompt), got in zip(calls, out):
        if isinstance(got, Exception):
            continue
        masks, size = engine.segment_prompt(tenant, image, prompt)
        assert size == got[1] == (96, 96)
        assert [m for m, _ in masks] == [m for m, _ in got[0]]  # the same masks, same order
        np.testing.assert_allclose([x for _, x in masks], [x for _, x in got[0]], atol=1e-5)


def test_segment_prompts_falls_back_to_one_call_each_when_a_batch_fails(env):
    _, _, _, engine, ids, _ = env
    a = ids["t1"][1][0]
    calls = [("t1", a, Prompt(points=[(x, 40.0, 1)]), None) for x in (20.0, 40.0, 60.0)]
    original = engine.features.segmenter.decode

    def fails_in_batches(*args, **kwargs):
        if len(args[1]) > 1:
            raise RuntimeError("out of memory")
        return original(*args, **kwargs)

    engine.features.segmenter.decode = fails_in_batches
    try:
        out = engine.segment_prompts(calls)
    finally:
        del engine.features.segmenter.decode
    for (tenant, image, prompt, _), got in zip(calls, out):
        assert got[0][0][0] == engine.segment_prompt(tenant, image, prompt)[0][0][0]


def test_decoder_batch_size_follows_the_measurement(env):
    from vplab.inference.segmentation import decoder_batch_size

    settings, _, features, _, _, _ = env
    assert decoder_batch_size(settings, features.segmenter) == 1  # CPU: it did not pay
    gpu = type("S", (), {"img_size": 1024, "device": torch.device("cuda")})()
    assert decoder_batch_size(settings, gpu) == 16
    forced = settings.model_copy(update={"segment_batch_max": 8})
    assert decoder_batch_size(forced, features.segmenter) == 8


def test_visual_prompt_validates_before_yielding(env):
    _, _, _, engine, ids, samples = env
    ref = [(ids["t1"][1][0], encode_rle(samples[0][1]))]
    results = list(engine.visual_prompt("t1", ref, ids["t1"][1][1:]))
    assert [r[1] for r in results] == ids["t1"][1][1:]
    assert all(decode_rle(r[2]).shape == (96, 96) for r in results)
    with pytest.raises(PayloadTooLarge):
        next(engine.visual_prompt("t1", ref, ids["t1"][1] * 2))
    with pytest.raises(NotFound):
        next(engine.visual_prompt("t1", ref, [ids["t2"][1][0]]))
    with pytest.raises(InvalidInput, match="empty"):
        next(
            engine.visual_prompt(
                "t1", [(ids["t1"][1][0], encode_rle(np.zeros((96, 96), bool)))], ids["t1"][1][1:]
            )
        )


def test_run_job_trains_saves_and_the_model_serves(env):
    settings, store, _, engine, ids, _ = env
    jobs = JobStore(store)
    job = jobs.create(
        Job(
            job_id=jobs.new_id(),
            tenant="t1",
            dataset_id=ids["t1"][0],
            method="epeft",
            base_model="",
            steps=4,
        )
    )
    assert jobs.active() == [("t1", job.job_id)]
    assert run_job(settings, "t1", job.job_id) == "SUCCEEDED"
    done = jobs.get("t1", job.job_id)
    assert done.model_id and done.attempts == 1 and jobs.active() == []
    events = jobs.events("t1", job.job_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["state"] == "SUCCEEDED" and events[-1]["model_id"] == done.model_id
    assert run_job(settings, "t1", job.job_id) == "SUCCEEDED"  # idempotent once ended
    # 3 labels: no held-out image, so every one was trained on and there is no gain to show.
    assert done.train_images == sorted(ids["t1"][1])
    assert (done.zero_shot_miou, done.tuned_miou, done.gain_images) == (None, None, 0)
    model = engine.model("t1", done.model_id)
    # The gain on images it did not train on: the stock and the tuned pipeline, both scored.
    datasets = DatasetStore(store, settings)
    assert training_gain(engine, datasets, "t1", ids["t1"][0], done.train_images, model) is None
    gain = training_gain(engine, datasets, "t1", ids["t1"][0], done.train_images[:2], model)
    assert gain is not None and gain[2] == 1 and all(0.0 <= g <= 1.0 for g in gain[:2])
    masks, _ = engine.segment_prompt("t1", ids["t1"][1][0], Prompt(points=[(40.0, 40.0, 1)]), model)
    assert len(masks) == 1
    with pytest.raises(NotFound):
        engine.model("t2", done.model_id)
    with pytest.raises(InvalidInput, match="needs prompts"):
        engine.auto_segment("t1", ids["t1"][1][0], model)


def test_run_job_failures_and_cancel(env):
    settings, store, _, _, ids, _ = env
    jobs = JobStore(store)
    no_labels = jobs.create(
        Job(
            job_id=jobs.new_id(),
            tenant="t2",
            dataset_id=ids["t2"][0],
            method="epeft",
            base_model="",
            steps=2,
        )
    )
    assert run_job(settings, "t2", no_labels.job_id) == "FAILED"
    assert "empty" in jobs.get("t2", no_labels.job_id).error
    wrong_base = jobs.create(
        Job(
            job_id=jobs.new_id(),
            tenant="t1",
            dataset_id=ids["t1"][0],
            method="epeft",
            base_model="vit_h",
            steps=2,
        )
    )
    assert run_job(settings, "t1", wrong_base.job_id) == "FAILED"
    assert "not served here" in jobs.get("t1", wrong_base.job_id).error
    cancelled = jobs.create(
        Job(
            job_id=jobs.new_id(),
            tenant="t1",
            dataset_id=ids["t1"][0],
            method="epeft",
            base_model="",
            steps=500,
        )
    )
    jobs.request_cancel("t1", cancelled.job_id)
    assert run_job(settings, "t1", cancelled.job_id) == "CANCELLED"
    assert not jobs.get("t1", cancelled.job_id).model_id
    from vplab.errors import Conflict

    with pytest.raises(Conflict):
        jobs.request_cancel("t1", cancelled.job_id)
