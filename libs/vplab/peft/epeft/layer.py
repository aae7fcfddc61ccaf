"""E-PEFT's small modules: IA3 scaling, memory tokens, image-context adapter.

Each declares ``peft_piece`` so ``vplab.peft.trainable_by_piece`` reports its parameters
under that piece (LoRA uses ``vplab.peft.layers.lora.LoRALinear``, piece "lora").
"""

from __future__ import annotations

import torch
from torch import nn

from vplab.peft.layers.tokens import LearnedTokens


class IA3Scale(nn.Module):
    """``inner(x) * scale`` with a learned per-channel ``scale`` (init 1: identity).

    Wraps a key/value projection (scaling keys and values, as in IA3) or the decoder MLP's
    activation (scaling the 2048-d hidden activation before ``lin2``). Wrapping the module
    rather than patching ``Attention.forward`` keeps segment_anything's forward code in
    use, and composes with LoRA: ``IA3Scale(LoRALinear(k_proj))`` scales (W + BA) x.
    """

    peft_piece = "ia3"

    def __init__(self, inner: nn.Module, dim: int):
        super().__init__()
        self.inner = inner
        self.dim = dim
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (..., dim) * (dim,): exactly inner(x) while scale == 1
        return self.inner(x) * self.scale


class MemoryTokens(LearnedTokens):
    """Learnable tokens (n, dim) prepended to a decoder input sequence."""

    peft_piece = "prompt_tokens"


class ImageContextAdapter(nn.Module):
    """Mean image embedding (B, C, h, w) -> additive token offset (B, C).

    MLP C -> hidden -> C (for C=256, hidden=64: 256*64+64 + 64*256+256 = 33,088 params).
    The last layer is zero-initialised (weight and bias), so the offset is exactly 0 at
    init and the tuned decoder starts as the stock one; the first layer keeps nn.Linear's
    default init so gradients reach the last layer from step 0.
    """

    peft_piece = "adapter"

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        ctx = image_embeddings.mean(dim=(2, 3))  # (B, C, h, w) -> (B, C)
        return self.up(self.act(self.down(ctx)))  # (B, C)
