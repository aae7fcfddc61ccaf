"""``fidelity``: does serving lose what training gained, and does a job's validation say
what serving delivers? (#12's targets)

On one miniworld target domain (sam_mini), every decoder method of the Table 1 analog is
tuned on ``--shots`` images, then scored on held-out test images at ground-truth prompts
(``validation_prompts``: one positive per object, two background negatives):

- **pipeline**: ``served_mask`` - the visual-prompting decoder step with the served
  output, mask scores, the calibrated threshold, NMS and the union;
- **trained output**: the union of each prompt's mask of the output the method trained
  (token 0 for every default; with three outputs the one closest to the label, the min
  over masks that training optimises) - no scores, no threshold, no NMS.

Target 1: pipeline >= 0.97 x trained output for every method (no loss from head
selection or scoring). Target 2: a job's ``best_val_iou`` within 0.05 of the pipeline
mIoU on the held-out test images - measured for E-PEFT on ``--labelled`` images (from
10 on, 20 % are held out for validation) and, for reference, on ``--shots`` images (fewer
than 10: validation on the training images, ``val_on_train``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vplab.bench._common import BenchResult, Target, log
from vplab.bench.quality import TABLE1, decoder_ious, samples, shot_lists, test_indices

NAME = "fidelity"
HELP = "serving vs the trained output, and a job's validation vs held-out mIoU (miniworld)"

MIN_SERVED_OVER_TRAINED = 0.97
MAX_VALIDATION_GAP = 0.05


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick", action="store_true", help="2 methods, 2 test images, 4 steps, no augmented views"
    )
    p.add_argument("--domain", default="polyps")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--labelled", type=int, default=15, help="E-PEFT job with a hold-out")
    p.add_argument("--test-images", type=int, default=12)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)


@torch.no_grad()
def trained_output_ious(model, domain: str, indices) -> np.ndarray:
    """Per-image IoU of the union of the trained output's masks at ``validation_prompts``."""
    from vplab.masks import iou
    from vplab.segmentation import PromptSegmenter
    from vplab.training.prompts import validation_prompts

    seg = PromptSegmenter(model[0], output=model[1])
    out = []
    for s in samples(domain, indices):
        label = torch.as_tensor(s.label)
        coords, labels = validation_prompts(label).sam_prompts()
        pred = np.zeros(s.label.shape, bool)
        if coords.shape[0]:
            emb = seg.embed(s.image)
            masks = seg.decode(emb, coords.numpy(), labels.numpy(), multimask_output=None).masks
            for candidates in masks.cpu().numpy():  # (M, H, W): the trained output(s)
                if len(candidates) > 1:
                    candidates = [max(candidates, key=lambda m: iou(m, s.label))]
                pred |= candidates[0]
        out.append(iou(pred, s.label))
    return np.array(out)


def run(args: argparse.Namespace) -> BenchResult:
    from vplab.bench.quality import train_decoder
    from vplab.models import build_sam

    t0 = time.monotonic()
    quick = args.quick
    steps = 4 if quick else args.steps
    views = (1, 0) if quick else (4, 1)  # dihedral, photometric views in the bank
    n_test = 2 if quick else args.test_images
    methods = dict(list(TABLE1.items())[-2:]) if quick else TABLE1
    test = test_indices(n_test)
    pool = shot_lists(args.domain, args.seed, max(args.shots, args.labelled))
    shots = pool[: args.shots]
    figures: dict = {"methods": {}}
    summary = [
        f"{args.domain}: {len(shots)} shots, {steps} steps, {n_test} test images, "
        "GT prompts; mIoU through the pipeline vs the trained output's masks",
        f"{'method':22s} pipeline  trained  ratio  best_val_iou",
    ]
    for label, (method, config) in methods.items():
        result = train_decoder(
            build_sam("sam_mini"), method, args.domain, shots, args.seed, steps, config, views=views
        )
        model = (result.model, result.output)
        served = float(decoder_ious(model, args.domain, test).mean())
        trained = float(trained_output_ious(model, args.domain, test).mean())
        ratio = served / trained if trained > 0 else float("nan")
        figures["methods"][label] = {
            "method": method,
            "output": result.output,
            "pipeline_miou": served,
            "trained_output_miou": trained,
            "ratio": ratio,
            "best_val_iou": result.best_val_iou,
            "val_on_train": result.val_on_train,
        }
        summary.append(
            f"{label:22s} {served:8.3f} {trained:8.3f} {ratio:6.3f}  {result.best_val_iou:.3f}"
            f"{' (on train)' if result.val_on_train else ''}"
        )
        log(summary[-1])
    ratios = [m["ratio"] for m in figures["methods"].values() if not np.isnan(m["ratio"])]
    figures["min_served_over_trained"] = min(ratios) if ratios else float("nan")

    epeft = figures["methods"].get("E-PEFT")
    if epeft is not None:
        figures["val_gap_shots"] = abs(epeft["best_val_iou"] - epeft["pipeline_miou"])
    labelled = pool[: 10 if quick else args.labelled]
    held = train_decoder(
        build_sam("sam_mini"), "epeft", args.domain, labelled, args.seed, steps, views=views
    )
    held_served = float(decoder_ious((held.model, held.output), args.domain, test).mean())
    figures["val_gap_holdout"] = abs(held.best_val_iou - held_served)
    figures["holdout_best_val_iou"] = held.best_val_iou
    figures["holdout_pipeline_miou"] = held_served
    summary.append(
        f"E-PEFT on {len(labelled)} labelled images (20 % held out for validation): "
        f"best_val_iou {held.best_val_iou:.3f} vs pipeline {held_served:.3f} on the test images"
    )
    figures["elapsed_s"] = time.monotonic() - t0
    return BenchResult(
        NAME,
        figures,
        summary,
        [
            Target("min_served_over_trained", ">=", MIN_SERVED_OVER_TRAINED),
            Target("val_gap_holdout", "<=", MAX_VALIDATION_GAP),
        ],
        {
            "domain": args.domain,
            "shots": len(shots),
            "labelled": len(labelled),
            "steps": steps,
            "test_images": n_test,
            "quick": quick,
        },
    )
