"""Promptable pretraining of ``sam_mini`` on the miniworld source domain (SAM's recipe, small).

Per step: a batch of freshly rendered source images (an endless stream, index = seed x
1e6 + step x batch + j), the whole model trained (encoder, prompt encoder, decoder).
For each image a few instances get a prompt - a click (uniform inside the object half of
the time, biased to its interior the other half) or a noisy box - then
``corrective_rounds`` corrective clicks follow, each sampled uniformly in the current
error (positive on a miss, negative on a leak) and decoded with the previous low-res
logits as ``mask_input``, as in SAM's interactive training. A single click is ambiguous:
it is decoded with all three multimask outputs and only the best one (min over masks) is
trained; the IoU head is regressed (MSE) onto the true IoU of every output.
Mask loss: Dice + binary cross-entropy at the decoder's low resolution against
area-fraction targets. AdamW, linear warm-up then cosine decay. Deterministic given ``seed`` and the thread count.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from vplab.masks.geometry import depth
from vplab.miniworld.domains import render
from vplab.miniworld.evaluate import SOURCE_TRAIN_SEED, evaluate_clicks


@dataclass
class SamPretrainConfig:
    steps: int = 1800
    batch_images: int = 6
    prompts_per_image: int = 4
    corrective_rounds: int = 1
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.05
    box_prob: float = 0.3
    min_area: int = 100
    # curriculum: only large objects get prompts at first (a strong Dice signal while the
    # decoder learns where a click is); then every object of min_area or more
    curriculum_steps: int = 100
    curriculum_min_area: int = 600
    seed: int = 0
    threads: int = 2
    eval_every: int = 300
    eval_images: int = 10
    # SGDR-style warm restarts: ``cycles`` cosine cycles of ``steps`` each, the peak lr
    # multiplied by ``cycle_lr_decay`` per cycle (BENCHMARKS.md: one 1800-step cycle left
    # the click mIoU rising)
    cycles: int = 2
    cycle_lr_decay: float = 0.5


def _lr_factor(step: int, cfg: SamPretrainConfig) -> float:
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def _image_batch(step: int, cfg: SamPretrainConfig, rng: np.random.Generator):
    """Images (B, H, W, 3) uint8 and per image a (P, H, W) bool tensor of instances."""
    images: list[np.ndarray] = []
    targets: list[torch.Tensor] = []
    j = 0
    while len(images) < cfg.batch_images:
        index = cfg.seed * 1_000_000 + step * cfg.batch_images * 2 + j
        j += 1
        s = render("source", SOURCE_TRAIN_SEED, index)
        masks = s.instance_masks(
            cfg.curriculum_min_area if step < cfg.curriculum_steps else cfg.min_area
        )
        if not masks:
            continue
        pick = rng.choice(len(masks), size=min(cfg.prompts_per_image, len(masks)), replace=False)
        images.append(s.image)
        targets.append(torch.as_tensor(np.stack([masks[k] for k in pick])))
    return np.stack(images), targets


def _sample_pixels(weights: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(P, H, W) non-negative weights -> (P, 2) xy pixel centres drawn from them."""
    p, _, w = weights.shape
    flat = weights.reshape(p, -1).float() + 1e-12
    idx = torch.multinomial(flat, 1, generator=gen)[:, 0]
    return torch.stack([(idx % w).float() + 0.5, (idx // w).float() + 0.5], dim=1)


def _noisy_boxes(gt: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    boxes = []
    for m in gt:
        ys, xs = torch.nonzero(m, as_tuple=True)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        box = torch.stack([x0, y0, x1, y1]).float()
        side = torch.stack([x1 - x0, y1 - y0, x1 - x0, y1 - y0]).float()
        noise = torch.randn(4, generator=gen) * torch.clamp(0.1 * side, max=20.0)
        boxes.append(box + noise)
    h, w = gt.shape[-2:]
    b = torch.stack(boxes)
    b[:, 0::2] = b[:, 0::2].clamp(0, w)
    b[:, 1::2] = b[:, 1::2].clamp(0, h)
    return b


def _mask_losses(logits: torch.Tensor, gt_low: torch.Tensor):
    """logits (P, M, L, L), gt_low (P, L, L) area fractions -> loss (P, M), true IoU (P, M).

    Dice + cross-entropy (weight 1 each). The random model first collapses to "no mask
    anywhere" under the cross-entropy (most pixels are background) and leaves it after
    ~100 steps; Dice alone has no such plateau but stalls at a blob around the click
    (train IoU 0.05 vs 0.27 at step 200 of the same schedule, docs/MINIWORLD.md).

    At the decoder's low resolution (64 px for a 256 px image): the same optimum as in the
    full frame for anything wider than a low-res cell, at 1/16 of the cost.
    """
    g = gt_low[:, None].expand_as(logits)
    prob = torch.sigmoid(logits)
    inter = (prob * g).sum((2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum((2, 3)) + g.sum((2, 3)) + 1)
    bce = F.binary_cross_entropy_with_logits(logits, g, reduction="none").mean((2, 3))
    with torch.no_grad():
        hard = logits > 0
        gb = g > 0.5
        iou = (hard & gb).sum((2, 3)).float() / ((hard | gb).sum((2, 3)).float().clamp(min=1))
    return dice + bce, iou


def decode_per_prompt(sam, src, coords, labels, boxes, mask_in, multimask: bool):
    """``MaskDecoder`` over N prompt sets on N (not one) image embeddings ``src`` (N, C, g, g).

    The stock decoder repeats one image's embedding per prompt set; pretraining decodes
    the prompts of a whole batch of images in one call instead. Same modules, same
    arithmetic as ``MaskDecoder.predict_masks`` (segment_anything 1.0) without the repeat.
    """
    points = (coords, labels) if coords is not None else None
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=mask_in)
    md = sam.mask_decoder
    out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
    out_tokens = out_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
    tokens = torch.cat((out_tokens, sparse), dim=1)
    src = src + dense
    pos_src = sam.prompt_encoder.get_dense_pe().expand(src.shape[0], -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = md.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : (1 + md.num_mask_tokens), :]
    src = src.transpose(1, 2).reshape(b, c, h, w)
    up = md.output_upscaling(src)
    hyper = torch.stack(
        [
            md.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :])
            for i in range(md.num_mask_tokens)
        ],
        dim=1,
    )
    b, c, h, w = up.shape
    masks = (hyper @ up.reshape(b, c, h * w)).view(b, -1, h, w)
    iou_pred = md.iou_prediction_head(iou_token_out)
    sl = slice(1, None) if multimask else slice(0, 1)
    return masks[:, sl], iou_pred[:, sl]


def _up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return x.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def _step_loss(sam, images: np.ndarray, targets, cfg: SamPretrainConfig, gen: torch.Generator):
    """One step's loss: every prompt of every image decoded together, round by round."""
    x = torch.as_tensor(images).permute(0, 3, 1, 2).float()
    x = (x - sam.pixel_mean) / sam.pixel_std
    emb = sam.image_encoder(x)  # (B, 256, 16, 16)
    counts = torch.tensor([t.shape[0] for t in targets])
    src = torch.repeat_interleave(emb, counts, dim=0)  # (N, 256, 16, 16), N prompts
    gt = torch.cat(targets)  # (N, H, W)
    n = gt.shape[0]
    rows = torch.arange(n)
    low_size = sam.prompt_encoder.mask_input_size[0]
    factor = images.shape[1] // low_size
    gt_low = F.avg_pool2d(gt[:, None].float(), factor)[:, 0]
    use_box = bool(torch.rand(1, generator=gen) < cfg.box_prob)  # one prompt kind per step
    coords = labels = boxes = None
    if use_box:
        boxes = _noisy_boxes(gt, gen)
    else:
        interior = torch.rand(n, generator=gen) < 0.5  # else uniform inside the object
        w = torch.where(
            interior[:, None, None], _up(depth(gt_low > 0.5) ** 2, factor) * gt, gt.float()
        )
        coords = _sample_pixels(w + 1e-6 * gt, gen)[:, None]  # (N, 1, 2)
        labels = torch.ones(n, 1, dtype=torch.int)
    mask_in = None
    total = 0.0
    stats = {}
    for r in range(cfg.corrective_rounds + 1):
        multi = r == 0 and not use_box
        low, iou_pred = decode_per_prompt(sam, src, coords, labels, boxes, mask_in, multi)
        seg, iou_true = _mask_losses(low, gt_low)
        best = seg.argmin(1)
        total = total + seg[rows, best].mean() + F.mse_loss(iou_pred, iou_true)
        stats["iou0" if r == 0 else "iou_last"] = float(iou_true[rows, best].mean())
        if r == cfg.corrective_rounds:
            break
        with torch.no_grad():
            pred = _up(low[rows, best] > 0, factor)
            err = gt ^ pred
            err = torch.where(err.flatten(1).any(1)[:, None, None], err, gt)
            pt = _sample_pixels(err.float(), gen)  # (N, 2)
            xi = pt[:, 0].long().clamp(0, gt.shape[2] - 1)
            yi = pt[:, 1].long().clamp(0, gt.shape[1] - 1)
            lab = gt[rows, yi, xi].int()  # inside the object: a miss -> positive
            mask_in = low[rows, best][:, None].detach()
        coords = pt[:, None] if coords is None else torch.cat([coords, pt[:, None]], 1)
        labels = lab[:, None] if labels is None else torch.cat([labels, lab[:, None]], 1)
    return total / (cfg.corrective_rounds + 1), stats


def _position_aware_init(sam) -> None:
    """Start every decoder attention with k_proj = q_proj: a query then scores keys by the
    similarity of their (random Fourier) positional encodings, so a click attends to the
    image tokens around it from the first step instead of having to discover that."""
    with torch.no_grad():
        for m in sam.mask_decoder.transformer.modules():
            q, k = getattr(m, "q_proj", None), getattr(m, "k_proj", None)
            if q is not None and k is not None and q.weight.shape == k.weight.shape:
                k.weight.copy_(q.weight)
                k.bias.copy_(q.bias)


def optimizer_step(loss: torch.Tensor, opt, sched, params) -> None:
    """Backward, clip the gradient norm at 1, step the optimizer and the schedule (both
    mini-model recipes)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()


def save_fp16(model: torch.nn.Module, path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # One metadata key: safetensors writes its metadata map in hash order, so several keys
    # give a different file (and sha256) per process for the same weights.
    meta = {"vplab_recipe": json.dumps(metadata, sort_keys=True)}
    save_file(dict(sorted(state.items())), str(tmp), metadata=meta)
    tmp.replace(path)


def finish_pretraining(
    model: torch.nn.Module,
    out: Path,
    name: str,
    meta: dict[str, str],
    report: dict[str, Any],
    evaluate: Callable[[Path], Any],
    final_key: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Save the final fp16 weights of ``name``, evaluate them as loaded back, and write
    ``{name}.json`` (path, sha256, ``report``'s fields, ``final_key``: the evaluation)."""
    from vplab.models.checkpoint import file_sha256

    model.eval()
    path = out / f"{name}.safetensors"
    save_fp16(model, path, meta)
    head = {"model": name, "path": str(path), "sha256": file_sha256(path)}
    report = {**head, **report, final_key: evaluate(path)}
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    log(json.dumps({k: report[k] for k in ("sha256", "train_s", final_key)}))
    return report


def _cycle_path(out: Path, cycle: int) -> Path:
    return out / f"sam_mini.cycle{cycle}.safetensors"


def pretrain_sam(
    out_dir: str | Path,
    config: SamPretrainConfig | None = None,
    log: Callable[[str], None] = print,
    resume: bool = False,
) -> dict:
    """Run the recipe's ``cycles`` (warm restarts); ``resume``: start after the last cycle
    whose checkpoint is in ``out_dir`` (each cycle starts from the previous one's fp16
    file, so a resumed run equals an uninterrupted one)."""
    from safetensors.torch import load_file

    from vplab.models import build_sam

    cfg = config or SamPretrainConfig()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sam = build_sam("sam_mini", seed=cfg.seed, random_init=True)
    sam.mask_decoder.output_upscaling.to(memory_format=torch.contiguous_format)
    _position_aware_init(sam)
    meta = {
        "name": "sam_mini",
        "recipe": "vplab.miniworld.pretrain_sam",
        **{k: str(v) for k, v in asdict(cfg).items() if k not in ("threads", "eval_every")},
    }
    first = 0
    if resume:
        while first < cfg.cycles and _cycle_path(out, first + 1).exists():
            first += 1
    t0 = time.monotonic()
    history: list[dict[str, Any]] = []
    for cycle in range(first, cfg.cycles):
        if cycle > 0:  # a warm restart from the previous cycle's file, with a fresh AdamW
            state = load_file(str(_cycle_path(out, cycle)))
            sam.load_state_dict({k: v.float() for k, v in state.items()})
            log(f"cycle {cycle + 1}/{cfg.cycles} starts from {_cycle_path(out, cycle)}")
        history += _train_cycle(sam, cfg, cycle, out, meta, log, t0)
        save_fp16(sam, _cycle_path(out, cycle + 1), {**meta, "cycles_done": str(cycle + 1)})
    train_s = time.monotonic() - t0
    return finish_pretraining(
        sam,
        out,
        "sam_mini",
        meta,
        {
            "train_s": round(train_s, 1),
            "resumed_at_cycle": first,
            "threads": cfg.threads,
            "config": asdict(cfg),
            "history": history,
        },
        lambda path: evaluate_clicks(build_sam("sam_mini", path), n_images=cfg.eval_images),
        "final_eval",
        log,
    )


def _train_cycle(sam, cfg: SamPretrainConfig, cycle: int, out: Path, meta, log, t0):
    """One cosine cycle of ``cfg.steps`` steps at peak lr ``lr x cycle_lr_decay^cycle``;
    fresh images (the stream index continues across cycles), seeded per cycle."""
    sam.train()
    params = [p for p in sam.parameters() if p.requires_grad]
    lr = cfg.lr * cfg.cycle_lr_decay**cycle
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg))
    rng = np.random.default_rng(cfg.seed if cycle == 0 else [cfg.seed, cycle])
    gen = torch.Generator().manual_seed(cfg.seed + 1_000_003 * cycle)
    history = []
    total = cfg.cycles * cfg.steps
    for step in range(cfg.steps):
        g = cycle * cfg.steps + step  # the global step: image stream and curriculum
        images, targets = _image_batch(g, cfg, rng)
        loss, stats = _step_loss(sam, images, targets, cfg, gen)
        optimizer_step(loss, opt, sched, params)
        if step % 20 == 0 or step == cfg.steps - 1:
            el = time.monotonic() - t0
            log(
                f"step {g + 1}/{total} loss {float(loss.detach()):.3f} train-iou first "
                f"{stats.get('iou0', 0):.3f} last {stats.get('iou_last', 0):.3f} {el:.0f}s"
            )
        if (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            sam.eval()
            ev = evaluate_clicks(sam, n_images=cfg.eval_images)
            sam.train()
            history.append({"step": g + 1, **ev})
            log(f"eval step {g + 1}: {ev}")
            save_fp16(sam, out / "sam_mini.partial.safetensors", {**meta, "steps_done": str(g + 1)})
    return history
