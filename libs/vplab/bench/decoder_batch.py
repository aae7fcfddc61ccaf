"""``decoder-batch``: the decoder's cost per prompt when B prompts on one embedding go
through one call (what batching concurrent SegmentPrompt requests would save).

``PromptSegmenter.decode`` with B one-point prompts on one image, multimask output (what the
load benchmark sends), median of ``--iters`` calls after a warm-up; the embedding is
computed once, untimed. Figures: ms per prompt at each B and the speed-up of the largest B
over B = 1. ``vplab.inference.segmentation.decoder_batch_size`` follows these figures
(BENCHMARKS.md section 8).
"""

from __future__ import annotations

import argparse

from vplab.bench._common import BenchResult, demo_images, repeat_ms

NAME = "decoder-batch"
HELP = "decoder cost per prompt when B prompts on one embedding share a call"
SIZES = (1, 4, 8, 16)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="sam_tiny, B 1 and 4, few calls")
    p.add_argument("--model", default="vit_b", help="SAM architecture (random weights)")
    p.add_argument("--image-size", type=int, default=256, help="the image's side in pixels")
    p.add_argument("--iters", type=int, default=20, help="timed calls per batch size")


def run(args: argparse.Namespace) -> BenchResult:
    import numpy as np
    import torch

    from vplab.models import build_sam
    from vplab.segmentation import PromptSegmenter

    model = "sam_tiny" if args.quick else args.model
    sizes = (1, 4) if args.quick else SIZES
    iters = 3 if args.quick else args.iters
    image = demo_images(1, args.image_size, seed=0)[0][0]
    segmenter = PromptSegmenter(build_sam(model, seed=0).eval(), torch.device("cpu"))
    rng = np.random.default_rng(0)
    per_prompt: dict[int, float] = {}
    with torch.no_grad():
        embedding = segmenter.embed(image)
        for b in sizes:
            coords = (rng.random((b, 1, 2)) * (args.image_size - 1)).astype(np.float32)
            labels = np.ones((b, 1), np.int64)

            def call(c=coords, lab=labels) -> object:
                return segmenter.decode(embedding, c, lab, multimask_output=True)

            per_prompt[b] = float(np.median(repeat_ms(call, iters))) / b
    largest = max(sizes)
    figures = {
        "ms_per_prompt": {str(b): per_prompt[b] for b in sizes},
        f"speedup_b{largest}": per_prompt[1] / per_prompt[largest],
    }
    summary = [f"{model}, {args.image_size} px image:  B  ms/prompt"] + [
        f"  {b:>3d} {per_prompt[b]:9.2f}" for b in sizes
    ]
    config = {"model": model, "image_size": args.image_size, "iters": iters, "sizes": list(sizes)}
    return BenchResult(NAME, figures, summary, config={**config, "quick": bool(args.quick)})
