"""LoRA on an ``nn.Linear``: y = W x + b + (alpha / r) * B(A(dropout(x))).

Same initialisation as HF peft (A Kaiming-uniform with a=sqrt(5), B zero), so the
wrapped layer is exactly the base layer at initialisation; ``tests/`` checks it against
``peft``'s own LoRA layer. ``out_slices`` restricts the update to row ranges of the
output (e.g. only q and v of SAM's fused qkv projection) without touching the rest.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    peft_piece = "lora"

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float | None = None,
        dropout: float = 0.0,
        out_slices: list[tuple[int, int]] | None = None,
    ):
        super().__init__()
        if r <= 0:
            raise ValueError("LoRA rank must be positive")
        self.base = base
        self.r = r
        self.scaling = (alpha if alpha is not None else r) / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # One (A, B) pair per output slice; the whole output when no slices are given.
        self.out_slices = out_slices or [(0, base.out_features)]
        self.lora_A = nn.ParameterList()
        self.lora_B = nn.ParameterList()
        for start, stop in self.out_slices:
            a = nn.Parameter(torch.empty(r, base.in_features))
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_A.append(a)
            self.lora_B.append(nn.Parameter(torch.zeros(stop - start, r)))

    def delta_weight(self) -> torch.Tensor:
        """The dense update to ``base.weight`` (out x in)."""
        delta = torch.zeros_like(self.base.weight)
        for (start, stop), a, b in zip(self.out_slices, self.lora_A, self.lora_B):
            delta[start:stop] += (b @ a) * self.scaling
        return delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        h = self.dropout(x)
        if len(self.out_slices) == 1 and self.out_slices[0] == (0, self.base.out_features):
            return y + (h @ self.lora_A[0].t() @ self.lora_B[0].t()) * self.scaling
        updates = []
        last = 0
        for (start, stop), a, b in zip(self.out_slices, self.lora_A, self.lora_B):
            if start > last:
                updates.append(y.new_zeros(*y.shape[:-1], start - last))
            updates.append((h @ a.t() @ b.t()) * self.scaling)
            last = stop
        if last < self.base.out_features:
            updates.append(y.new_zeros(*y.shape[:-1], self.base.out_features - last))
        return y + torch.cat(updates, dim=-1)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain Linear with the update folded into the weight (for export)."""
        out = nn.Linear(
            self.base.in_features, self.base.out_features, bias=self.base.bias is not None
        )
        out = out.to(self.base.weight.device, self.base.weight.dtype)
        out.weight.copy_(self.base.weight + self.delta_weight())
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        return out
