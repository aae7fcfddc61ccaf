"""Training ``dinov2_mini`` on the miniworld source domain for patch matching.

Loss: a supervised patch-contrastive loss (SupCon, Khosla et al. 2020) on object-family
ids. Each 14 px patch of the 224 px letterbox (16 px of the 256 px image) gets the label
of the class covering most of it: one of the six families, or "background of image b"
(each image's background its own class); mixed patches are left out. Patches of the same
family - across images, colours, textures and sizes - are positives, everything else
negatives.

Why supervised and not DINO's self-distillation: visual prompting needs exactly one
property of the features, that patches of the reference's kind of object match patches
of the same kind elsewhere and not the background, and miniworld gives the family labels
for free. Self-distillation would have to discover that from views alone, which takes far
more compute than ~25 CPU minutes; SupCon optimises the property directly. The cost, and
what the benchmark then measures: features know the source's families; a target domain's
structures match only as far as they resemble them (see docs/MINIWORLD.md).
"""

from __future__ import annotations

import json
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
from vplab.miniworld.pretrain_sam import save_fp16

BG = 1000  # background of image b gets label BG + b
IGNORE = -1


@dataclass
class DinoPretrainConfig:
    steps: int = 450
    batch_images: int = 12
    patches_per_step: int = 1024
    lr: float = 1e-3
    warmup: int = 30
    weight_decay: float = 0.05
    temperature: float = 0.1
    layerscale_init: float = 0.1  # from-scratch training: DINOv2's 1e-5 would stall
    seed: int = 0
    threads: int = 1
    size: int = 224
    eval_every: int = 150


def patch_labels(label_map: np.ndarray, grid: int, b: int, min_frac: float = 0.5) -> np.ndarray:
    """(H, W) class ids -> (grid*grid,) patch labels (family, BG + b, or IGNORE)."""
    h = label_map.shape[0]
    cell = h // grid
    lm = torch.as_tensor(label_map.astype(np.int64))[: grid * cell, : grid * cell]
    onehot = F.one_hot(lm, 7).permute(2, 0, 1).float()[None]  # (1, 7, H, W)
    frac = F.avg_pool2d(onehot, cell)[0].reshape(7, -1)  # (7, grid*grid)
    best, arg = frac.max(0)
    out = torch.where(arg == 0, torch.full_like(arg, BG + b), arg)
    out = torch.where(best >= min_frac, out, torch.full_like(arg, IGNORE))
    return out.numpy()


def _batch(index0: int, n: int, size: int, patch: int):
    from vplab.models.dinov2 import IMAGENET_MEAN, IMAGENET_STD
    from vplab.segmentation.transforms import letterbox

    xs, labels = [], []
    grid = size // patch
    for b in range(n):
        s = render(
            "source", SOURCE_TRAIN_SEED if index0 >= 0 else SOURCE_TEST_SEED, abs(index0) + b
        )
        x, _ = letterbox(s.image, size, IMAGENET_MEAN, IMAGENET_STD, scale=1.0 / 255.0)
        xs.append(x)
        labels.append(patch_labels(s.label_map, grid, b))
    return torch.cat(xs), torch.as_tensor(np.concatenate(labels))


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
    x, labels = _batch(-1, n_images, size, 14)
    f = F.normalize(_features(model, x), dim=-1)
    img = torch.arange(n_images).repeat_interleave(f.shape[0] // n_images)
    keep = labels != IGNORE
    f, labels, img = f[keep], labels[keep], img[keep]
    sim = f @ f.T
    sim[img[:, None] == img[None, :]] = -2
    nn_label = labels[sim.argmax(1)]
    obj = labels < BG
    return float((nn_label[obj] == labels[obj]).float().mean())


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
        x, labels = _batch(
            cfg.seed * 1_000_000 + step * cfg.batch_images, cfg.batch_images, cfg.size, 14
        )
        if bool(torch.rand(1, generator=gen) < 0.5):  # flips keep labels aligned per patch
            g = cfg.size // 14
            x = x.flip(-1)
            labels = labels.view(-1, g, g).flip(-1).reshape(-1)
        feats = _features(model, x)
        valid = torch.nonzero(labels != IGNORE)[:, 0]
        pick = valid[torch.randperm(valid.numel(), generator=gen)[: cfg.patches_per_step]]
        loss = supcon(feats[pick], labels[pick], cfg.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
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
    model.eval()
    path = out / "dinov2_mini.safetensors"
    save_fp16(model, path, meta)
    from vplab.models.checkpoint import file_sha256

    digest = file_sha256(path)
    final = retrieval_accuracy(build_dinov2("dinov2_mini", path), size=cfg.size)
    report = {
        "model": "dinov2_mini",
        "path": str(path),
        "sha256": digest,
        "train_s": round(train_s, 1),
        "threads": cfg.threads,
        "config": asdict(cfg),
        "history": history,
        "final_retrieval": final,
    }
    (out / "dinov2_mini.json").write_text(json.dumps(report, indent=2))
    log(json.dumps({k: report[k] for k in ("sha256", "train_s", "final_retrieval")}))
    return report
