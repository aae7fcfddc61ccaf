"""AdaptFormer: a bottleneck adapter in parallel with each encoder block's MLP.

mlp'(x) = mlp(x) + alpha * up(drop(relu(down(x)))), where x is the MLP input (after
norm2). ``up`` is zero-initialised, so the encoder is unchanged at init; alpha is a
learnable scalar initialised to 1 (or a fixed scale with ``learnable_scale=False``).
Not mergeable: the ReLU bottleneck is not a weight delta.
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


class AdaptFormerMLP(nn.Module):
    peft_piece = "adaptformer"

    def __init__(
        self,
        base: nn.Module,
        dim: int,
        bottleneck: int,
        dropout: float,
        scale_init: float,
        learnable_scale: bool,
    ):
        super().__init__()
        self.base = base
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        scale = torch.tensor([float(scale_init)])
        if learnable_scale:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.drop(self.act(self.down(x)))) * self.scale


@dataclass
class AdaptFormerConfig(EncoderPeftConfig):
    bottleneck: int = 64
    dropout: float = 0.0
    scale_init: float = 1.0
    learnable_scale: bool = True


def inject_adaptformer(sam: Sam, config: AdaptFormerConfig) -> None:
    for block in encoder_blocks(sam):
        dim = block.mlp.lin1.in_features
        block.mlp = AdaptFormerMLP(
            block.mlp,
            dim,
            config.bottleneck,
            config.dropout,
            config.scale_init,
            config.learnable_scale,
        )
    train_heads(sam, config)


register(
    MethodSpec(
        name="adaptformer",
        config_cls=AdaptFormerConfig,
        inject=inject_adaptformer,
        encoder_mode="full",
        alternatives=(MICRO_SAM_RECIPE,),
        mergeable=False,
        description="Parallel bottleneck-64 adapter on every encoder MLP + decoder + prompt encoder.",
    )
)
