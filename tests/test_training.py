"""The trainer: resume equivalence, cancellation, learning, bad input."""

import hashlib

import pytest
import torch

from vplab.demo import load_demo_samples
from vplab.errors import InvalidInput
from vplab.models import build_sam
from vplab.storage import LocalStore, keys
from vplab.training import CheckpointStore, LabeledImage, TrainConfig, Trainer


def _samples(n=3, size=96, seed=0):
    return [
        LabeledImage(f"s{i}", im, m) for i, (im, m) in enumerate(load_demo_samples(n, size, seed))
    ]


def _config(**kw):
    base = dict(
        method="epeft",
        steps=12,
        eval_every=4,
        checkpoint_every=4,
        n_dihedral=2,
        n_photometric=0,
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


def _trainable(sam):
    return {n: p.detach().clone() for n, p in sam.named_parameters() if p.requires_grad}


class Crash(Exception):
    pass


@pytest.mark.parametrize(
    "method", ["epeft", "fact"]
)  # fact: dropout, so the global RNG matters too
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, method):
    samples = _samples()
    full = Trainer(build_sam("sam_tiny"), _config(method=method), samples).run()

    store = LocalStore(tmp_path)
    ckpts = CheckpointStore(store, "t1", "j1")

    def crash_at_step_6(event):
        if event.phase == "train" and event.step == 6:
            raise Crash()  # the worker dies: the step-4 checkpoint is the latest

    with pytest.raises(Crash):
        Trainer(
            build_sam("sam_tiny"),
            _config(method=method),
            samples,
            checkpoints=ckpts,
            on_progress=crash_at_step_6,
        ).run()
    assert ckpts.steps() == [4]
    resumed = Trainer(
        build_sam("sam_tiny"), _config(method=method), samples, checkpoints=ckpts
    ).run()

    assert resumed.steps_done == full.steps_done == 12
    a, b = _trainable(full.model), _trainable(resumed.model)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed.history == full.history
    assert resumed.best_val_iou == full.best_val_iou and resumed.best_step == full.best_step
    assert ckpts.steps()[-1] == 12 and len(ckpts.steps()) <= 2  # old checkpoints pruned


def test_cancel_stops_and_checkpoints(tmp_path):
    ckpts = CheckpointStore(LocalStore(tmp_path), "t1", "j2")
    seen = []

    def progress(e):
        seen.append(e)

    result = Trainer(
        build_sam("sam_tiny"),
        _config(steps=50),
        _samples(),
        checkpoints=ckpts,
        on_progress=progress,
        should_stop=lambda: len([e for e in seen if e.phase == "train"]) >= 5,
    ).run()
    assert result.cancelled and result.steps_done == 5
    assert ckpts.steps()[-1] == 5
    assert seen[-1].phase == "cancelled"
    train_events = [e for e in seen if e.phase == "train"]
    assert all(e.eta_s is not None and e.loss is not None for e in train_events)


def test_bad_config_and_data_rejected_before_any_work(tmp_path):
    sam = build_sam("sam_tiny")
    with pytest.raises(InvalidInput, match="unknown PEFT method"):
        Trainer(sam, _config(method="nope"), _samples())
    with pytest.raises(InvalidInput, match="steps must be > 0"):
        Trainer(sam, _config(steps=0), _samples())
    with pytest.raises(InvalidInput, match="empty"):
        Trainer(sam, _config(), [])
    assert not any(p.requires_grad is False for p in sam.parameters())  # model untouched


def test_frozen_methods_never_run_the_encoder_in_the_loop(monkeypatch):
    sam = build_sam("sam_tiny")
    calls = []
    sam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    trainer = Trainer(sam, _config(steps=6, eval_every=3), _samples(2))
    trainer.run()
    bank_and_val = len(trainer.bank) + len(trainer.val_bank)
    assert len(calls) == bank_and_val  # one pass per bank view, none per step


def test_late_methods_run_only_late_blocks_in_the_loop():
    sam = build_sam("sam_tiny")
    early, late = [], []
    sam.image_encoder.blocks[0].register_forward_hook(lambda *a: early.append(1))
    sam.image_encoder.blocks[3].register_forward_hook(lambda *a: late.append(1))
    cfg = _config(method="late-lora", method_config={"start_block": 2}, steps=4, eval_every=4)
    trainer = Trainer(sam, cfg, _samples(2))
    trainer.run()
    n_bank = len(trainer.bank) + len(trainer.val_bank)
    assert len(early) == n_bank  # block 0 ran only while caching activations
    assert len(late) > n_bank  # block 3 runs every step


@pytest.mark.slow
def test_epeft_learns_on_the_demo_task():
    """Fails if gradients do not reach the adapter: IoU must rise clearly above the start."""
    samples = [
        LabeledImage(f"s{i}", im, m) for i, (im, m) in enumerate(load_demo_samples(6, 256, 0))
    ]
    cfg = TrainConfig(
        method="epeft", steps=150, eval_every=50, checkpoint_every=10**6, n_photometric=0
    )
    result = Trainer(build_sam("sam_tiny"), cfg, samples).run()
    assert result.best_val_iou > result.initial_val_iou + 0.3, (
        result.initial_val_iou,
        result.history,
    )


@pytest.mark.slow
def test_ptsam_md_learns_on_a_promptable_pretrained_tiny_sam():
    """PTSAM specialises a *pretrained* promptable SAM (see vplab.demo.pretrain_promptable_tiny).

    The 40-second tiny stand-in for SAM's pretraining is a weak base, and whether decoder
    prompts alone can steer it depends on the pretraining seed. With the current prompt
    sampler, seed 1 learns (0.0 -> 0.79). Seeds 0 and 2 stay at a constant mask (0.49 and
    0.23) for any lr from 0.01 to 0.2 (docs/DESIGN-NOTES.md). The test pins a base that can
    learn: it then fails if PTSAM's prompts stop reaching the decoder or stop training.
    """
    from vplab.demo import pretrain_promptable_tiny

    base = pretrain_promptable_tiny(steps=600, seed=1)
    samples = [
        LabeledImage(f"s{i}", im, m) for i, (im, m) in enumerate(load_demo_samples(6, 256, 0))
    ]
    cfg = TrainConfig(
        method="ptsam-md", steps=150, eval_every=50, checkpoint_every=10**6, n_photometric=0
    )
    result = Trainer(base, cfg, samples).run()
    assert result.trainable_params == 2048
    assert result.best_val_iou > result.initial_val_iou + 0.3, (
        result.initial_val_iou,
        result.history,
    )


def test_bank_is_cached_in_the_store_and_reused(tmp_path):
    """A second run (e.g. a job resumed after its worker died) reads every view back
    instead of running the encoder, and trains to the identical result."""
    from vplab.training.feature_cache import StoreFeatureCache

    store = LocalStore(tmp_path)
    cache = StoreFeatureCache(store, "t1", "sam.sam_tiny.0123456789abcdef")
    samples = [
        LabeledImage(hashlib.sha256(s.image.tobytes()).hexdigest(), s.image, s.label)
        for s in _samples(2)
    ]
    first = Trainer(build_sam("sam_tiny"), _config(steps=4), samples, feature_cache=cache).run()
    cached = store.list(keys.cache_prefix("t1"))
    assert len(cached) == 2 + 1  # 2 dihedral views of the training image + the validation view
    assert all(".bank.emb." in k for k in cached)

    sam = build_sam("sam_tiny")
    calls = []
    sam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    second = Trainer(sam, _config(steps=4), samples, feature_cache=cache).run()
    assert calls == []  # every view came from the store
    assert store.list(keys.cache_prefix("t1")) == cached
    a, b = _trainable(first.model), _trainable(second.model)
    assert all(torch.equal(a[n], b[n]) for n in a)
