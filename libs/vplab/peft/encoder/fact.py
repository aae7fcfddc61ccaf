"""FacT (tensor-train form) on the fused qkv of every encoder block.

delta_q(x) = s * V(drop(C_q(U(x)))),  delta_v(x) = s * V(drop(C_v(U(x))))
with U: d -> r and V: r -> d shared by q and v of a block and r x r cores C_q, C_v.
This is the per-block form used by the study's reference code (micro-sam's FacT, after
Jie & Deng 2023); the reference count 4,365,616 for ViT-B is exactly 12 x (U + V + 2
cores) + decoder + prompt encoder. V is zero-initialised so the block is unchanged at
init. The scale ``s`` is configurable (FacT's paper tunes it; default 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from segment_anything.modeling import Sam
from torch import nn

from vplab.peft.encoder.common import (
    MICRO_SAM_RECIPE,
    EncoderPeftConfig,
    encoder_blocks,
    train_heads,
)
from vplab.peft.registry import MethodSpec, register


class FacTQKV(nn.Module):
    peft_piece = "fact"

    def __init__(self, base: nn.Linear, rank: int, dropout: float, scale: float):
        super().__init__()
        self.base = base
        self.dim = base.in_features
        self.scale = scale
        self.fact_u = nn.Linear(self.dim, rank, bias=False)
        self.fact_v = nn.Linear(rank, self.dim, bias=False)
        self.core_q = nn.Linear(rank, rank, bias=False)
        self.core_v = nn.Linear(rank, rank, bias=False)
        self.drop_q = nn.Dropout(dropout)
        self.drop_v = nn.Dropout(dropout)
        nn.init.kaiming_uniform_(self.fact_u.weight, a=math.sqrt(5))
        nn.init.zeros_(self.fact_v.weight)  # identity at init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.base(x)
        u = self.fact_u(x)
        dq = self.fact_v(self.drop_q(self.core_q(u))) * self.scale
        dv = self.fact_v(self.drop_v(self.core_v(u))) * self.scale
        # Out-of-place (cat, not +=): in-place edits of the base output break autograd
        # when the base is quantised/frozen (see the study's App. B).
        zeros_k = qkv.new_zeros(*qkv.shape[:-1], self.dim)
        return qkv + torch.cat([dq, zeros_k, dv], dim=-1)


@dataclass
class FactConfig(EncoderPeftConfig):
    rank: int = 16
    dropout: float = 0.1
    scale: float = 1.0


def inject_fact(sam: Sam, config: FactConfig) -> None:
    for block in encoder_blocks(sam):
        block.attn.qkv = FacTQKV(block.attn.qkv, config.rank, config.dropout, config.scale)
    train_heads(sam, config)


register(
    MethodSpec(
        name="fact",
        config_cls=FactConfig,
        inject=inject_fact,
        encoder_mode="full",
        alternatives=(MICRO_SAM_RECIPE,),
        mergeable=False,
        description="FacT-TT r16 on q, v of every encoder block + decoder + prompt encoder.",
    )
)
