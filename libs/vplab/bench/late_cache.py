"""``late-cache``: ``late-lora`` training steps/s with cached activations vs recomputing
the frozen encoder blocks every step.

Both variants are the trainer's own step (``Trainer._loss``, backward, AdamW, schedule)
on the same bank (one image, one view, batch 1):
  cached:    the bank holds the activation entering ``start_block`` (what the trainer
             does for ``encoder_mode="late"``): blocks[start:] + neck + decoder per step;
  recompute: each step runs patch embedding + blocks[:start] again (no grad) from the
             preprocessed image, then the same trainable part.
speedup = cached steps/s / recompute steps/s. On CPU a ViT-B step is seconds, so a few
steps each (``--steps``, after ``--warmup`` untimed) are enough.
"""

from __future__ import annotations

import argparse
import copy
import time

from vplab.bench._common import BenchResult, Target, demo_images, log

NAME = "late-cache"
HELP = "late-lora steps/s: cached activations vs recomputing the frozen blocks (start 6, 9, 11)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick",
        action="store_true",
        help="sam_tiny (4 blocks, start 1, 2, 3), 2 steps (for tests)",
    )
    p.add_argument(
        "--model", default="vit_b", help="SAM architecture (random weights), default vit_b"
    )
    p.add_argument(
        "--starts", default="6,9,11", help="comma-separated start blocks (default 6,9,11)"
    )
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant (default 2)")
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed steps per variant first (default 1)"
    )
    p.add_argument("--image-size", type=int, default=1024)


def _trainer_classes():
    import torch

    from vplab.training import Trainer
    from vplab.training.bank import preprocess

    class RecomputeTrainer(Trainer):
        """Recomputes the frozen blocks each step instead of reading the cached activation."""

        def _prepare(self) -> None:
            super()._prepare()
            self._inputs = {s.name: preprocess(self.sam, s.image)[0].cpu() for s in self.samples}

        def _embedding(self, item):
            enc = self.sam.image_encoder
            with torch.no_grad():
                x = enc.patch_embed(self._inputs[item.name].to(self.device))
                if enc.pos_embed is not None:
                    x = x + enc.pos_embed
                for blk in enc.blocks[: self.start_block]:
                    x = blk(x)
            for blk in enc.blocks[self.start_block :]:
                x = blk(x)
            return enc.neck(x.permute(0, 3, 1, 2))

    return Trainer, RecomputeTrainer


def _steps_per_s(trainer, steps: int, warmup: int) -> float:
    import torch

    trainer.t0 = time.monotonic()
    trainer._prepare()  # bank: the activation entering start_block, computed once (untimed)
    trainer.sam.train()

    def step():
        idx = torch.randint(
            0, len(trainer.bank), (trainer.config.batch_size,), generator=trainer.sampler
        )
        loss = trainer._loss([trainer.bank[i] for i in idx.tolist()])
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        trainer.scheduler.step()

    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> BenchResult:
    from vplab.bench.train import _DictCache
    from vplab.models import build_sam
    from vplab.training import LabeledImage, TrainConfig

    quick = bool(args.quick)
    model = "sam_tiny" if quick else args.model
    starts = [1, 2, 3] if quick else [int(s) for s in args.starts.split(",") if s.strip()]
    steps = min(args.steps, 2) if quick else args.steps
    warmup = min(args.warmup, 1) if quick else args.warmup
    size = 256 if quick else args.image_size
    image, mask = demo_images(1, size, seed=9)[0]
    samples = [LabeledImage("img0", image, mask)]
    base = build_sam(model)
    Trainer, RecomputeTrainer = _trainer_classes()
    fig: dict[str, float] = {}
    summary = []
    for start in starts:
        rates = {}
        for variant, cls in (("cached", Trainer), ("recompute", RecomputeTrainer)):
            config = TrainConfig(
                method="late-lora",
                method_config={"start_block": start},
                steps=steps + warmup,
                batch_size=1,
                val_fraction=0.0,
                n_dihedral=1,
                n_photometric=0,
                eval_every=10**9,
                checkpoint_every=10**9,
            )
            # A cache shared by the train and validation banks: the activation is computed once.
            trainer = cls(copy.deepcopy(base), config, samples, feature_cache=_DictCache())
            rates[variant] = _steps_per_s(trainer, steps, warmup)
            log(f"start {start} {variant}: {rates[variant]:.3f} steps/s")
        label = f"start{start}"
        fig[f"{label}_cached_steps_per_s"] = rates["cached"]
        fig[f"{label}_recompute_steps_per_s"] = rates["recompute"]
        fig[f"speedup_{label}"] = rates["cached"] / rates["recompute"]
        summary.append(
            f"start_block {start}: cached {rates['cached']:.3f} steps/s, recompute "
            f"{rates['recompute']:.3f} steps/s, speedup {fig[f'speedup_{label}']:.2f}x"
        )
    targets = [
        Target(f"speedup_start{s}", ">=", lim) for s, lim in ((6, 1.25), (9, 1.8)) if s in starts
    ]
    return BenchResult(
        NAME,
        fig,
        summary,
        targets=targets,
        config={
            "model": model,
            "starts": starts,
            "steps": steps,
            "warmup": warmup,
            "batch_size": 1,
            "image": f"{size}x{size}",
            "quick": quick,
        },
    )
