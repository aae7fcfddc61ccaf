"""``vplab bench``: every benchmark's --quick mode runs and prints a human summary, then one
JSON object with its figures as the last line. Timing targets are never asserted here."""

from __future__ import annotations

import json

import pytest
import torch

from vplab.cli import main

QUICK_KEYS = {
    "train": {"steps", "train_s", "steps_per_s", "trainable_params"},
    "cache": {"miss_ms", "hit_ms", "hit_over_miss", "embedding_bytes"},
    "pipeline": {"per_image_s", "encoders_s", "overhead_ratio"},
    "late-cache": {"speedup_start1", "start1_cached_steps_per_s", "start1_recompute_steps_per_s"},
    "decoder-batch": {"speedup_b4"},
    "dataio": {"import_images_per_s", "import_peak_mib", "export_coco_images_per_s"},
}


def _run(capsys, *argv: str) -> tuple[list[str], dict]:
    assert main(["bench", *argv]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return lines, json.loads(lines[-1])


def test_every_benchmark_is_registered_with_quick():
    from vplab.bench import benchmarks
    from vplab.cli import build_parser

    assert list(benchmarks()) == [
        "interactive",
        "cache",
        "train",
        "pipeline",
        "late-cache",
        "gpu",
        "load",
        "decoder-batch",
        "quality",
        "uncertainty",
        "ui",
        "dataio",
        "calibrate",
        "fidelity",
    ]
    parser = build_parser()
    for name in benchmarks():
        args = parser.parse_args(["bench", name, "--quick", "--json"])
        assert args.quick and args.json and args.bench_name == name


@pytest.mark.parametrize("name", sorted(QUICK_KEYS))
def test_quick_run_prints_summary_then_json(capsys, name):
    lines, doc = _run(capsys, name, "--quick")
    assert lines[0] == f"== vplab bench {name} =="
    assert len(lines) > 2  # the human summary comes first
    assert doc["benchmark"] == name
    assert QUICK_KEYS[name] <= set(doc), set(doc)
    for key in QUICK_KEYS[name]:
        assert isinstance(doc[key], (int, float)) and doc[key] >= 0, (key, doc[key])
    assert doc["config"]["quick"] is True
    assert set(doc["machine"]) >= {"cpu", "cores", "ram_gib"}
    assert all(v in (True, False, None) for v in doc["targets_met"].values())


def test_cache_quick_figures_are_consistent(capsys):
    _, doc = _run(capsys, "cache", "--quick", "--json")
    assert doc["hit_over_miss"] == pytest.approx(doc["hit_ms"] / doc["miss_ms"], rel=1e-3)
    assert doc["embedding_bytes"] > 256 * 16 * 16 * 2  # bf16 (1, 256, 16, 16) + header (sam_tiny)


def test_json_flag_prints_only_the_json_line(capsys):
    lines, doc = _run(capsys, "interactive", "--quick", "--no-stack", "--json")
    assert len(lines) == 1
    assert doc["inproc_p50_ms"] > 0 and doc["inproc_p95_ms"] >= doc["inproc_p50_ms"]
    assert doc["rest_p50_ms"] is None and doc["grpc_p50_ms"] is None  # no stack: not measured
    assert set(doc["targets_met"].values()) == {None}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_skips_without_cuda(capsys):
    lines, doc = _run(capsys, "gpu", "--quick")
    assert lines[-1] == '{"skipped": "no cuda"}' and doc == {"skipped": "no cuda"}


def test_sdpa_attention_matches_the_original():
    """The gpu benchmark's SDPA attention computes what segment_anything's does."""
    from vplab.bench.gpu import sdpa_attention
    from vplab.models import build_sam

    enc = build_sam("sam_tiny").image_encoder
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        ref = enc(x)
        with sdpa_attention():
            got = enc(x)
        again = enc(x)  # restored afterwards
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(again, ref)


@pytest.mark.slow
@pytest.mark.integration
def test_interactive_quick_through_the_real_stack(capsys):
    lines, doc = _run(capsys, "interactive", "--quick")
    for key in (
        "inproc_p50_ms",
        "grpc_p50_ms",
        "rest_p50_ms",
        "inproc_p95_ms",
        "grpc_p95_ms",
        "rest_p95_ms",
        "rest_over_inproc",
    ):
        assert isinstance(doc[key], float) and doc[key] > 0, key
    assert doc["rest_over_inproc"] == pytest.approx(
        doc["rest_p50_ms"] / doc["inproc_p50_ms"], rel=1e-3
    )
    assert any(line.startswith("target rest_over_inproc") for line in lines)


@pytest.mark.slow
@pytest.mark.integration
def test_ui_quick_through_the_real_stack_in_chromium(capsys):
    lines, doc = _run(capsys, "ui", "--quick")
    assert doc["ui_click_p50_ms"] > 0 and doc["rest_p50_ms"] > 0
    assert doc["ui_overhead_p50_ms"] == pytest.approx(
        doc["ui_click_p50_ms"] - doc["rest_p50_ms"], abs=1e-6
    )
    # Lazy thumbnails: opening the grid fetches only what is in view, scrolling the rest.
    assert 0 < doc["grid_thumbs_fetched_on_open"] < doc["grid_images"]
    assert (
        doc["grid_thumbs_fetched_after_scrolling_to_the_end"] > doc["grid_thumbs_fetched_on_open"]
    )
    assert any(line.startswith("target ui_overhead_p50_ms") for line in lines)


def test_load_passes_alternate_and_each_level_is_its_median():
    """``vplab bench load --rounds``: a level's figure is the median of its passes, so the
    peak is not the maximum of single noisy draws (#13's rps64 definition)."""
    from vplab.bench.load import pass_order, per_level

    assert pass_order((1, 8, 64), 3) == [1, 8, 64, 64, 8, 1, 1, 8, 64]
    row = {"p50_ms": 10.0, "shed_fraction": 0.0, "errors": {}}
    passes = [
        {**row, "clients": 8, "rps": 50.0, "p99_ms": 30.0},
        {**row, "clients": 64, "rps": 40.0, "p99_ms": 900.0, "errors": {"UNKNOWN": 1}},
        {**row, "clients": 64, "rps": 44.0, "p99_ms": 1000.0, "shed_fraction": 0.1},
        {**row, "clients": 8, "rps": 41.0, "p99_ms": 20.0},
        {**row, "clients": 8, "rps": 42.0, "p99_ms": 25.0, "p50_ms": None},
    ]
    by_n = {r["clients"]: r for r in per_level(passes)}
    assert list(by_n) == [8, 64]
    assert by_n[8]["rps"] == 42.0 and (by_n[8]["rps_min"], by_n[8]["rps_max"]) == (41.0, 50.0)
    assert by_n[8]["p99_ms"] == 25.0 and by_n[8]["p50_ms"] == 10.0 and by_n[8]["passes"] == 3
    assert by_n[64]["rps"] == 42.0 and by_n[64]["p99_ms"] == 950.0
    assert by_n[64]["shed_fraction"] == 0.1 and by_n[64]["errors"] == {"UNKNOWN": 1}


@pytest.mark.slow
@pytest.mark.integration
def test_load_quick_through_the_real_stack(capsys):
    _, doc = _run(capsys, "load", "--quick", "--json")
    for transport in ("rest", "grpc"):
        assert doc[f"{transport}_peak_rps"] > 0
        assert doc[f"{transport}_other_errors"] == 0
        assert [r["clients"] for r in doc["levels"][transport]] == [1, 4]
        assert [r["clients"] for r in doc["passes"][transport]] == [1, 4]  # one pass
    assert doc["config"]["quick"] is True and doc["config"]["rounds"] == 1 and doc["rss_mb"] > 0


@pytest.mark.slow
def test_quality_quick_produces_its_json(capsys, tmp_path):
    """``vplab bench quality --quick`` (miniworld, sam_mini / dinov2_mini) ends with its JSON;
    in two worker processes it caches every cell, and a rerun on the cache computes nothing
    and reports the same figures."""
    cells = tmp_path / "cells"
    lines, doc = _run(capsys, "quality", "--quick", "--cells", str(cells), "--jobs", "2")
    assert doc["benchmark"] == "quality" and doc["config"]["quick"] is True
    n_cells = len(list(cells.glob("*.json")))
    assert n_cells > 20  # 2 seeds x (2 T1 methods + 2 T3 + 5 PTSAM) + zero + controls
    assert main(["bench", "quality", "--quick", "--cells", str(cells)]) == 0
    out, err = capsys.readouterr()
    again = json.loads(out.strip().splitlines()[-1])
    assert f"{n_cells} cells cached, 0 to compute" in err  # nothing was trained again
    assert len(list(cells.glob("*.json"))) == n_cells
    figures = {k: v for k, v in doc.items() if k not in ("elapsed_s", "machine")}
    assert {k: again[k] for k in figures} == figures
    for key in (
        "t1_E-PEFT_5shot_avg",
        "t1_zero_avg",
        "t3_0shot_avg",
        "t3_5shot_gain_ci95",
        "ptsam_ptsam-md_avg_dice",
        "control_shuffled_labels_5shot",
        "control_random_init_0shot",
    ):
        assert key in doc, key
    assert any(line.startswith("Table 3 analog") for line in lines)


def test_calibrate_quick_scores_the_grid_and_the_shipped_default(capsys):
    """``vplab bench calibrate --quick`` (#12 point 4): the shipped default is the grid point
    with the weights' own mask threshold, so their mIoU agree exactly."""
    lines, doc = _run(capsys, "calibrate", "--quick")
    assert doc["benchmark"] == "calibrate" and doc["config"]["domain"] == "pebbles"
    assert doc["default_mask_score_threshold"] == 0.1  # the embedded sam_mini's calibration
    assert doc["grid"]["arithmetic/mean/0.4/0.1"] == doc["default_miou"]
    assert doc["papers_thresholds_miou"] == doc["grid"]["arithmetic/mean/0.4/0.42"]
    assert doc["best_miou"] == max(doc["grid"].values())
    assert any(line.startswith("best: ") for line in lines)


def test_fidelity_quick_compares_serving_with_the_trained_output(capsys):
    """``vplab bench fidelity --quick`` (#12's targets): per method the pipeline's and the
    trained output's mIoU at the same prompts, and a job's validation vs held-out mIoU."""
    lines, doc = _run(capsys, "fidelity", "--quick")
    assert doc["benchmark"] == "fidelity" and doc["config"]["quick"] is True
    assert set(doc["methods"]) == {"E-PEFT", "Decoder FT"}
    for m in doc["methods"].values():
        assert 0.0 <= m["pipeline_miou"] <= 1.0 and 0.0 <= m["trained_output_miou"] <= 1.0
        assert m["output"] == "token0" and m["val_on_train"] is True  # 5 shots: all train
    assert doc["holdout_best_val_iou"] is not None and doc["val_gap_holdout"] >= 0
    assert any(line.startswith("E-PEFT on 10 labelled images") for line in lines)


def test_uncertainty_quick_ranks_then_compares_strategies(capsys):
    """``vplab bench uncertainty --quick``: round 0, three correction strategies, round 1."""
    lines, doc = _run(capsys, "uncertainty", "--quick")
    assert doc["benchmark"] == "uncertainty" and doc["config"]["quick"] is True
    for key in ("round0_miou", "uncertainty_miou", "random_miou", "oracle_miou"):
        assert 0.0 <= doc[key] <= 1.0, (key, doc[key])
    lo, hi = doc["uncertainty_minus_random_ci"]
    assert lo <= doc["uncertainty_minus_random"] <= hi
    assert any("top-2 uncertain" in line for line in lines)
    assert 0.0 <= doc["diverse_miou"] <= 1.0
    lo, hi = doc["diverse_minus_random_ci"]
    assert lo <= doc["diverse_minus_random"] <= hi
    assert any(line.startswith("uncertain+diverse - random:") for line in lines)


def test_uncertainty_quick_can_rank_with_the_stock_pipeline(capsys):
    lines, doc = _run(capsys, "uncertainty", "--quick", "--round0", "stock")
    assert doc["config"]["round0"] == "stock" and 0.0 <= doc["round0_miou"] <= 1.0
    assert any(line.endswith("round 0 stock") for line in lines)


def test_diverse_top_k_skips_near_copies_of_a_pick():
    import numpy as np

    from vplab.bench.uncertainty import diverse_top_k

    # Images 0-2 look alike (one direction) and are the most uncertain; 3 and 4 differ.
    descriptors = np.array([[1, 0], [0.999, 0.045], [0.998, 0.063], [0, 1], [0.7071, 0.7071]])
    values = np.array([0.9, 0.85, 0.8, 0.5, 0.3])
    assert diverse_top_k(values, descriptors, 3) == [0, 3, 4]
    assert sorted(np.argsort(-values)[:3]) == [0, 1, 2]  # what the plain top-3 would take
    assert sorted(diverse_top_k(values, descriptors, 9)) == [0, 1, 2, 3, 4]  # k > N: all


def test_uncertainty_ranks_low_confidence_and_disagreement_first():
    from types import SimpleNamespace

    import torch

    from vplab.matching.uncertainty import uncertainty

    def result(label_map, score):
        pred = SimpleNamespace(scores=torch.tensor([score]))
        return SimpleNamespace(classes={1: pred}, label_map=torch.tensor(label_map))

    a = [[1, 1], [0, 0]]
    sure = uncertainty(result(a, 0.9), result(a, 0.9), [1])
    assert (sure.score, sure.disagreement) == (pytest.approx(0.9), 0.0)
    unsure = uncertainty(result(a, 0.3), result(a, 0.3), [1])
    split = uncertainty(result(a, 0.9), result([[1, 0], [0, 0]], 0.9), [1])
    assert split.disagreement == pytest.approx(0.5)
    assert sure.value < split.value and sure.value < unsure.value
    nothing = uncertainty(result([[0, 0], [0, 0]], 0.0), result([[0, 0], [0, 0]], 0.0), [1])
    assert nothing.disagreement == 0.0 and nothing.value == pytest.approx(0.5)


def test_quality_cell_key_names_everything_a_cell_depends_on():
    """A cached cell is reused only for the same unit, settings and weights."""
    from dataclasses import replace

    from vplab.bench.quality import Settings, Unit, cell_key

    st = Settings(n_test=8, steps=100, pt_steps=100, views=(4, 1))
    unit = Unit("tune", "polyps", seed=2, k=5, method="epeft-lora")
    key = cell_key(unit, st)
    assert cell_key(Unit("tune", "polyps", 2, 5, "epeft-lora"), st) == key
    assert json.loads(key)["weights"]["sam_mini"]  # the weights' digests are in the key
    for other_unit in (
        replace(unit, seed=3),
        replace(unit, k=1),
        replace(unit, domain="xray"),
        replace(unit, config='{"lora_r_attn": 8}'),
    ):
        assert cell_key(other_unit, st) != key
    for other_st in (replace(st, steps=150), replace(st, n_test=12), replace(st, views=(1, 0))):
        assert cell_key(unit, other_st) != key
    # the matcher's digest is in the key exactly of the cells that run the matcher, so a new
    # dinov2_mini recomputes the pipeline cells and keeps the GT-prompt and prompt-free ones
    assert "dinov2_mini" not in json.loads(key)["weights"]
    for matcher_unit in (
        Unit("tune", "polyps", 2, 5, "epeft"),
        Unit("base_vp", "polyps", 2, 1),
        Unit("shuffled", "polyps", 2, 5, "epeft"),
    ):
        assert set(json.loads(cell_key(matcher_unit, st))["weights"]) == {"sam_mini", "dinov2_mini"}


def test_quality_cells_without_the_matcher_in_their_key_do_not_run_it(monkeypatch):
    import vplab.models
    from vplab.bench.quality import Settings, Unit, compute_unit

    def no_matcher(*args, **kwargs):
        raise AssertionError("dinov2_mini was built")

    monkeypatch.setattr(vplab.models, "build_dinov2", no_matcher)
    st = Settings(n_test=1, steps=1, pt_steps=1, views=(1, 0))
    assert set(compute_unit(Unit("base", "polyps"), st)) == {"gt"}
    with pytest.raises(AssertionError, match="was built"):
        compute_unit(Unit("base_vp", "polyps", 0, 1), st)


def test_quality_k_shots_train_on_all_k_with_steps_growing_with_k(monkeypatch):
    """Table 3's 10 and 40 shots: every shot trains (no hold-out) and the budget grows as
    sqrt(k / 5) from 5 shots on; 1 and 5 shots (Table 1) keep the given steps."""
    from vplab.bench import quality
    from vplab.bench.quality import Settings, Unit, tune_steps

    assert [tune_steps(100, k) for k in (1, 5, 10, 40)] == [100, 100, 141, 283]
    seen = []

    def fake_tune(sam, method, domain, shots, seed, steps, config, labelled, views, **kw):
        seen.append((len(shots), steps, kw.get("val_fraction")))
        return sam, "token0"

    monkeypatch.setattr(quality, "tune_decoder", fake_tune)
    st = Settings(n_test=1, steps=100, pt_steps=30, views=(1, 0))
    for k in (5, 10, 40):
        quality._tuned(Unit("tune", "polyps", 0, k, "epeft"), st)
    quality._tuned(Unit("prompt_free", "polyps", 0, 16, "ptsam-md"), st, steps=st.pt_steps)
    assert seen == [(5, 100, 0.0), (10, 141, 0.0), (40, 283, 0.0), (16, 30, 0.0)]


def test_train_decoder_holds_out_by_default_and_trains_on_all_when_told():
    """The product's default holds 20 % of >= 10 images out for validation; the quality
    bench's ``val_fraction=0`` trains on every shot (``trained_on``)."""
    from vplab.bench.quality import shot_lists, train_decoder
    from vplab.models import build_sam

    shots = shot_lists("polyps", 0, 10)
    kw = {"steps": 1, "views": (1, 0)}
    held = train_decoder(build_sam("sam_tiny", seed=0), "epeft", "polyps", shots, **kw)
    assert len(held.trained_on) == 8 and not held.val_on_train
    every = train_decoder(
        build_sam("sam_tiny", seed=0), "epeft", "polyps", shots, val_fraction=0.0, **kw
    )
    assert len(every.trained_on) == 10 and every.val_on_train
