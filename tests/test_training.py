"""The trainer: resume equivalence, cancellation, learning, bad input."""

import hashlib

import pytest
import torch

from vplab.demo import load_demo_samples
from vplab.errors import InvalidInput
from vplab.models import build_sam
from vplab.storage import LocalStore, keys
from vplab.training import CheckpointStore, LabeledImage, TrainConfig, Trainer
from vplab.training.prompts import corrective_points


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


def _miniworld_shots(domain="polyps", n=6):
    from vplab.bench.quality import samples

    return samples(domain, list(range(n)))


@pytest.mark.slow
def test_epeft_learns_on_the_embedded_sam_mini():
    """Fails if gradients do not reach the adapter: on the pretrained sam_mini (#11), the
    IoU through the serving path must rise clearly above the stock decoder's."""
    cfg = TrainConfig(
        method="epeft", steps=150, eval_every=50, checkpoint_every=10**6, n_photometric=0
    )
    result = Trainer(build_sam("sam_mini"), cfg, _miniworld_shots()).run()
    assert result.best_val_iou > result.initial_val_iou + 0.15, (
        result.initial_val_iou,
        result.history,
    )


@pytest.mark.slow
def test_ptsam_md_learns_on_the_embedded_sam_mini():
    """PTSAM specialises a *pretrained* promptable SAM: 2,048 decoder-prompt parameters on
    sam_mini's frozen decoder turn its prompt-free output into the domain's class mask.
    Fails if PTSAM's prompts stop reaching the decoder or stop training."""
    cfg = TrainConfig(
        method="ptsam-md", steps=150, eval_every=50, checkpoint_every=10**6, n_photometric=0
    )
    result = Trainer(build_sam("sam_mini"), cfg, _miniworld_shots()).run()
    assert result.trainable_params == 2048
    assert result.best_val_iou > result.initial_val_iou + 0.15, (
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
    # 2 dihedral views of each of the 2 images: below 10 images every one trains (#12) and
    # validation reads the identity views, which are already cached
    assert len(cached) == 2 * 2
    assert all(".bank.emb." in k for k in cached)

    sam = build_sam("sam_tiny")
    calls = []
    sam.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    second = Trainer(sam, _config(steps=4), samples, feature_cache=cache).run()
    assert calls == []  # every view came from the store
    assert store.list(keys.cache_prefix("t1")) == cached
    a, b = _trainable(first.model), _trainable(second.model)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_trainer_trains_and_serves_one_output_and_validates_through_the_serving_path(tmp_path):
    """#12: a 5-image job trains on all 5; the IoU it reports is what the saved model gives
    through the serving path (load from disk -> PromptSegmenter with the adapter's output
    -> decode_class), not a head or prompt form serving never uses."""
    from vplab.masks import iou
    from vplab.models.base import resolve_base_sam
    from vplab.peft.adapter_io import (
        adapter_output,
        load_adapter,
        read_adapter_config,
        save_adapter,
    )
    from vplab.segmentation import PromptSegmenter
    from vplab.training.prompts import validation_prompts
    from vplab.training.validation import served_mask

    samples = _samples(5)
    trainer = Trainer(build_sam("sam_tiny"), _config(steps=8, eval_every=4), samples)
    result = trainer.run()
    assert len(trainer.bank) == 5 * 2 and result.val_on_train  # 5 images x 2 views, no holdout
    assert result.output == "token0"  # E-PEFT's recipe
    base = resolve_base_sam("sam_tiny")
    out = save_adapter(
        result.model, tmp_path / "a", "epeft", result.method_config, base.ref(), result.output
    )
    cfg = read_adapter_config(out)
    assert adapter_output(cfg) == "token0"
    served, _ = load_adapter(out, base.build(), base.sha256)
    seg = PromptSegmenter(served, output=adapter_output(cfg))
    ious = []
    for s in samples:
        emb = seg.embed(s.image)
        ious.append(
            iou(
                served_mask(seg, emb, validation_prompts(torch.as_tensor(s.label))).numpy(), s.label
            )
        )
    assert abs(sum(ious) / len(ious) - result.best_val_iou) < 0.02  # bf16 cache rounding aside
    # a config the method cannot serve is refused before anything runs
    with pytest.raises(InvalidInput):
        Trainer(build_sam("sam_tiny"), _config(method="ptsam-md", output="best_of_3"), samples)
    with pytest.raises(InvalidInput):
        Trainer(build_sam("sam_tiny"), _config(augmentation="online"), samples)  # frozen encoder


def test_best_of_3_trains_the_iou_head_that_serving_picks_with():
    """With output "best_of_3" the decoder gives 3 masks and the loss reaches the IoU head
    (the pipeline picks among the masks and scores them with it)."""
    samples = _samples(3)
    cfg = _config(method="freeze-encoder", steps=1, output="best_of_3", lr=1e-3)
    trainer = Trainer(build_sam("sam_tiny"), cfg, samples)
    trainer._prepare()
    item = trainer.bank[0]
    ((logits, iou_pred, _),) = trainer._rounds(item, trainer._embedding(item), trainer.sampler)
    assert logits.shape[1] == 3 and iou_pred is not None and iou_pred.shape == (1, 3)
    loss = trainer._loss([item])
    loss.backward()
    head = trainer.sam.mask_decoder.iou_prediction_head
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_vectors_are_not_weight_decayed():
    """#12: AdamW's decay would pull IA3 scales to 0 (their identity is 1)."""
    trainer = Trainer(
        build_sam("sam_tiny"), _config(method="epeft-ia3", weight_decay=0.5), _samples(2)
    )
    trainer._prepare()
    groups = trainer.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [0.5, 0.0]
    assert all(p.ndim < 2 for p in groups[1]["params"]) and len(groups[1]["params"]) > 0
    ia3 = [n for n, p in trainer.params.items() if p.ndim < 2]
    assert ia3 and all(p.ndim >= 2 for p in groups[0]["params"])


def test_online_augmentation_draws_fresh_views_for_encoder_methods():
    from vplab.training.augment import random_view

    image, label = _samples(1)[0].image, _samples(1)[0].label
    torch.manual_seed(0)
    views = [random_view(image, label) for _ in range(4)]
    assert all(
        v.shape == image.shape and m.shape == label.shape and m.dtype == bool for v, m in views
    )
    assert len({v.tobytes() for v, _ in views}) == 4  # fresh each time
    torch.manual_seed(0)
    again = random_view(image, label)
    assert (again[0] == views[0][0]).all() and (again[1] == views[0][1]).all()  # seeded
    cfg = TrainConfig(method="ptsam", steps=1)
    assert (
        cfg.resolved().augmentation == "online"
        and TrainConfig(method="ptsam-md").resolved().augmentation == "bank"
    )


@pytest.mark.parametrize(
    "method,prompt_free",
    [("cellseg1-md", False), ("cellseg1-md-pf", True), ("cellseg1-pf", True), ("samed", True)],
)
def test_prompt_free_methods_train_and_validate_without_any_prompt(method, prompt_free):
    """The PTSAM paper ran CellSeg1 (modified) and SAMed with SAM's no-prompt embedding
    (#12 point 5): their prompt-free variants never call the prompt encoder, in training or
    in validation, while the prompted CellSeg1 does; all of them learn something."""
    sam = build_sam("sam_tiny")
    calls: list[int] = []
    sam.prompt_encoder.register_forward_hook(lambda *a: calls.append(1))
    result = Trainer(sam, _config(method=method, steps=4, eval_every=2), _samples(2)).run()
    assert result.steps_done == 4 and len(result.history) == 2
    assert (not calls) == prompt_free, len(calls)


def test_an_iterative_prompting_update_adds_a_positive_in_the_misses_and_a_negative_in_the_leaks():
    gen = torch.Generator().manual_seed(0)
    target = torch.zeros(16, 16, dtype=torch.bool)
    target[4:8, 4:8] = True
    half = target.clone()
    half[4:6] = False  # misses two rows
    half[10:12, 10:12] = True  # and leaks a square
    for _ in range(20):
        points, labels = corrective_points(half, target, gen)
        (xp, yp), (xn, yn) = points.long().tolist()
        assert labels.tolist() == [1, 0]
        assert target[yp, xp] and not half[yp, xp]  # a miss
        assert half[yn, xn] and not target[yn, xn]  # a leak
        points, labels = corrective_points(target, target, gen)  # nothing to fix: fallbacks
        (xp, yp), (xn, yn) = points.long().tolist()
        assert target[yp, xp] and not target[yn, xn]
    points, labels = corrective_points(half, torch.zeros_like(target), gen)  # empty target
    assert labels.tolist() == [0] and half[int(points[0, 1]), int(points[0, 0])]


def test_the_micro_sam_recipe_prompts_iteratively_and_cuts_the_lr_on_a_plateau():
    """#12 point 6: the recipe "micro-sam" trains the best of 3 outputs with Dice, 8 prompt
    rounds per item (7 corrective clicks, each fed the previous logits), and a plateau
    schedule stepped on the validation IoU; a method without it refuses the name."""
    sam = build_sam("sam_tiny")
    calls = []  # (points, mask_input given) per training decode

    def on_prompt(module, args, kwargs, out):
        if torch.is_grad_enabled():  # training, not validation
            calls.append((kwargs["points"][0].shape[1], kwargs.get("masks") is not None))

    sam.prompt_encoder.register_forward_hook(on_prompt, with_kwargs=True)
    cfg = _config(
        method="freeze-encoder", recipe="micro-sam", steps=6, eval_every=1, batch_size=1, lr=1e-12
    )
    trainer = Trainer(sam, cfg, _samples(2))
    result = trainer.run()
    assert trainer.recipe.name == "micro-sam" and result.output == "best_of_3"
    # 8 rounds per item: the visual-prompting prompt (1 positive + 2 negatives), then 7
    # updates of a positive and a negative each; the previous logits go in half the time.
    assert [n for n, _ in calls] == [3, 5, 7, 9, 11, 13, 15, 17] * 6
    fed = [given for n, given in calls if n > 3]
    assert 0 < sum(fed) < len(fed) and not any(given for n, given in calls if n == 3)
    # lr 1e-12 changes nothing: the first validation is the best, and after 4 more without
    # improvement (patience 3) the plateau schedule has cut the lr once.
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-12 * 0.9)
    with pytest.raises(InvalidInput, match="no recipe 'micro-sam'"):
        TrainConfig(method="epeft", recipe="micro-sam").resolved()
