"""``uncertainty``: does correcting the most uncertain results first make the next round
better than correcting as many random ones? (#14 point 4)

The loop on one miniworld target domain, per seed (sam_mini / dinov2_mini):

1. round 0: ``--initial`` labelled images (the first is the visual-prompting reference);
   E-PEFT tuned on them (``--round0 tuned``) or the stock pipeline (``--round0 stock``: a
   new dataset's first prediction run, as the lab's loop starts); visual prompting (soft
   matcher) and its variant (prototype) over a pool of unlabelled images gives each one
   its ``vplab.matching.uncertainty`` value.
2. corrections: ``--corrections`` pool images get their ground truth - the most uncertain
   ones, ``--random-draws`` random draws of as many, the most uncertain under a diversity
   constraint (``diverse_top_k``), and (an upper bound) the ones with the lowest round-0
   IoU (the oracle, which needs the labels it is meant to spare).
3. round 1: E-PEFT tuned on the initial labels plus the corrections; visual-prompting mIoU
   on a disjoint test set, the same for every strategy.

Figures: mean round-1 test mIoU per strategy (and, as diagnostics, each of the two terms
of the uncertainty ranking alone), the uncertainty-minus-random and
uncertain+diverse-minus-random differences with paired bootstrap intervals over seeds x
test images (``quality.paired_ci``), and the Spearman correlation of each ranking
with the round-0 error on the pool (does it see the errors at all).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vplab.bench._common import BenchResult, Target, log
from vplab.bench.quality import (
    base_model,
    paired_ci,
    samples,
    shot_lists,
    test_indices,
    tune_decoder,
)

NAME = "uncertainty"
HELP = "correcting the most uncertain visual-prompting results vs random ones (miniworld)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="1 seed, tiny pool and test, 5 steps")
    p.add_argument("--domain", default="polyps")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--initial", type=int, default=3, help="labelled images before round 0")
    p.add_argument("--pool", type=int, default=30, help="unlabelled images ranked in round 0")
    p.add_argument("--corrections", type=int, default=5)
    p.add_argument("--random-draws", type=int, default=3)
    p.add_argument("--test-images", type=int, default=12)
    p.add_argument("--steps", type=int, default=100, help="training steps per round")
    p.add_argument(
        "--round0",
        choices=("tuned", "stock"),
        default="tuned",
        help="round 0 ranks with E-PEFT tuned on the initial labels, or the stock pipeline",
    )
    p.add_argument("--bootstrap", type=int, default=2000)


def diverse_top_k(values: np.ndarray, descriptors: np.ndarray, k: int) -> list[int]:
    """``k`` indices, greedily: the most uncertain first, then each next one maximising its
    uncertainty times its cosine distance to the nearest pick so far - the top of the
    ranking without five near-copies of one failure. ``descriptors``: (N, C) unit rows."""
    picked = [int(np.argmax(values))]
    while len(picked) < min(k, len(values)):
        distance = 1.0 - descriptors @ descriptors[picked].T  # (N, picked)
        gain = values * distance.min(axis=1)
        gain[picked] = -np.inf
        picked.append(int(np.argmax(gain)))
    return picked


@torch.no_grad()
def _rank_pool(
    model, dino, ref, pool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(uncertainty, 1 - score, disagreement, round-0 IoU, DINO image descriptor) per pool
    image, with the service's formula and its two terms."""
    from vplab.masks import iou
    from vplab.matching import VisualPromptConfig, VisualPrompter
    from vplab.matching.uncertainty import uncertainty
    from vplab.segmentation import PromptSegmenter

    segmenter = PromptSegmenter(model[0], output=model[1])
    soft = VisualPrompter(segmenter, dino, VisualPromptConfig(matcher="soft"))
    proto = VisualPrompter(segmenter, dino, VisualPromptConfig(matcher="prototype"))
    for prompter in (soft, proto):
        prompter.set_references([(ref.image, ref.label)])
    values, low_score, disagreement, ious, descriptors = [], [], [], [], []
    for s in pool:
        features = soft.extract_features([s.image])[0]
        mean = features.features[features.valid].mean(dim=0)  # (C,) over the image's cells
        descriptors.append((mean / mean.norm().clamp_min(1e-12)).numpy())
        embedding = segmenter.embed(s.image)
        main = soft.predict(target_embedding=embedding, target_features=features)
        variant = proto.predict(target_embedding=embedding, target_features=features)
        u = uncertainty(main, variant, [1])
        values.append(u.value)
        low_score.append(1.0 - u.score)
        disagreement.append(u.disagreement)
        ious.append(iou(main.masks[1].numpy(), s.label))
    return (
        np.array(values),
        np.array(low_score),
        np.array(disagreement),
        np.array(ious),
        np.stack(descriptors),
    )


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def run(args: argparse.Namespace) -> BenchResult:
    from vplab.bench.quality import Model, pipeline_ious
    from vplab.models import build_dinov2

    if args.quick:
        args.seeds, args.pool, args.test_images, args.steps = 1, 6, 2, 5
        args.random_draws, args.corrections, args.initial = 1, 2, 2
    t0 = time.perf_counter()
    dino = build_dinov2("dinov2_mini")
    test = test_indices(args.test_images)
    k = args.corrections
    per_strategy: dict[str, list[np.ndarray]] = {
        name: []
        for name in ("uncertainty", "random", "oracle", "low_score", "disagreement", "diverse")
    }
    round0: list[np.ndarray] = []
    correlations: dict[str, list[float]] = {"uncertainty": [], "low_score": [], "disagreement": []}
    for seed in range(args.seeds):
        order = shot_lists(args.domain, seed, args.initial + args.pool)
        initial = samples(args.domain, order[: args.initial])
        pool = samples(args.domain, order[args.initial :])
        ref = initial[0]
        model0: Model = (
            base_model()
            if args.round0 == "stock"
            else tune_decoder(
                base_model()[0], "epeft", args.domain, None, seed, args.steps, labelled=initial
            )
        )
        values, low_score, disagreement, ious, descriptors = _rank_pool(model0, dino, ref, pool)
        for name, ranked in (
            ("uncertainty", values),
            ("low_score", low_score),
            ("disagreement", disagreement),
        ):
            correlations[name].append(_spearman(ranked, 1.0 - ious))
        round0.append(pipeline_ious(model0, dino, args.domain, ref, test))
        rng = np.random.default_rng([seed, 104729])
        picks = {
            "uncertainty": [list(np.argsort(-values, kind="stable")[:k])],
            # Each term alone (diagnostics: which one carries the signal).
            "low_score": [list(np.argsort(-low_score, kind="stable")[:k])],
            "disagreement": [list(np.argsort(-disagreement, kind="stable")[:k])],
            "diverse": [diverse_top_k(values, descriptors, k)],
            "oracle": [list(np.argsort(ious, kind="stable")[:k])],
            "random": [
                list(rng.choice(len(pool), k, replace=False)) for _ in range(args.random_draws)
            ],
        }
        for strategy, draws in picks.items():
            draw_ious = []
            for chosen in draws:
                labelled = initial + [pool[int(i)] for i in chosen]
                model1 = tune_decoder(
                    base_model()[0], "epeft", args.domain, None, seed, args.steps, labelled=labelled
                )
                draw_ious.append(pipeline_ious(model1, dino, args.domain, ref, test))
            per_strategy[strategy].append(np.mean(draw_ious, axis=0))  # (test,) for this seed
            log(
                f"seed {seed} {strategy}: round-1 mIoU {np.mean(draw_ious):.3f} "
                f"(round 0 {round0[-1].mean():.3f})"
            )
    unc = np.concatenate(per_strategy["uncertainty"])
    rnd = np.concatenate(per_strategy["random"])
    div = np.concatenate(per_strategy["diverse"])
    diff = unc - rnd
    lo, hi = paired_ci(rnd, unc, args.bootstrap)
    div_lo, div_hi = paired_ci(rnd, div, args.bootstrap)
    figures = {
        "round0_miou": float(np.concatenate(round0).mean()),
        "uncertainty_miou": float(unc.mean()),
        "random_miou": float(rnd.mean()),
        "oracle_miou": float(np.concatenate(per_strategy["oracle"]).mean()),
        "low_score_miou": float(np.concatenate(per_strategy["low_score"]).mean()),
        "disagreement_miou": float(np.concatenate(per_strategy["disagreement"]).mean()),
        "diverse_miou": float(div.mean()),
        "diverse_minus_random": float((div - rnd).mean()),
        "diverse_minus_random_ci": [div_lo, div_hi],
        "uncertainty_minus_random": float(diff.mean()),
        "uncertainty_minus_random_ci": [lo, hi],
        "uncertainty_minus_random_ci_low": lo,
        **{
            f"spearman_{name}_vs_error": float(np.nanmean(values_))
            for name, values_ in correlations.items()
        },
        "elapsed_s": time.perf_counter() - t0,
    }
    summary = [
        f"{args.domain}, {args.seeds} seed(s): {args.initial} labels, pool {args.pool}, "
        f"{k} corrections, {args.steps} steps, {len(test)} test images, "
        f"round 0 {args.round0}",
        f"round 0 (initial labels)      test mIoU {figures['round0_miou']:.3f}",
        f"round 1, top-{k} uncertain      test mIoU {figures['uncertainty_miou']:.3f}",
        f"round 1, {k} random (x{args.random_draws})     test mIoU {figures['random_miou']:.3f}",
        f"round 1, {k} worst (oracle)     test mIoU {figures['oracle_miou']:.3f}",
        f"round 1, top-{k} by 1 - score   test mIoU {figures['low_score_miou']:.3f}",
        f"round 1, top-{k} disagreement   test mIoU {figures['disagreement_miou']:.3f}",
        f"round 1, {k} uncertain+diverse  test mIoU {figures['diverse_miou']:.3f}",
        f"uncertain - random: {diff.mean():+.3f} (95 % bootstrap [{lo:+.3f}, {hi:+.3f}])",
        f"uncertain+diverse - random: {(div - rnd).mean():+.3f} "
        f"(95 % bootstrap [{div_lo:+.3f}, {div_hi:+.3f}])",
        "Spearman with the round-0 error on the pool: "
        + ", ".join(f"{name} {figures[f'spearman_{name}_vs_error']:+.2f}" for name in correlations),
    ]
    return BenchResult(
        NAME,
        figures,
        summary,
        # "Improves more than random": shown when the interval's lower end is above 0.
        targets=[Target("uncertainty_minus_random_ci_low", ">=", 0.0)],
        config={k2: v for k2, v in vars(args).items() if k2 != "func"},
    )
