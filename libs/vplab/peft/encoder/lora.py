"""LoRA on SAM's image encoder: ``lora`` (q, v of every block) and ``late-lora``.

SAM fuses q, k and v into one ``attn.qkv`` Linear (out = 3 * dim), so LoRA targets row
slices of it (``LoRALinear(out_slices=...)``), one (A, B) pair per projection, exactly
like separate q/v Linears would get. Scale alpha / r = 1 by default (alpha = r).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import Block
from torch import nn

from vplab.peft.encoder.common import (
    MICRO_SAM_RECIPE,
    EncoderPeftConfig,
    encoder_blocks,
    qkv_slices,
    train_heads,
)
from vplab.peft.layers.lora import LoRALinear
from vplab.peft.registry import MethodSpec, register


def lora_qkv(
    block: Block, targets: Sequence[str], r: int, alpha: float | None, dropout: float
) -> LoRALinear:
    """Replace ``block.attn.qkv`` by a LoRA wrapper on the given projections."""
    qkv = block.attn.qkv
    dim = qkv.in_features
    wrapped = LoRALinear(
        qkv, r=r, alpha=alpha, dropout=dropout, out_slices=qkv_slices(dim, targets)
    )
    block.attn.qkv = wrapped
    return wrapped


def lora_linear(
    parent: nn.Module, name: str, r: int, alpha: float | None, dropout: float
) -> LoRALinear:
    wrapped = LoRALinear(getattr(parent, name), r=r, alpha=alpha, dropout=dropout)
    setattr(parent, name, wrapped)
    return wrapped


@dataclass
class LoraConfig(EncoderPeftConfig):
    r: int = 32
    alpha: float | None = None  # None: alpha = r, i.e. scale 1 (the study's setting)
    dropout: float = 0.0
    targets: Sequence[str] = ("q", "v")  # projections of the fused qkv


def inject_lora(sam: Sam, config: LoraConfig) -> None:
    for block in encoder_blocks(sam):
        lora_qkv(block, config.targets, config.r, config.alpha, config.dropout)
    train_heads(sam, config)


@dataclass
class LateLoraConfig(EncoderPeftConfig):
    r: int = 32
    alpha: float | None = None
    dropout: float = 0.0
    start_block: int = 6
    targets: Sequence[str] = ("q", "k", "v")
    # "LoRA-A" of the study: the MLP linears too (the 6,423,856 reference count includes them).
    mlp: bool = True


def inject_late_lora(sam: Sam, config: LateLoraConfig) -> None:
    for block in encoder_blocks(sam, config.start_block):
        lora_qkv(block, config.targets, config.r, config.alpha, config.dropout)
        if config.mlp:
            lora_linear(block.mlp, "lin1", config.r, config.alpha, config.dropout)
            lora_linear(block.mlp, "lin2", config.r, config.alpha, config.dropout)
    train_heads(sam, config)


register(
    MethodSpec(
        name="lora",
        config_cls=LoraConfig,
        inject=inject_lora,
        encoder_mode="full",
        alternatives=(MICRO_SAM_RECIPE,),
        mergeable=True,
        description="LoRA r32 on q and v of every encoder block + decoder + prompt encoder.",
    )
)
register(
    MethodSpec(
        name="late-lora",
        config_cls=LateLoraConfig,
        inject=inject_late_lora,
        encoder_mode="late",
        alternatives=(MICRO_SAM_RECIPE,),
        mergeable=True,
        description="LoRA r32 on q, k, v and MLP lin1/lin2 of blocks >= start_block + decoder.",
    )
)
