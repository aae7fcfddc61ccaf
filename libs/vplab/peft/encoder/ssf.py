"""SSF (Scale-Shift Features): y = s * f(x) + t after qkv, proj, lin1, lin2, norm1, norm2.

Each wrapped layer is Linear or LayerNorm, both affine in their own weight/bias, so the
scale/shift folds into them on export (mergeable): W' = diag(s) W, b' = s * b + t.
Init as the SSF paper: s ~ N(1, 0.02), t ~ N(0, 0.02) (so the model is *not* exactly
the base at init); ``init_identity=True`` gives s = 1, t = 0 (tests, warm starts).
"""

from __future__ import annotations

import copy
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


def _out_features(base: nn.Linear | nn.LayerNorm) -> int:
    if isinstance(base, nn.Linear):
        return base.out_features
    (n,) = base.normalized_shape
    return n


class SSF(nn.Module):
    peft_piece = "ssf"

    def __init__(self, base: nn.Module, init_std: float = 0.02, init_identity: bool = False):
        super().__init__()
        if not isinstance(base, (nn.Linear, nn.LayerNorm)):
            raise TypeError(f"SSF wraps Linear or LayerNorm, not {type(base).__name__}")
        self.base = base
        n = _out_features(base)
        self.ssf_scale = nn.Parameter(torch.ones(n))
        self.ssf_shift = nn.Parameter(torch.zeros(n))
        if not init_identity:
            nn.init.normal_(self.ssf_scale, mean=1.0, std=init_std)
            nn.init.normal_(self.ssf_shift, mean=0.0, std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) * self.ssf_scale + self.ssf_shift

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base layer with scale/shift folded into its weight and bias."""
        out = copy.deepcopy(self.base)
        if out.weight is None or out.bias is None:
            raise ValueError("SSF can only be merged into a layer with weight and bias")
        s, t = self.ssf_scale, self.ssf_shift
        if isinstance(out, nn.Linear):
            out.weight.mul_(s[:, None])
        else:
            out.weight.mul_(s)
        out.bias.mul_(s).add_(t)
        return out


@dataclass
class SsfConfig(EncoderPeftConfig):
    init_std: float = 0.02
    init_identity: bool = False


def inject_ssf(sam: Sam, config: SsfConfig) -> None:
    def wrap(parent: nn.Module, name: str) -> None:
        setattr(parent, name, SSF(getattr(parent, name), config.init_std, config.init_identity))

    for block in encoder_blocks(sam):
        wrap(block.attn, "qkv")
        wrap(block.attn, "proj")
        wrap(block.mlp, "lin1")
        wrap(block.mlp, "lin2")
        wrap(block, "norm1")
        wrap(block, "norm2")
    train_heads(sam, config)


register(
    MethodSpec(
        name="ssf",
        config_cls=SsfConfig,
        inject=inject_ssf,
        encoder_mode="full",
        alternatives=(MICRO_SAM_RECIPE,),
        mergeable=True,
        description="Scale/shift after qkv, proj, lin1, lin2, norm1, norm2 of every encoder block.",
    )
)
