"""Selective PEFT: no new modules, only a choice of which existing weights train.

freeze-encoder, attn-tune, bias-tune, ln-tune, late-ft and full-ft. All are pure weight
deltas (the tuned model *is* a plain SAM), hence mergeable.
"""

from __future__ import annotations

from dataclasses import dataclass

from segment_anything.modeling import Sam

from vplab.peft.encoder.common import (
    MICRO_SAM_RECIPE,
    EncoderPeftConfig,
    encoder_blocks,
    set_trainable,
    train_heads,
)
from vplab.peft.registry import MethodSpec, register


@dataclass
class FreezeEncoderConfig(EncoderPeftConfig):
    pass


def inject_freeze_encoder(sam: Sam, config: FreezeEncoderConfig) -> None:
    train_heads(sam, config)


@dataclass
class AttnTuneConfig(EncoderPeftConfig):
    # Relative-position tables belong to attention in SAM's ViT (Attention.rel_pos_h/w).
    include_rel_pos: bool = True


def inject_attn_tune(sam: Sam, config: AttnTuneConfig) -> None:
    for block in encoder_blocks(sam):
        attn = block.attn
        set_trainable(attn.qkv.parameters())
        set_trainable(attn.proj.parameters())
        if config.include_rel_pos and getattr(attn, "use_rel_pos", False):
            set_trainable([attn.rel_pos_h, attn.rel_pos_w])
    train_heads(sam, config)


@dataclass
class BiasTuneConfig(EncoderPeftConfig):
    pass


def inject_bias_tune(sam: Sam, config: BiasTuneConfig) -> None:
    # Every bias inside the ViT blocks (qkv, proj, lin1, lin2, norm1, norm2): 8,448 per
    # ViT-B block. The patch embedding and neck stay frozen, as in the reference count.
    for block in encoder_blocks(sam):
        for name, p in block.named_parameters():
            if name.rsplit(".", 1)[-1] == "bias":
                p.requires_grad_(True)
    train_heads(sam, config)


@dataclass
class LnTuneConfig(EncoderPeftConfig):
    pass


def inject_ln_tune(sam: Sam, config: LnTuneConfig) -> None:
    for block in encoder_blocks(sam):
        set_trainable(block.norm1.parameters())
        set_trainable(block.norm2.parameters())
    train_heads(sam, config)


@dataclass
class LateFtConfig(EncoderPeftConfig):
    start_block: int = 6


def inject_late_ft(sam: Sam, config: LateFtConfig) -> None:
    # Whole blocks >= start_block (incl. rel-pos tables). The neck stays frozen: the
    # reference count (46,638,128 for ViT-B) has exactly blocks 6-11 + decoder + prompt enc.
    for block in encoder_blocks(sam, config.start_block):
        set_trainable(block.parameters())
    train_heads(sam, config)


@dataclass
class FullFtConfig(EncoderPeftConfig):
    pass


def inject_full_ft(sam: Sam, config: FullFtConfig) -> None:
    set_trainable(sam.image_encoder.parameters())
    train_heads(sam, config)


register(
    MethodSpec(
        name="freeze-encoder",
        config_cls=FreezeEncoderConfig,
        inject=inject_freeze_encoder,
        encoder_mode="frozen",
        alternatives=(MICRO_SAM_RECIPE,),
        mergeable=True,
        description="Image encoder frozen; mask decoder and prompt encoder train.",
    )
)
register(
    MethodSpec(
        name="attn-tune",
        config_cls=AttnTuneConfig,
        inject=inject_attn_tune,
        encoder_mode="full",
        alternatives=(MICRO_SAM_RECIPE,),
        mergeable=True,
        description="Attention weights of every encoder block (qkv, proj, rel-pos) + decoder.",
    )
)
register(
    MethodSpec(
        name="bias-tune",
        config_cls=BiasTuneConfig,
        inject=inject_bias_tune,
        encoder_mode="full",
        alternatives=(MICRO_SAM_RECIPE,),
        mergeable=True,
        description="Every bias in the encoder blocks + decoder + prompt encoder.",
    )
)
register(
    MethodSpec(
        name="ln-tune",
        config_cls=LnTuneConfig,
        inject=inject_ln_tune,
        encoder_mode="full",
        alternatives=(MICRO_SAM_RECIPE,),
        mergeable=True,
        description="LayerNorms (norm1, norm2) of the encoder blocks + decoder + prompt encoder.",
    )
)
register(
    MethodSpec(
        name="late-ft",
        config_cls=LateFtConfig,
        inject=inject_late_ft,
        encoder_mode="late",
        alternatives=(MICRO_SAM_RECIPE,),
        mergeable=True,
        description="Encoder blocks >= start_block fully trainable + decoder + prompt encoder.",
    )
)
register(
    MethodSpec(
        name="full-ft",
        config_cls=FullFtConfig,
        inject=inject_full_ft,
        encoder_mode="full",
        alternatives=(MICRO_SAM_RECIPE,),
        mergeable=True,
        description="Every parameter trains.",
    )
)
