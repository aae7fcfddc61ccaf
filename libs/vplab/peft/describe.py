"""``vplab peft describe``: trainable parameters of a method on a base architecture.

Builds the architecture on the meta device (no weights allocated, no checkpoint, ~0.05 s
for ViT-B) and applies the method; a method that needs real tensors at inject time
falls back to a normal (randomly initialised) build.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vplab.peft.core import apply_method, count_trainable, trainable_by_piece
from vplab.peft.registry import get_method


def _canonical_base(base: str) -> str:
    return base[len("sam_") :] if base.startswith("sam_") else base


def build_architecture(base: str, meta: bool = True) -> nn.Module:
    """An untrained SAM of the given architecture ("vit_b" or "sam_vit_b", ...)."""
    from segment_anything import sam_model_registry

    name = _canonical_base(base)
    builder: Callable[[], nn.Module]
    if name in sam_model_registry:
        builder = lambda: sam_model_registry[name]()  # noqa: E731
    else:
        # Small test architectures (e.g. "sam_tiny") live in vplab.models; build_sam raises
        # InvalidInput for a name it does not know.
        from vplab.models import build_sam

        builder = lambda: build_sam(base, random_init=True)  # noqa: E731  (shapes only)
    if meta:
        with torch.device("meta"):
            return builder()
    return builder()


def describe(
    method: str, base: str = "vit_b", config: dict | None = None
) -> tuple[dict[str, int], int]:
    """(trainable parameters per piece, total) of ``method`` (with ``config`` overrides) on ``base``."""
    get_method(method)  # unknown method -> InvalidInput before building anything
    sam = build_architecture(base, meta=True)
    try:
        apply_method(sam, method, dict(config or {}))
    except (NotImplementedError, RuntimeError):
        # The method's inject touched tensor data (meta tensors have none): real build.
        sam = build_architecture(base, meta=False)
        apply_method(sam, method, dict(config or {}))
    pieces = dict(trainable_by_piece(sam))
    return pieces, count_trainable(sam)


def describe_lines(method: str, base: str = "vit_b", config: dict | None = None) -> list[str]:
    """Lines "recipes: NAMES", "recipe.FIELD: value" (how the method trains unless told
    otherwise), "recipe.NAME.FIELD: value" where another named recipe differs, "piece: N"
    per piece, then exactly "trainable_params: N"."""
    import dataclasses

    pieces, total = describe(method, base, config)
    spec = get_method(method)
    recipe = dataclasses.asdict(spec.recipe)
    alternatives = [  # another recipe: the fields where it differs from the default
        f"recipe.{alt.name}.{k}: {v}"
        for alt in spec.alternatives
        for k, v in dataclasses.asdict(alt).items()
        if v != recipe[k] and k != "name"
    ]
    return (
        [f"recipes: {', '.join(spec.recipes)}"]
        + [f"recipe.{k}: {v}" for k, v in recipe.items() if v != ""]
        + alternatives
        + [f"{piece}: {n}" for piece, n in pieces.items()]
        + [f"trainable_params: {total}"]
    )
