"""Training ``dinov2_mini`` on the miniworld source domain for patch matching.

Loss: two supervised patch-contrastive terms (SupCon, Khosla et al. 2020). Each 14 px
patch of the 224 px letterbox (16 px of the 256 px image, one sam_mini cell) gets the
object and the family (class) covering most of it, or "background"; mixed patches are
left out.

1. *Within each image*, by object: patches of the same object are positives, the image's
   other objects and its background negatives. It keeps appearance in the features and
   separates a structure from its surroundings - what the target domains need (polyps
   are redder than mucosa, rust is orange on grey metal).
2. *Across the batch*, by family (weight ``family_weight``): patches of the same family
   in any image are positives. A class of the source domain is a shape family in random
   colours, so only this term can make a blob in one image match a blob of another
   colour in the next - what 0-shot visual prompting with one reference needs.

Why not DINO's self-distillation: it would have to discover object grouping from views
alone, far beyond a CPU budget of minutes. History: the family term alone was tried
first and barely moved in 160 steps (retrieval 0.13 -> 0.15); the object term alone (200
steps, the weights shipped until 2026-12-07) left the 0-shot pipeline at 0.07 on held-out
source images. Both terms for 1000 steps (weight 1.0, chosen over 0.3 on the dev domain
and source images): source 0.07 -> 0.18, dev domain 0.29 -> 0.37, and every target domain
but cracks gains (docs/MINIWORLD.md, BENCHMARKS.md section 7).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from vplab.miniworld.domains import render
from vplab.miniworld.evaluate import SOURCE_TEST_SEED, SOURCE_TRAIN_SEED
from vplab.miniworld.pretrain_sam import finish_pretraining, optimizer_step, save_fp16

BG = 100_000  # labels of image b are b * BG + id (id 0 = its background)
IGNORE = -1


@dataclass
class DinoPretrainConfig:
    steps: int = 1000
    batch_images: int = 8
    lr: float = 1e-3
    warmup: int = 30
    weight_decay: float = 0.05
    temperature: float = 0.1
    layerscale_init: float = 0.1  # from-scratch training: DINOv2's 1e-5 would stall
    seed: int = 0
    threads: int = 1
    size: int = 224
    eval_every: int = 100
    family_weight: float = 1.0  # weight of the cross-image family term (0: within-image only)


def patch_labels(ids: np.ndarray, grid: int, offset: int, min_frac: float = 0.5) -> np.ndarray:
    """(H, W) ids (0 = background) -> (grid*grid,) patch labels: id + offset of the id
    covering at least ``min_frac`` of the patch, else IGNORE."""
    h = ids.shape[0]
    cell = h // grid
    lm = torch.as_tensor(ids.astype(np.int64))[: grid * cell, : grid * cell]
    uniq, inv = torch.unique(lm, return_inverse=True)
    onehot = F.one_hot(inv, len(uniq)).permute(2, 0, 1).float()[None]
    frac = F.avg_pool2d(onehot, cell)[0].reshape(len(uniq), -1)
    best, arg = frac.max(0)
    out = uniq[arg] + offset
    return torch.where(best >= min_frac, out, torch.full_like(out, IGNORE)).numpy()


def _batch(index0: int, n: int, size: int, patch: int):
    """Source images ``abs(index0) + b`` (held-out seed if ``index0 < 0``) -> letterboxed
    input, patch labels by object (image b's ids offset by ``b * BG``, so objects of
    different images never share one) and by family (shared across images)."""
    from vplab.models.dinov2 import IMAGENET_MEAN, IMAGENET_STD
    from vplab.segmentation.transforms import letterbox

    xs, objects, families = [], [], []
    grid = size // patch
    for b in range(n):
        s = render(
            "source", SOURCE_TRAIN_SEED if index0 >= 0 else SOURCE_TEST_SEED, abs(index0) + b
        )
        x, _ = letterbox(s.image, size, IMAGENET_MEAN, IMAGENET_STD, scale=1.0 / 255.0)
        xs.append(x)
        objects.append(patch_labels(s.instances, grid, BG * b))
        families.append(patch_labels(s.label_map, grid, 0))
    cat = np.concatenate
    return torch.cat(xs), torch.as_tensor(cat(objects)), torch.as_tensor(cat(families))


def supcon(feats: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    f = F.normalize(feats, dim=-1)
    sim = f @ f.T / temperature
    n = f.shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    sim = sim.masked_fill(eye, float("-inf"))
    logp = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    has = pos.any(1)
    loss = -(logp.masked_fill(~pos, 0).sum(1) / pos.sum(1).clamp(min=1))
    return loss[has].mean()


def _features(model, x: torch.Tensor) -> torch.Tensor:
    tokens = model.forward_features(x)
    return tokens[:, model.num_prefix_tokens :].reshape(-1, tokens.shape[-1])


@torch.no_grad()
def retrieval_accuracy(model, n_images: int = 24, size: int = 224) -> float:
    """Held-out source: share of object patches whose nearest patch in *another* image
    (among labelled patches) has the same family."""
    model.eval()
    x, _, fam = _batch(-1, n_images, size, 14)
    f = F.normalize(_features(model, x), dim=-1)
    img = torch.arange(n_images).repeat_interleave(f.shape[0] // n_images)
    keep = fam != IGNORE
    f, fam, img = f[keep], fam[keep], img[keep]
    sim = f @ f.T
    sim[img[:, None] == img[None, :]] = -2
    nn_fam = fam[sim.argmax(1)]
    obj = fam > 0
    return float((nn_fam[obj] == fam[obj]).float().mean())


def pretrain_dino(
    out_dir: str | Path,
    config: DinoPretrainConfig | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    from vplab.models import build_dinov2

    cfg = config or DinoPretrainConfig()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = build_dinov2("dinov2_mini", seed=cfg.seed, random_init=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ls1.gamma", "ls2.gamma")):
                p.fill_(cfg.layerscale_init)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)

    def factor(s: int) -> float:
        if s < cfg.warmup:
            return (s + 1) / cfg.warmup
        t = (s - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(cfg.seed)
    meta = {
        "name": "dinov2_mini",
        "recipe": "vplab.miniworld.pretrain_dino",
        **{k: str(v) for k, v in asdict(cfg).items() if k not in ("threads", "eval_every")},
    }
    history = [{"step": 0, "retrieval": retrieval_accuracy(model, size=cfg.size)}]
    log(f"step 0 retrieval {history[0]['retrieval']:.3f}")
    model.train()
    t0 = time.monotonic()
    for step in range(cfg.steps):
        x, labels, families = _batch(
            cfg.seed * 1_000_000 + step * cfg.batch_images, cfg.batch_images, cfg.size, 14
        )
        if bool(torch.rand(1, generator=gen) < 0.5):  # flips keep labels aligned per patch
            g = cfg.size // 14
            x = x.flip(-1)
            labels = labels.view(-1, g, g).flip(-1).reshape(-1)
            families = families.view(-1, g, g).flip(-1).reshape(-1)
        flat = _features(model, x)
        feats = flat.view(cfg.batch_images, -1, model.embed_dim)
        labels = labels.view(cfg.batch_images, -1)
        losses = []
        for b in range(cfg.batch_images):
            keep = labels[b] != IGNORE
            if int(keep.sum()) > 1:
                losses.append(supcon(feats[b][keep], labels[b][keep], cfg.temperature))
        loss = torch.stack(losses).mean()
        if cfg.family_weight > 0:
            keep = families != IGNORE
            loss = loss + cfg.family_weight * supcon(flat[keep], families[keep], cfg.temperature)
        optimizer_step(loss, opt, sched, params)
        if step % 20 == 0 or step == cfg.steps - 1:
            el = time.monotonic() - t0
            log(
                f"step {step + 1}/{cfg.steps} loss {float(loss.detach()):.3f} {el:.0f}s "
                f"({el / (step + 1):.2f}s/step)"
            )
        if (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            acc = retrieval_accuracy(model, size=cfg.size)
            model.train()
            history.append({"step": step + 1, "retrieval": acc})
            log(f"eval step {step + 1}: retrieval {acc:.3f}")
            save_fp16(
                model,
                out / "dinov2_mini.partial.safetensors",
                {**meta, "steps_done": str(step + 1)},
            )
    train_s = time.monotonic() - t0
    return finish_pretraining(
        model,
        out,
        "dinov2_mini",
        meta,
        {
            "train_s": round(train_s, 1),
            "threads": cfg.threads,
            "config": asdict(cfg),
            "history": history,
        },
        lambda path: retrieval_accuracy(build_dinov2("dinov2_mini", path), size=cfg.size),
        "final_retrieval",
        log,
    )
