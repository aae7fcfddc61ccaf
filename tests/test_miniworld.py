"""Miniworld (#11): the world is deterministic, the embedded models are what they claim to
be, and tuning the embedded sam_mini really helps on a target domain."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from vplab.errors import CheckpointError, InvalidInput
from vplab.miniworld import DEV_DOMAIN, DOMAINS, SOURCE_DOMAIN, TARGET_DOMAINS, render
from vplab.models.embedded import EMBEDDED


def _digest(s) -> str:
    h = hashlib.sha256()
    for a in (s.image, s.instances, s.class_masks):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_domains_are_the_ones_quality_md_names():
    assert SOURCE_DOMAIN == "source" and DEV_DOMAIN in DOMAINS
    assert len(TARGET_DOMAINS) == 6
    assert set(DOMAINS) == {SOURCE_DOMAIN, DEV_DOMAIN, *TARGET_DOMAINS}


@pytest.mark.parametrize("domain", DOMAINS)
def test_render_is_a_pure_function_of_domain_seed_index(domain):
    a, b = render(domain, 3, 7), render(domain, 3, 7)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(render(domain, 3, 8))
    assert _digest(a) != _digest(render(domain, 4, 7))
    assert a.image.shape == (256, 256, 3) and a.image.dtype == np.uint8
    assert a.instances.shape == (256, 256)
    assert a.class_masks.shape == (len(a.classes), 256, 256)
    # every visible instance has a class, and the label map agrees with the instances
    assert len(a.instance_class) == a.instances.max() + 1
    assert (a.label_map[a.instances == 0] == 0).all()


def test_render_does_not_depend_on_call_order():
    first = _digest(render("polyps", 0, 5))
    for d in DOMAINS:
        render(d, 0, 0)
    assert _digest(render("polyps", 0, 5)) == first


def test_target_domains_show_their_target_class():
    for domain in TARGET_DOMAINS:
        fractions = [render(domain, 0, i).mask(1).mean() for i in range(4)]
        assert all(f > 0.001 for f in fractions), (domain, fractions)


def test_render_rejects_unknown_domains():
    with pytest.raises(InvalidInput):
        render("mars", 0, 0)


def test_render_cli_writes_images_and_masks(tmp_path):
    from vplab.cli import main
    from vplab.images import read_image
    from vplab.masks.png import read_binary_mask, read_label_map

    assert main(["miniworld", "render", "polyps", str(tmp_path), "--n", "2"]) == 0
    img = read_image(tmp_path / "images/img_001.png")
    s = render("polyps", 0, 1)
    assert (img == s.image).all()
    assert (read_binary_mask(tmp_path / "masks/polyp/img_001.png") == s.mask(1)).all()
    assert (read_label_map(tmp_path / "masks/instances/img_001.png") == s.instances).all()
    assert (read_label_map(tmp_path / "masks/labels/img_001.png") == s.label_map).all()


# --- the embedded models ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_committed_weights_match_their_digests(name):
    from vplab.models.checkpoint import file_sha256

    w = EMBEDDED[name]
    assert w.path.is_file(), f"{w.path} is not committed"
    assert file_sha256(w.path) == w.sha256
    assert w.path.stat().st_size < 12 * 1024**2


def test_weights_are_small_together():
    assert sum(w.path.stat().st_size for w in EMBEDDED.values()) < 11 * 1024**2


def test_embedded_models_load_strictly_in_fp16_files():
    from safetensors.torch import load_file

    from vplab.models import build_dinov2, build_sam

    sam = build_sam("sam_mini")
    state = load_file(EMBEDDED["sam_mini"].path)
    assert set(state) == set(sam.state_dict())
    assert all(v.dtype == torch.float16 for v in state.values())
    dino = build_dinov2("dinov2_mini")
    assert set(load_file(EMBEDDED["dinov2_mini"].path)) == set(dino.state_dict())


def test_a_wrong_digest_fails_loudly(tmp_path, monkeypatch):
    import dataclasses

    from vplab.models import build_sam, embedded
    from vplab.models.base import resolve_base_sam

    bad = dataclasses.replace(embedded.EMBEDDED["sam_mini"], sha256="1" * 64)
    monkeypatch.setitem(embedded.EMBEDDED, "sam_mini", bad)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        build_sam("sam_mini")
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        resolve_base_sam("sam_mini")


def test_a_truncated_weights_file_fails_loudly(tmp_path):
    from vplab.models import build_sam
    from vplab.models.checkpoint import file_sha256

    src = EMBEDDED["sam_mini"].path
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(src.read_bytes()[:100_000])
    with pytest.raises(CheckpointError):
        build_sam("sam_mini", cut, sha256=file_sha256(cut))


def test_demo_base_is_the_embedded_sam_mini():
    from vplab.models.base import resolve_base_sam

    base = resolve_base_sam("sam_mini")
    assert base.sha256 == EMBEDDED["sam_mini"].sha256
    assert base.name == "sam_mini"


def test_sam_mini_beats_its_random_init_on_centre_clicks():
    """A floor: pretraining must give clicks a clear meaning (committed weights: 0.41 on
    50 held-out images, random init 0.01; the #11 target 0.75 is not met, BENCHMARKS.md)."""
    from vplab.miniworld.evaluate import evaluate_clicks
    from vplab.models import build_sam

    pre = evaluate_clicks(build_sam("sam_mini"), n_images=4, n_clicks=1)["miou_1click"]
    rand = evaluate_clicks(build_sam("sam_mini", random_init=True), n_images=4, n_clicks=1)
    assert pre > rand["miou_1click"] + 0.15, (pre, rand)


def test_demo_data_is_miniworld(tmp_path):
    from vplab.cli import main
    from vplab.images import read_image

    assert main(["demo-data", str(tmp_path), "--n", "2"]) == 0
    assert (read_image(tmp_path / "images/img_000.png") == render("polyps", 0, 0).image).all()


@pytest.mark.slow
def test_five_shot_epeft_beats_zero_shot_on_a_target_domain():
    """Fails if tuning stops helping: 5-shot E-PEFT on sam_mini vs the stock decoder,
    same GT prompts through the serving path, held-out images."""
    from vplab.bench.quality import base_model, decoder_eval, tune_decoder

    domain = "polyps"
    shots = list(range(5))
    test = list(range(100, 112))
    zero = decoder_eval(base_model(), domain, test)
    tuned = tune_decoder(base_model()[0], "epeft", domain, shots, seed=0, steps=150)
    five = decoder_eval(tuned, domain, test)
    assert five > zero + 0.05, (zero, five)


def test_sam_pretraining_runs_and_resume_equals_an_uninterrupted_run(tmp_path):
    """The recipe at toy size: two warm-restart cycles; resuming after cycle 1 reproduces
    the uninterrupted file bit for bit (each cycle starts from the previous fp16 file)."""
    from vplab.miniworld.pretrain_sam import SamPretrainConfig, pretrain_sam

    cfg = SamPretrainConfig(
        steps=2,
        batch_images=1,
        prompts_per_image=1,
        warmup=1,
        eval_every=10**6,
        eval_images=1,
        threads=1,
        curriculum_steps=1,
    )
    full = pretrain_sam(tmp_path / "a", cfg, log=lambda _m: None)
    (tmp_path / "b").mkdir()
    first = pretrain_sam(tmp_path / "b", dataclasses.replace(cfg, cycles=1), log=lambda _m: None)
    assert first["sha256"] != full["sha256"]
    resumed = pretrain_sam(tmp_path / "b", cfg, log=lambda _m: None, resume=True)
    assert resumed["resumed_at_cycle"] == 1 and resumed["sha256"] == full["sha256"]
    assert set(full["final_eval"]) >= {"miou_1click", "objects"}


def test_dino_pretraining_runs(tmp_path):
    from vplab.miniworld.pretrain_dino import DinoPretrainConfig, pretrain_dino

    cfg = DinoPretrainConfig(steps=2, batch_images=2, warmup=1, eval_every=10**6, threads=1)
    report = pretrain_dino(tmp_path, cfg, log=lambda _m: None)
    assert (tmp_path / "dinov2_mini.safetensors").exists() and 0 <= report["final_retrieval"] <= 1


def test_eval_clicks_command_prints_its_json(capsys):
    from vplab.cli import main

    assert main(["miniworld", "eval-clicks", "--n-images", "1"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["domain"] == "source" and out["objects"] > 0 and 0 <= out["miou_1click"] <= 1
    assert main(["miniworld", "eval-clicks", "--n-images", "0"]) == 2


def test_eval_clicks_breakdown_is_consistent_with_the_click_figures(capsys):
    """The profile of the click miss (docs/MINIWORLD.md): the oracle pick of the first
    click's three masks is never below the IoU head's pick, the area buckets partition the
    objects, and a box means something to the pretrained model."""
    from vplab.cli import main
    from vplab.miniworld.evaluate import evaluate_clicks
    from vplab.models import build_sam

    r = evaluate_clicks(build_sam("sam_mini"), n_images=3, n_clicks=1, breakdown=True)
    assert r["miou_1click_best_of_3"] >= r["miou_1click"]
    buckets = r["by_area"].values()
    assert sum(b["objects"] for b in buckets) == r["objects"] > 0
    weighted = sum(b["objects"] * b["miou_1click"] for b in buckets) / r["objects"]
    assert weighted == pytest.approx(r["miou_1click"])
    assert all(b["miou_1click_best_of_3"] >= b["miou_1click"] for b in buckets)
    random_sam = build_sam("sam_mini", random_init=True)
    rand = evaluate_clicks(random_sam, n_images=3, n_clicks=1, breakdown=True)
    assert r["miou_box"] > rand["miou_box"] + 0.15, (r, rand)
    assert main(["miniworld", "eval-clicks", "--n-images", "1", "--breakdown"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"miou_box", "miou_1click_best_of_3", "by_area"} <= set(out)


def test_the_embedded_sam_carries_its_calibrated_mask_threshold_and_the_demo_finds_objects(
    tmp_path,
):
    """The papers' 0.42 drops every mask of sam_mini (its IoU head predicts ~0.25): the
    embedded weights carry their own threshold, however they are loaded, and an explicit
    config value still wins. Without it the demo's visual prompting returned empty masks."""
    import numpy as np

    from vplab.demo import write_demo_dataset
    from vplab.images import read_image
    from vplab.inference.runtime import DEMO_SAM
    from vplab.masks.png import read_binary_mask
    from vplab.matching import VisualPromptConfig, VisualPrompter
    from vplab.matching.config import PAPER_MASK_SCORE_THRESHOLD, mask_score_threshold
    from vplab.models import build_dinov2, build_sam
    from vplab.models.base import resolve_base_sam
    from vplab.models.embedded import embedded_weights
    from vplab.segmentation import PromptSegmenter

    segmenter = PromptSegmenter(resolve_base_sam(DEMO_SAM).build())
    assert segmenter.mask_score_threshold == embedded_weights(DEMO_SAM).mask_score_threshold
    assert PromptSegmenter(build_sam(DEMO_SAM)).mask_score_threshold == 0.1
    assert PromptSegmenter(build_sam(DEMO_SAM, random_init=True)).mask_score_threshold is None
    assert mask_score_threshold(VisualPromptConfig(), segmenter) == 0.1
    assert mask_score_threshold(VisualPromptConfig(mask_score_threshold=0.42), segmenter) == 0.42
    official = PromptSegmenter(build_sam("sam_tiny"))
    assert mask_score_threshold(VisualPromptConfig(), official) == PAPER_MASK_SCORE_THRESHOLD

    write_demo_dataset(tmp_path, n=4, size=256, seed=0)
    prompter = VisualPrompter(segmenter, build_dinov2("dinov2_mini"), VisualPromptConfig())
    image = lambda i: read_image(tmp_path / "images" / f"img_{i:03d}.png")  # noqa: E731
    mask = lambda i: read_binary_mask(tmp_path / "masks" / f"img_{i:03d}.png")  # noqa: E731
    prompter.set_references([(image(0), mask(0))])
    found = [bool((prompter.predict(image(i)).label_map.numpy() > 0).any()) for i in (1, 2, 3)]
    assert all(found), found
    assert np.mean(found) == 1.0
