"""CellSeg1 and SAMed: rank-4 LoRA on SAM, differing in what else trains.

- ``cellseg1``: LoRA r4 on q, v of every encoder block and on q_proj, v_proj of every
  mask-decoder attention (self, token->image, image->token, final); nothing else trains
  (171,008 for ViT-B).
- ``cellseg1-md``: only the decoder LoRA part (23,552); the encoder is untouched, so the
  trainer can work from cached embeddings.
- ``samed``: LoRA r4 on q, v of the encoder + full decoder + prompt encoder (4,212,016).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from segment_anything.modeling import Sam
from segment_anything.modeling.transformer import Attention as DecoderAttention

from vplab.peft.encoder.common import EncoderPeftConfig, encoder_blocks, train_heads
from vplab.peft.encoder.lora import lora_linear, lora_qkv
from vplab.peft.registry import MethodSpec, register


def lora_decoder_attentions(
    sam: Sam, r: int, alpha: float | None, dropout: float, targets: Sequence[str] = ("q", "v")
) -> None:
    """LoRA on ``{t}_proj`` of every Attention in the mask decoder's two-way transformer."""
    for module in list(sam.mask_decoder.modules()):
        if isinstance(module, DecoderAttention):
            for t in targets:
                lora_linear(module, f"{t}_proj", r, alpha, dropout)


@dataclass
class CellSeg1Config(EncoderPeftConfig):
    train_decoder: bool = False
    train_prompt_encoder: bool = False
    r: int = 4
    alpha: float | None = None
    dropout: float = 0.0


def inject_cellseg1(sam: Sam, config: CellSeg1Config) -> None:
    for block in encoder_blocks(sam):
        lora_qkv(block, ("q", "v"), config.r, config.alpha, config.dropout)
    lora_decoder_attentions(sam, config.r, config.alpha, config.dropout)
    train_heads(sam, config)


@dataclass
class CellSeg1MdConfig(CellSeg1Config):
    pass


def inject_cellseg1_md(sam: Sam, config: CellSeg1MdConfig) -> None:
    lora_decoder_attentions(sam, config.r, config.alpha, config.dropout)
    train_heads(sam, config)


@dataclass
class SamedConfig(EncoderPeftConfig):
    r: int = 4
    alpha: float | None = None
    dropout: float = 0.0


def inject_samed(sam: Sam, config: SamedConfig) -> None:
    for block in encoder_blocks(sam):
        lora_qkv(block, ("q", "v"), config.r, config.alpha, config.dropout)
    train_heads(sam, config)


register(
    MethodSpec(
        name="cellseg1",
        config_cls=CellSeg1Config,
        inject=inject_cellseg1,
        encoder_mode="full",
        mergeable=True,
        description="LoRA r4 on q, v of the encoder and of every decoder attention; rest frozen.",
    )
)
register(
    MethodSpec(
        name="cellseg1-md",
        config_cls=CellSeg1MdConfig,
        inject=inject_cellseg1_md,
        encoder_mode="frozen",
        mergeable=True,
        description="LoRA r4 on q, v of every mask-decoder attention only.",
    )
)
register(
    MethodSpec(
        name="samed",
        config_cls=SamedConfig,
        inject=inject_samed,
        encoder_mode="full",
        mergeable=True,
        description="LoRA r4 on q, v of the encoder + full decoder + prompt encoder (SAMed).",
    )
)
