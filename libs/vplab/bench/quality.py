"""``quality``: the papers' tables on miniworld's target domains (QUALITY.md).

1. Table 1/2 analog - decoder PEFT on sam_mini with ground-truth prompts (points sampled
   inside / outside the class mask exactly as the trainer samples them, fixed per test
   image): 0-shot, Adapter, IA3, D-VPT (prompt tokens), LoRA, E-PEFT, the full decoder
   (high-capacity stand-in for HQ-SAM) and a LoRA with E-PEFT's parameter count, at 1
   and 5 shots.
2. Table 3 analog - the whole visual-prompting pipeline (dinov2_mini matching -> points
   -> sam_mini decoder), reference = the first shot, decoder tuned with E-PEFT on 0, 5,
   10, 40 shots.
3. PTSAM analog - prompt-free, 16 shots, Dice: frozen encoder ``ptsam-md`` vs
   ``cellseg1-md-pf``; encoder tuned ``ptsam`` vs ``cellseg1-pf`` vs ``samed`` (the paper's
   two groups, every method trained and scored with SAM's no-prompt embedding).

Protocol: every seed draws one nested list of shot indices per domain from a training
pool (the first k are the k-shot set, so every method sees the same shots); test images
come from a disjoint index range. Intervals: paired bootstrap (over test images, pooled
over seeds) 95 % of the difference to 0-shot. Controls: the in-distribution source
domain, shuffled labels (masks paired with the wrong shot images), and a random-init
base. Training hyperparameters are the trainer's defaults (chosen on the dev domain
"pebbles" before any target run; ``--domains pebbles`` reruns that check).

The figures are a small model on procedural data: they test the *shape* of the papers'
claims (who beats whom, does tuning help), not their numbers.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vplab.bench._common import BenchResult, Target, log

NAME = "quality"
HELP = "the papers' tables on miniworld target domains (sam_mini / dinov2_mini)"

POOL_START = 0  # training pool: render(domain, 0, POOL_START + k)
TEST_START = 10_000  # test images: render(domain, 0, TEST_START + k)

PTSAM_METHODS = ("ptsam-md", "cellseg1-md-pf", "ptsam", "cellseg1-pf", "samed")
TABLE1: dict[str, tuple[str, dict[str, Any]]] = {  # label -> (method, config overrides)
    "Adapter": ("epeft-adapter", {}),
    "IA3": ("epeft-ia3", {}),
    "D-VPT": ("epeft-prompt", {}),
    "LoRA": ("epeft-lora", {}),
    "E-PEFT": ("epeft", {}),
    "Decoder FT": ("freeze-encoder", {}),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick",
        action="store_true",
        help="polyps only, 2 seeds, 3 test images, 10 steps, LoRA/E-PEFT only (for tests)",
    )
    p.add_argument("--domains", default=None, help="comma-separated (default: the six targets)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--test-images", type=int, default=12)
    p.add_argument("--steps", type=int, default=150, help="training steps per run")
    p.add_argument("--ptsam-steps", type=int, default=200)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--plot", default=None, help="write the mIoU-vs-shots chart (PNG) here")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: t1,t3,ptsam,controls")


# --- data -----------------------------------------------------------------------------


def samples(domain: str, indices) -> list:
    from vplab.miniworld import render
    from vplab.training import LabeledImage

    out = []
    for i in indices:
        s = render(domain, 0, int(i))
        out.append(LabeledImage(f"{domain}-{i}", s.image, s.mask(1)))
    return out


def shot_lists(domain: str, seed: int, max_shots: int, pool: int = 400) -> list[int]:
    """Nested shots of one seed: images whose target class is present, in random order."""
    from vplab.miniworld import render

    rng = np.random.default_rng([seed, 7919])
    order = rng.permutation(pool) + POOL_START
    picked: list[int] = []
    for i in order:  # rendered only until enough are found (~0.1 s per image)
        if len(picked) == max_shots:
            break
        if render(domain, 0, int(i)).mask(1).sum() >= 30:
            picked.append(int(i))
    return picked


def test_indices(n: int) -> list[int]:
    return list(range(TEST_START, TEST_START + n))


# --- evaluation ---------------------------------------------------------------------------


# A model under test: the SAM and the decoder output it serves (the base's, or the one a
# tuning run trained - #12).
Model = tuple[Any, str]


def base_model(random_init: bool = False) -> Model:
    from vplab.models import build_sam
    from vplab.segmentation.predictor import BASE_OUTPUT

    return build_sam("sam_mini", random_init=random_init), BASE_OUTPUT


@torch.no_grad()
def decoder_ious(model: Model, domain: str, indices) -> np.ndarray:
    """Per-image IoU with GT prompts through the serving path: ``validation_prompts`` (one
    positive per object, 2 background negatives) -> ``served_mask`` - exactly what a
    training job validates with."""
    from vplab.masks import iou
    from vplab.segmentation import PromptSegmenter
    from vplab.training.prompts import validation_prompts
    from vplab.training.validation import served_mask

    seg = PromptSegmenter(model[0], output=model[1])
    out = []
    for s in samples(domain, indices):
        points = validation_prompts(torch.as_tensor(s.label))
        out.append(iou(served_mask(seg, seg.embed(s.image), points).numpy(), s.label))
    return np.array(out)


def decoder_eval(model: Model, domain: str, indices) -> float:
    return float(decoder_ious(model, domain, indices).mean())


@torch.no_grad()
def pipeline_ious(model: Model, dino, domain: str, ref, indices) -> np.ndarray:
    from vplab.masks import iou
    from vplab.matching import VisualPromptConfig, VisualPrompter
    from vplab.segmentation import PromptSegmenter

    segmenter = PromptSegmenter(model[0], output=model[1])
    prompter = VisualPrompter(segmenter, dino, VisualPromptConfig())
    prompter.set_references([(ref.image, ref.label)])
    out = []
    for s in samples(domain, indices):
        pred = prompter.predict(s.image).masks[1].numpy()
        out.append(iou(pred, s.label))
    return np.array(out)


@torch.no_grad()
def ptsam_dice(model: Model, domain: str, indices) -> np.ndarray:
    from vplab.masks import dice
    from vplab.segmentation.prompt_free import prompt_free_segment

    sam, output = model
    return np.array(
        [dice(prompt_free_segment(sam, s.image, output), s.label) for s in samples(domain, indices)]
    )


# --- training (the existing trainer, nothing else) ------------------------------------------


def tune_decoder(
    sam,
    method: str,
    domain: str,
    shots,
    seed: int = 0,
    steps: int = 150,
    config=None,
    labelled=None,
    views: tuple[int, int] = (4, 1),
) -> Model:
    """``train_decoder`` -> (the tuned model, the output it was trained on)."""
    result = train_decoder(sam, method, domain, shots, seed, steps, config, labelled, views)
    return result.model, result.output


def train_decoder(
    sam,
    method: str,
    domain: str,
    shots,
    seed: int = 0,
    steps: int = 150,
    config=None,
    labelled=None,
    views: tuple[int, int] = (4, 1),
):
    """``Trainer`` on ``shots`` (LabeledImages or indices of ``domain``) -> its
    ``TrainResult`` (the tuned model, its trained output, the validation figures)."""
    from vplab.training import TrainConfig, Trainer

    data = labelled if labelled is not None else samples(domain, shots)
    cfg = TrainConfig(
        method=method,
        method_config=dict(config or {}),
        steps=steps,
        seed=seed,
        eval_every=max(1, steps // 5),
        checkpoint_every=steps,
        n_dihedral=views[0],
        n_photometric=views[1],
    )
    return Trainer(sam, cfg, data).run()


def lora_rank_matching(target_params: int) -> tuple[int, int]:
    """(rank on attention, rank on MLP) of decoder LoRA closest to ``target_params``."""
    from vplab.models import build_sam
    from vplab.peft import apply_method, count_trainable

    best: tuple[int, int, int] | None = None
    for r in range(4, 65, 2):
        sam = build_sam("sam_mini", random_init=True)
        apply_method(sam, "epeft-lora", {"lora_r_attn": r, "lora_r_mlp": r // 2})
        n = count_trainable(sam)
        if best is None or abs(n - target_params) < abs(best[2] - target_params):
            best = (r, r // 2, n)
    if best is None:
        raise ValueError("no LoRA rank to match")
    return best[0], best[1]


def count_params(method: str, config=None) -> int:
    from vplab.models import build_sam
    from vplab.peft import apply_method, count_trainable

    sam = build_sam("sam_mini", random_init=True)
    apply_method(sam, method, dict(config or {}))
    return count_trainable(sam)


# --- statistics -------------------------------------------------------------------------------


def paired_ci(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int = 0) -> tuple[float, float]:
    """95 % paired-bootstrap interval of mean(b - a)."""
    d = np.asarray(b) - np.asarray(a)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_boot, len(d)))
    means = d[idx].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


@dataclass
class Cell:
    per_image: list  # one array per seed

    @property
    def pooled(self) -> np.ndarray:
        return np.concatenate(self.per_image)

    @property
    def mean(self) -> float:
        return float(self.pooled.mean())

    @property
    def sd(self) -> float:  # across seeds
        return float(np.std([x.mean() for x in self.per_image]))


def _fmt(c: Cell) -> str:
    return f"{c.mean:.3f}±{c.sd:.3f}"


# --- the benchmark ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> BenchResult:
    from vplab.miniworld import TARGET_DOMAINS
    from vplab.models import build_dinov2, build_sam

    torch.manual_seed(0)
    quick = args.quick
    domains = (
        args.domains.split(",") if args.domains else (["polyps"] if quick else list(TARGET_DOMAINS))
    )
    seeds = list(range(2 if quick else args.seeds))
    n_test = 3 if quick else args.test_images
    steps = 10 if quick else args.steps
    pt_steps = 10 if quick else args.ptsam_steps
    skip = set(filter(None, args.skip.split(",")))
    t1_shots = [5] if quick else [1, 5]
    t3_shots = [5] if quick else [5, 10, 40]
    pt_shots = 2 if quick else 16
    views = (1, 0) if quick else (4, 1)
    test = test_indices(n_test)
    dino = build_dinov2("dinov2_mini")
    t_start = time.monotonic()

    epeft_params = count_params("epeft")
    r_attn, r_mlp = lora_rank_matching(epeft_params)
    methods = {k: v for k, v in TABLE1.items() if not quick or k in ("LoRA", "E-PEFT")}
    methods["LoRA (E-PEFT size)"] = ("epeft-lora", {"lora_r_attn": r_attn, "lora_r_mlp": r_mlp})
    sizes = {k: count_params(m, c) for k, (m, c) in methods.items()}
    log(f"trainable parameters on sam_mini: {sizes}")

    t1: dict[str, dict[tuple[str, int], Cell]] = {}
    t3: dict[tuple[str, int], Cell] = {}
    pt: dict[tuple[str, str], Cell] = {}
    zero: dict[str, Cell] = {}
    controls: dict[str, float] = {}

    for domain in domains:
        zero[domain] = Cell([decoder_ious(base_model(), domain, test) for _ in seeds])
        shots_by_seed = {s: shot_lists(domain, s, max(40, pt_shots)) for s in seeds}
        if "t1" not in skip:
            for label, (method, cfg) in methods.items():
                for k in t1_shots:
                    runs = []
                    for s in seeds:
                        tuned = tune_decoder(
                            build_sam("sam_mini"),
                            method,
                            domain,
                            shots_by_seed[s][:k],
                            s,
                            steps,
                            cfg,
                            views=views,
                        )
                        runs.append(decoder_ious(tuned, domain, test))
                    t1.setdefault(label, {})[(domain, k)] = Cell(runs)
                    log(f"T1 {domain} {label} {k}-shot: {_fmt(t1[label][(domain, k)])}")
        if "t3" not in skip:
            for k in [0, *t3_shots]:
                runs = []
                for s in seeds:
                    ref = samples(domain, shots_by_seed[s][:1])[0]
                    model = base_model()
                    if k:
                        model = tune_decoder(
                            model[0], "epeft", domain, shots_by_seed[s][:k], s, steps, views=views
                        )
                    runs.append(pipeline_ious(model, dino, domain, ref, test))
                t3[(domain, k)] = Cell(runs)
                log(f"T3 {domain} {k} shots: {_fmt(t3[(domain, k)])}")
        if "ptsam" not in skip:
            for method in PTSAM_METHODS:
                runs = []
                for s in seeds:
                    tuned = tune_decoder(
                        build_sam("sam_mini"),
                        method,
                        domain,
                        shots_by_seed[s][:pt_shots],
                        s,
                        pt_steps,
                        views=views,
                    )
                    runs.append(ptsam_dice(tuned, domain, test))
                pt[(domain, method)] = Cell(runs)
                log(f"PTSAM {domain} {method}: {_fmt(pt[(domain, method)])}")

    if "controls" not in skip:
        d0 = domains[0]
        s0 = seeds[0]
        from vplab.training import LabeledImage

        # Shuffled labels (every shot image paired with another shot's mask) against the
        # true ones, on every seed, scored at GT prompts and through the pipeline: at GT
        # prompts a shuffled mask still teaches a blob around the click (BENCHMARKS 7).
        def both(model, ref) -> tuple[float, float]:  # (GT prompts, pipeline) mIoU
            vp = float(pipeline_ious(model, dino, d0, ref, test).mean())
            return decoder_eval(model, d0, test), vp

        # The true-label model is T1's E-PEFT 5-shot and T3's 5-shot model (same shots, seed
        # and steps; training is deterministic), so their cells are reused when both ran.
        t1_cell = t1.get("E-PEFT", {}).get((d0, 5))
        t3_cell = t3.get((d0, 5))
        shuffled, true = [], []  # (GT prompts, pipeline) per seed
        for i, s in enumerate(seeds):
            shots = shot_lists(d0, s, 5)
            data = samples(d0, shots)
            rolled = [
                LabeledImage(a.name, a.image, b.label)
                for a, b in zip(data, data[1:] + data[:1], strict=True)
            ]
            shuf = tune_decoder(
                build_sam("sam_mini"), "epeft", d0, shots, s, steps, labelled=rolled, views=views
            )
            shuffled.append(both(shuf, data[0]))
            if t1_cell and t3_cell:
                true.append((t1_cell.per_image[i].mean(), t3_cell.per_image[i].mean()))
            else:
                tuned = tune_decoder(
                    build_sam("sam_mini"), "epeft", d0, shots, s, steps, views=views
                )
                true.append(both(tuned, data[0]))
            log(
                f"controls seed {s}: shuffled {shuffled[-1][0]:.3f} / pipeline "
                f"{shuffled[-1][1]:.3f}, true {true[-1][0]:.3f} / {true[-1][1]:.3f}"
            )
        shuffled_mean, true_mean = np.mean(shuffled, axis=0), np.mean(true, axis=0)
        controls["shuffled_labels_5shot"] = float(shuffled_mean[0])
        controls["pretrained_5shot"] = float(true_mean[0])
        controls["shuffled_labels_vp_5shot"] = float(shuffled_mean[1])
        controls["pretrained_vp_5shot"] = float(true_mean[1])
        controls["zero_shot_same_domain"] = float(zero[d0].per_image[0].mean())
        controls["random_init_0shot"] = decoder_eval(base_model(random_init=True), d0, test)
        rand_t = tune_decoder(
            build_sam("sam_mini", random_init=True),
            "epeft",
            d0,
            shot_lists(d0, s0, 5),
            s0,
            steps,
            views=views,
        )
        controls["random_init_5shot"] = decoder_eval(rand_t, d0, test)
        # in-distribution: the source domain (class 1 = the blob family)
        src_shots = shot_lists("source", s0, 5)
        src_test = test_indices(n_test)
        controls["source_0shot"] = decoder_eval(base_model(), "source", src_test)
        src_t = tune_decoder(
            build_sam("sam_mini"), "epeft", "source", src_shots, s0, steps, views=views
        )
        controls["source_5shot"] = decoder_eval(src_t, "source", src_test)
        if "t3" not in skip:
            ref = samples("source", src_shots[:1])[0]
            controls["source_vp_0shot"] = float(
                pipeline_ious(base_model(), dino, "source", ref, src_test).mean()
            )
        log(f"controls: {controls}")

    return _result(
        args,
        domains,
        seeds,
        n_test,
        steps,
        sizes,
        zero,
        t1,
        t3,
        pt,
        controls,
        t1_shots,
        t3_shots,
        time.monotonic() - t_start,
    )


def _result(
    args,
    domains,
    seeds,
    n_test,
    steps,
    sizes,
    zero,
    t1,
    t3,
    pt,
    controls,
    t1_shots,
    t3_shots,
    elapsed,
) -> BenchResult:
    figures: dict = {"domains": domains, "seeds": len(seeds), "test_images": n_test}
    summary: list[str] = []
    nb = 200 if args.quick else args.bootstrap

    if t1:
        summary.append("Table 1/2 analog: decoder PEFT, GT prompts, mIoU (mean±sd over seeds)")
        names = {lab: f"{lab} ({sizes[lab] / 1000:.1f}K)" for lab in t1}
        width = max(20, *(len(n) + 1 for n in names.values()))  # the longest label's column
        head = "method".ljust(width) + "".join(f"{d[:9]:>22}" for d in domains) + "      avg"
        for k in t1_shots:
            summary.append(f"-- {k} shot(s) --")
            summary.append(head)
            summary.append(
                "0-shot".ljust(width)
                + "".join(f"{_fmt(zero[d]):>22}" for d in domains)
                + f"{np.mean([zero[d].mean for d in domains]):9.3f}"
            )
            for label, cells in t1.items():
                avg = float(np.mean([cells[(d, k)].mean for d in domains]))
                figures[f"t1_{label}_{k}shot_avg"] = avg
                summary.append(
                    names[label].ljust(width)
                    + "".join(f"{_fmt(cells[(d, k)]):>22}" for d in domains)
                    + f"{avg:9.3f}"
                )
        figures["t1_zero_avg"] = float(np.mean([zero[d].mean for d in domains]))
        ep = figures.get("t1_E-PEFT_5shot_avg", float("nan"))
        singles = [
            figures[f"t1_{lab}_5shot_avg"]
            for lab in ("Adapter", "IA3", "D-VPT", "LoRA")
            if f"t1_{lab}_5shot_avg" in figures
        ]
        figures["t1_epeft_minus_best_single_5shot"] = ep - max(singles)
        figures["t1_epeft_minus_matched_lora_5shot"] = (
            ep - figures["t1_LoRA (E-PEFT size)_5shot_avg"]
        )
    if t3:
        summary.append("Table 3 analog: visual-prompting pipeline, E-PEFT tuned on k shots, mIoU")
        shot_avg: dict[int, float] = {}
        for k in [0, *t3_shots]:
            shot_avg[k] = float(np.mean([t3[(d, k)].mean for d in domains]))
            figures[f"t3_{k}shot_avg"] = shot_avg[k]
            summary.append(
                f"{k:>3} shots"
                + "".join(f"{_fmt(t3[(d, k)]):>22}" for d in domains)
                + f"{shot_avg[k]:9.3f}"
            )
            for d in domains:
                figures[f"t3_{d}_{k}shot"] = t3[(d, k)].mean
        a = np.concatenate([t3[(d, 0)].pooled for d in domains])
        b = np.concatenate([t3[(d, t3_shots[0])].pooled for d in domains])
        lo, hi = paired_ci(a, b, nb)
        figures["t3_5shot_gain"] = float(b.mean() - a.mean())
        figures["t3_5shot_gain_ci95"] = [lo, hi]
        # undefined (NaN, "not measured") when the 0-shot pipeline scores 0
        figures["t3_5shot_relative_gain"] = (
            float(b.mean() / a.mean() - 1) if a.mean() > 0 else float("nan")
        )
        summary.append(
            f"5 shots vs 0: {figures['t3_5shot_gain']:+.3f} mIoU (95 % paired bootstrap "
            f"[{lo:+.3f}, {hi:+.3f}]), relative {figures['t3_5shot_relative_gain']:+.0%}"
        )
    if pt:
        summary.append("PTSAM analog: prompt-free, 16 shots, Dice")
        for method in PTSAM_METHODS:
            avg = float(np.mean([pt[(d, method)].mean for d in domains]))
            figures[f"ptsam_{method}_avg_dice"] = avg
            summary.append(
                f"{method:>14}"
                + "".join(f"{_fmt(pt[(d, method)]):>22}" for d in domains)
                + f"{avg:9.3f}"
            )
    if controls:
        figures.update({f"control_{k}": v for k, v in controls.items()})
        summary.append("controls: " + ", ".join(f"{k}={v:.3f}" for k, v in controls.items()))
    if t3 and getattr(args, "plot", None):
        from vplab.bench.plot import line_chart

        series = {d: [(k, t3[(d, k)].mean) for k in [0, *t3_shots]] for d in domains}
        series["average"] = [(k, figures[f"t3_{k}shot_avg"]) for k in [0, *t3_shots]]
        line_chart(
            series,
            args.plot,
            "miniworld: visual prompting + E-PEFT (sam_mini, dinov2_mini)",
            "tuning shots",
            "mIoU",
        )
        summary.append(f"chart: {args.plot}")
    figures["elapsed_s"] = round(elapsed, 1)
    targets = []
    if t3:
        targets.append(Target("t3_5shot_relative_gain", ">=", 0.5))
    if t1:
        targets += [
            Target("t1_epeft_minus_best_single_5shot", ">=", 0.0),
            Target("t1_epeft_minus_matched_lora_5shot", ">=", 0.0),
        ]
    return BenchResult(
        NAME,
        figures,
        summary,
        targets,
        config={
            "quick": bool(args.quick),
            "steps": steps,
            "seeds": len(seeds),
            "test_images": n_test,
            "sam": "sam_mini",
            "dino": "dinov2_mini",
        },
    )
