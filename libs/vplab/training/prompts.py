"""Training prompts of the form visual prompting sends at inference (#12).

Visual prompting decodes one prompt per matched peak: ONE positive point on the object
with the ``num_negatives`` (2) least-similar cells appended as negatives, and unions the
masks (METHODS.md section 2). A tuned decoder is trained on exactly that form: one
positive inside the label, ``num_negatives`` negatives on background, and as target the
connected component of the label under the positive (the object that peak lies on; the
union over peaks assembles the class).
"""

from __future__ import annotations

import torch

from vplab.masks.geometry import components, depth

# Candidate pixels drawn per rejection round. Regions covering more than ~0.1 % of the
# image almost surely get their points from one round; smaller ones fall back to an exact
# scan of their pixels.
_CANDIDATES = 4096


def _distinct_cells(region: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` distinct (y, x) cells of ``region`` (H, W bool), uniform without replacement;
    fewer if the region has fewer cells.

    Rejection sampling: uniform candidates over the image, keeping the first ``n`` distinct
    ones inside the region, is exactly uniform sampling without replacement, and costs a
    few thousand lookups instead of a ``nonzero`` + ``randperm`` over a megapixel label
    (~25 ms per training item at 1024 px, BENCHMARKS.md ``train``).
    """
    h, w = region.shape
    flat = region.reshape(-1)
    candidates = torch.randint(0, h * w, (_CANDIDATES,), generator=generator)
    picked: list[int] = []
    for idx in candidates[flat[candidates]].tolist():
        if idx not in picked:
            picked.append(idx)
            if len(picked) == n:
                break
    if len(picked) < n:  # tiny (or empty) region: scan it
        cells = flat.nonzero()[:, 0]
        picked = cells[torch.randperm(len(cells), generator=generator)[:n]].tolist()
    index = torch.tensor(picked, dtype=torch.int64)
    return torch.stack([index // w, index % w], dim=1)


def sample_prompt(
    label: torch.Tensor, generator: torch.Generator, num_negatives: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (1 + Q, 2) as (x, y) pixel centres of ``label`` (H, W bool): one positive
    uniform inside the label, then up to ``num_negatives`` distinct negatives uniform
    outside it; labels (1 + Q,) = [1, 0, ...]. An empty label gets a negative first
    point only (label 0): nothing to point at."""
    picks, labels = [], []
    for region, n, value in ((label, 1, 1), (~label, num_negatives, 0)):
        if n == 0:
            continue
        cells = _distinct_cells(region, n, generator)
        if len(cells):
            picks.append(cells)
            labels.append(torch.full((len(cells),), value, dtype=torch.int64))
    if not picks:  # an empty label and no negatives asked for
        raise ValueError("an empty label needs num_negatives >= 1 (nothing to point at)")
    yx = torch.cat(picks).float()
    return torch.stack([yx[:, 1], yx[:, 0]], dim=1) + 0.5, torch.cat(labels)


def corrective_points(
    prediction: torch.Tensor, target: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One update of iterative prompting on (H, W) bool ``prediction`` and ``target``, as
    micro-sam draws it: a positive uniform in the misses (none missed: in the target) and a
    negative uniform in the leaks (none leaked: on the background); an empty target gets
    the negative only. -> (points (P, 2) as (x, y) cell centres, labels (P,) 1/0)."""
    picks, labels = [], []
    for region, fallback, value in (
        (target & ~prediction, target, 1),
        (prediction & ~target, ~target, 0),
    ):
        region = (region if region.any() else fallback).cpu()
        if region.any():
            picks.append(_distinct_cells(region, 1, generator))
            labels.append(value)
    yx = torch.cat(picks).float()
    return torch.stack([yx[:, 1], yx[:, 0]], dim=1) + 0.5, torch.tensor(labels)


def validation_prompts(label: torch.Tensor, max_points: int = 40, num_negatives: int = 2):
    """Fixed prompts for validating on one labelled image, in the form serving sends:
    one positive at the deepest pixel of each connected component (largest first, at most
    ``max_points``, like visual prompting's peaks) and ``num_negatives`` negatives at the
    background points farthest from the label. Computed on the label subsampled to at most
    256 px a side (fast; each point is a label pixel). -> ``PointPrompts``."""
    from vplab.matching.points import PointPrompts

    h, w = label.shape
    step = max(1, -(-max(h, w) // 256))
    sub = label[::step, ::step].bool()

    def pixel(flat_index: int) -> tuple[float, float]:
        y, x = divmod(flat_index, sub.shape[1])
        return x * step + 0.5, y * step + 0.5

    comps, n = components(sub)
    positives: list[tuple[float, float]] = []
    if n:
        sizes = torch.bincount(comps.flatten(), minlength=n + 1)[1:]
        order = torch.argsort(sizes, descending=True, stable=True)[:max_points]
        d = depth(torch.stack([comps == int(k) + 1 for k in order]))
        positives = [pixel(int(i)) for i in d.flatten(1).argmax(1)]
    negatives: list[tuple[float, float]] = []
    background = depth((~sub)[None])[0]
    radius = max(1, max(sub.shape) // 8)
    for _ in range(num_negatives):
        if not bool((background > 0).any()):
            break
        i = int(background.argmax())
        negatives.append(pixel(i))
        y, x = divmod(i, sub.shape[1])  # the next negative away from this one
        background[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1] = 0

    def points(xy: list[tuple[float, float]]) -> torch.Tensor:
        return torch.tensor(xy, dtype=torch.float32).reshape(-1, 2)

    pos, neg = points(positives), points(negatives)
    return PointPrompts(
        positive=pos,
        negative=neg,
        positive_scores=torch.ones(len(pos)),
        grid_cells=(pos.flip(1) // step).long(),
        negative_cells=(neg.flip(1) // step).long(),
    )
