"""``train``: E-PEFT on SAM's mask decoder from cached embeddings (5 images, 200 steps).

The 5 image embeddings are computed first, outside the timed part, into an in-memory
``FeatureCache`` (the service backs the same interface by the object store); the timed
part is ``Trainer.run()`` exactly as a training job runs it: bank from the cache (the
image preprocessing and low-res targets are recomputed, the encoder is not), the initial
validation, 200 AdamW steps of batch 2, a validation every ``eval_every`` steps. One view
per image (``n_dihedral=1, n_photometric=0``) to keep the bank at 5 embeddings.
"""

from __future__ import annotations

import argparse
import time

from vplab.bench._common import BenchResult, Target, demo_images, log

NAME = "train"
HELP = "E-PEFT training from cached embeddings: 5 images, 200 steps, SAM ViT-B decoder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick", action="store_true", help="sam_tiny, 256 px images, 10 steps (for tests)"
    )
    p.add_argument(
        "--model", default="vit_b", help="SAM architecture (random weights), default vit_b"
    )
    p.add_argument("--method", default="epeft", help="PEFT method (default epeft)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--images", type=int, default=5)
    p.add_argument("--image-size", type=int, default=1024, help="side of the synthetic images")
    p.add_argument(
        "--eval-every", type=int, default=25, help="validation interval (TrainConfig default 25)"
    )


class _DictCache:
    """In-memory bank ``FeatureCache``: ``get(*key)`` / ``put(*key, value)`` (returns the value)."""

    def __init__(self):
        self.data: dict = {}

    def get(self, *key):
        return self.data.get(key)

    def put(self, *args):
        *key, value = args
        self.data[tuple(key)] = value
        return value


def train_from_cache(
    model: str,
    method: str,
    steps: int,
    n_images: int,
    image_size: int,
    device=None,
    eval_every: int = 25,
):
    """(TrainResult, encode_s, loop_steps_per_s): embeddings first (untimed), then ``Trainer.run``."""
    import torch

    from vplab.models import build_sam
    from vplab.training import LabeledImage, TrainConfig, Trainer
    from vplab.training.augment import views
    from vplab.training.bank import build_bank

    samples = [
        LabeledImage(f"img{i}", img, mask)
        for i, (img, mask) in enumerate(demo_images(n_images, image_size, seed=3))
    ]
    sam = build_sam(model)
    if device is not None:
        sam = sam.to(device)
    cache = _DictCache()
    t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=sam.pixel_mean.device.type == "cuda"):
        build_bank(sam, samples, views(1, 0), "frozen", 0, cache=cache)
    encode_s = time.perf_counter() - t0
    log(f"{n_images} embeddings computed in {encode_s:.1f}s (not timed)")
    config = TrainConfig(
        method=method,
        steps=steps,
        n_dihedral=1,
        n_photometric=0,
        eval_every=eval_every,
        checkpoint_every=10**9,
    )
    stamps: list[tuple[int, float]] = []

    def progress(e) -> None:
        if e.phase == "train":
            stamps.append((e.step, time.perf_counter()))
            if e.step % max(1, steps // 5) == 0:
                log(f"step {e.step}/{steps} loss {e.loss:.4f}")

    result = Trainer(sam, config, samples, on_progress=progress, feature_cache=cache).run()
    loop_rate = float("nan")
    if len(stamps) >= 2:
        (s0, t_first), (s1, t_last) = stamps[0], stamps[-1]
        loop_rate = (s1 - s0) / max(t_last - t_first, 1e-9)
    return result, encode_s, loop_rate


def epeft_steps_per_s(device, steps: int = 50) -> float:
    """Training-loop steps/s of E-PEFT on SAM ViT-B from cached embeddings (the gpu benchmark)."""
    _, _, rate = train_from_cache("vit_b", "epeft", steps, 5, 1024, device=device, eval_every=10**9)
    return rate


def run(args: argparse.Namespace) -> BenchResult:
    model = "sam_tiny" if args.quick else args.model
    steps = min(args.steps, 10) if args.quick else args.steps
    size = 256 if args.quick else args.image_size
    result, encode_s, loop_rate = train_from_cache(
        model, args.method, steps, args.images, size, eval_every=args.eval_every
    )
    figures = {
        "steps": result.steps_done,
        "train_s": result.train_s,
        "steps_per_s": result.steps_done / result.train_s,
        "loop_steps_per_s": loop_rate,
        "trainable_params": result.trainable_params,
        "encode_s_untimed": encode_s,
    }
    summary = [
        f"{result.steps_done} steps of {args.method} on {model} in {result.train_s:.1f}s "
        f"({figures['steps_per_s']:.2f} steps/s overall incl. bank + validations; "
        f"{loop_rate:.2f} steps/s between the first and last step)",
        f"trainable params: {result.trainable_params}; val IoU {result.initial_val_iou:.3f} -> "
        f"{result.best_val_iou:.3f} (random weights: meaningless)",
        f"embeddings computed beforehand in {encode_s:.1f}s (not timed)",
    ]
    return BenchResult(
        NAME,
        figures,
        summary,
        targets=[Target("train_s", "<=", 60.0)],
        config={
            "model": model,
            "method": args.method,
            "images": args.images,
            "image_size": size,
            "steps": steps,
            "batch_size": 2,
            "n_dihedral": 1,
            "n_photometric": 0,
            "eval_every": args.eval_every,
            "quick": bool(args.quick),
        },
    )
