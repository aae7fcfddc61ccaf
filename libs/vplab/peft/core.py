"""Applying a registered method to a SAM model and reporting what trains."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn

from vplab.peft.registry import get_method, make_config


def apply_method(sam: nn.Module, name: str, config: Any = None) -> Any:
    """Freeze ``sam``, then inject method ``name`` in place. Returns the config used.

    ``config`` may be None (defaults), a dict of overrides, or the config dataclass.
    """
    spec = get_method(name)
    if config is None or isinstance(config, dict):
        config = make_config(name, config)
    for p in sam.parameters():
        p.requires_grad_(False)
    spec.inject(sam, config)
    return config


def trainable_by_piece(model: nn.Module) -> OrderedDict[str, int]:
    """Trainable parameter counts per piece.

    A parameter belongs to the nearest enclosing module that declares a class attribute
    ``peft_piece`` (e.g. "lora", "ia3", "prompt_tokens"); otherwise to the model's
    top-level child it lives in (e.g. "mask_decoder", "image_encoder").
    """
    counts: OrderedDict[str, int] = OrderedDict()

    def walk(module: nn.Module, piece: str) -> None:
        piece = getattr(module, "peft_piece", None) or piece
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                counts[piece] = counts.get(piece, 0) + p.numel()
        for child in module.children():
            walk(child, piece)

    for name, child in model.named_children():
        walk(child, name)
    for p in model.parameters(recurse=False):
        if p.requires_grad:
            counts["(root)"] = counts.get("(root)", 0) + p.numel()
    return counts


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
