"""``gpu``: encoder throughput on CUDA (SAM ViT-B/L/H fp32 and bf16+SDPA, DINOv2 S/B/L bf16),
E-PEFT training steps/s and peak memory. Without CUDA: ``{"skipped": "no cuda"}``.

segment_anything's image-encoder attention is the textbook ``softmax(q k^T + rel-pos) v``;
``--sdpa`` (on by default for the bf16 runs) swaps it, for the run only, for
``F.scaled_dot_product_attention`` with the decomposed relative-position term as an
additive mask (what segment-anything-fast does, without its custom kernels). The swap is
checked against the original on a tiny model by the tests (``sdpa_attention_forward``).
"""

from __future__ import annotations

import argparse
import contextlib
import time

from vplab.bench._common import BenchResult, Target, log

NAME = "gpu"
HELP = (
    "CUDA throughput: SAM ViT-B/L/H encoders fp32 and bf16+SDPA, DINOv2 S/B/L bf16, E-PEFT steps/s"
)

SAM_MODELS = ("vit_b", "vit_l", "vit_h")
DINO_MODELS = {
    "s": "vit_small_patch14_dinov2",
    "b": "vit_base_patch14_dinov2",
    "l": "vit_large_patch14_dinov2",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="ViT-B and DINOv2-S only, few iterations")
    p.add_argument("--batch", type=int, default=16, help="images per encoder forward (default 16)")
    p.add_argument("--iters", type=int, default=10, help="timed forwards per configuration")
    p.add_argument("--dino-size", type=int, default=896, help="DINOv2 letterbox side (default 896)")
    p.add_argument("--no-sdpa", action="store_true", help="bf16 runs with the original attention")
    p.add_argument("--epeft-steps", type=int, default=50, help="timed E-PEFT training steps")


def sdpa_attention_forward(self, x):
    """Drop-in ``segment_anything.modeling.image_encoder.Attention.forward`` using SDPA."""
    import torch
    import torch.nn.functional as F
    from segment_anything.modeling.image_encoder import get_rel_pos

    B, H, W, _ = x.shape
    nh = self.num_heads
    qkv = self.qkv(x).reshape(B, H * W, 3, nh, -1).permute(2, 0, 3, 1, 4)  # (3, B, nh, HW, d)
    q, k, v = qkv.unbind(0)
    mask = None
    if self.use_rel_pos:
        d = q.shape[-1]
        rq = q.reshape(B * nh, H, W, d)
        rh = get_rel_pos(H, H, self.rel_pos_h).to(q.dtype)
        rw = get_rel_pos(W, W, self.rel_pos_w).to(q.dtype)
        rel_h = torch.einsum("bhwc,hkc->bhwk", rq, rh)
        rel_w = torch.einsum("bhwc,wkc->bhwk", rq, rw)
        mask = (
            (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :])
            .reshape(B, nh, H * W, H * W)
            .to(q.dtype)
        )
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, HW, d), scale = d**-0.5
    out = out.view(B, nh, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
    return self.proj(out)


@contextlib.contextmanager
def sdpa_attention(enabled: bool = True):
    """Patch SAM's encoder attention with ``sdpa_attention_forward`` inside the block."""
    from segment_anything.modeling import image_encoder

    if not enabled:
        yield
        return
    original = image_encoder.Attention.forward
    image_encoder.Attention.forward = sdpa_attention_forward
    try:
        yield
    finally:
        image_encoder.Attention.forward = original


def _throughput(fn, batch: int, iters: int, warmup: int = 2) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return batch * iters / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> BenchResult:
    import torch

    if not torch.cuda.is_available():
        return BenchResult(NAME, {}, skipped="no cuda")
    from vplab.models import build_dinov2, build_sam

    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    iters = 3 if args.quick else args.iters
    batch = args.batch
    figures: dict[str, float] = {}
    summary = [
        f"device: {torch.cuda.get_device_name(0)}, batch {batch}, {iters} timed forwards each"
    ]
    torch.cuda.reset_peak_memory_stats()
    for name in SAM_MODELS[:1] if args.quick else SAM_MODELS:
        enc = build_sam(name).image_encoder.to(dev).eval()
        x = torch.randn(batch, 3, 1024, 1024, device=dev)
        with torch.inference_mode():
            fp32 = _throughput(lambda enc=enc, x=x: enc(x), batch, iters)
            with sdpa_attention(not args.no_sdpa), torch.autocast("cuda", dtype=torch.bfloat16):
                bf16 = _throughput(lambda enc=enc, x=x: enc(x), batch, iters)
        figures[f"sam_{name}_fp32_img_s"] = fp32
        figures[f"sam_{name}_bf16_img_s"] = bf16
        log(
            f"SAM {name}: fp32 {fp32:.1f} img/s, bf16{'' if args.no_sdpa else '+SDPA'} {bf16:.1f} img/s"
        )
        del enc, x
        torch.cuda.empty_cache()
    for short, name in list(DINO_MODELS.items())[:1] if args.quick else DINO_MODELS.items():
        model = build_dinov2(name).to(dev).eval()
        x = torch.randn(batch, 3, args.dino_size, args.dino_size, device=dev)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            rate = _throughput(lambda model=model, x=x: model.forward_features(x), batch, iters)
        figures[f"dinov2_{short}_bf16_img_s"] = rate
        log(f"DINOv2 {short} at {args.dino_size}: bf16 {rate:.1f} img/s")
        del model, x
        torch.cuda.empty_cache()
    from vplab.bench.train import epeft_steps_per_s

    figures["epeft_steps_per_s"] = epeft_steps_per_s(
        dev, steps=10 if args.quick else args.epeft_steps
    )
    figures["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
    summary += [f"{k}: {v:.2f}" for k, v in figures.items()]
    return BenchResult(
        NAME,
        figures,
        summary,
        targets=[Target("sam_vit_b_bf16_img_s", ">=", 300.0)],
        config={
            "batch": batch,
            "iters": iters,
            "dino_size": args.dino_size,
            "sdpa": not args.no_sdpa,
        },
    )
