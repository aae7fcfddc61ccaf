"""Learnable tokens (n, dim): E-PEFT's memory tokens and PTSAM's decoder prompts."""

from __future__ import annotations

import torch
from torch import nn


class LearnedTokens(nn.Module):
    """``weight`` (n, dim), initialised N(0, init_std). Subclasses name their ``peft_piece``."""

    peft_piece = "tokens"

    def __init__(self, n: int, dim: int, init_std: float):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, dim) * init_std)

    @property
    def n(self) -> int:
        return self.weight.shape[0]
