"""PTSAM's prompt modules and the deep-prompted ViT block of SAM's image encoder.

Deep visual prompts in SAM's windowed ViT (``PromptedBlock``):
- windowed blocks: the block's ``n`` prompts are prepended inside EVERY window (the same
  prompts for each window); global blocks: once per image;
- prompts pass through ``norm1`` and attention only (no MLP, no residual stream);
- only patch queries are computed: prompt outputs would be dropped after attention
  anyway (VPT-deep replaces them at each layer), so prompts act as extra keys/values;
- relative-position bias applies patch-to-patch; prompt columns get zero bias.
Batched over windows: prompt keys/values are computed once per block from the normed
prompts and concatenated to every window's keys/values; the rel-pos bias is added to the
patch-patch logits with segment_anything's ``add_decomposed_rel_pos``, then the prompt
logits (zero bias) are concatenated before the softmax. ``tests/test_peft_ptsam.py``
checks this against a per-window loop with full (n+N)x(n+N) attention.
"""

from __future__ import annotations

import math

import torch
from segment_anything.modeling.image_encoder import (
    Attention as ViTAttention,
)
from segment_anything.modeling.image_encoder import (
    Block,
    add_decomposed_rel_pos,
    window_partition,
    window_unpartition,
)
from torch import nn

from vplab.peft.layers.tokens import LearnedTokens


class DecoderPrompts(LearnedTokens):
    """(n_md, 256) learned tokens appended to the mask decoder's token stream."""

    peft_piece = "decoder_prompts"


class EncoderPrompts(nn.Module):
    """(n_ie, embed_dim) learned prompts of one ViT block (VPT-deep)."""

    peft_piece = "encoder_prompts"

    def __init__(self, n: int, dim: int, patch_size: tuple[int, int]):
        super().__init__()
        # VPT's init: uniform(-v, v), v = sqrt(6 / (3 * patch area + dim)).
        val = math.sqrt(6.0 / float(3 * patch_size[0] * patch_size[1] + dim))
        self.weight = nn.Parameter(torch.empty(n, dim).uniform_(-val, val))

    @property
    def n(self) -> int:
        return self.weight.shape[0]


def prompted_attention(
    attn: ViTAttention,
    x: torch.Tensor,  # (B', H, W, C): B' = images x windows, or images for global blocks
    prompts: torch.Tensor,  # (n, C), already through norm1; shared by all B' sequences
) -> torch.Tensor:
    """SAM's ViT ``Attention.forward`` with ``prompts`` as extra keys/values.

    Patch queries attend to [prompts, patches]; rel-pos bias on patch columns only.
    Returns (B', H, W, C), patch outputs only.
    """
    B, H, W, _ = x.shape
    nh = attn.num_heads
    N = H * W
    # Exactly the stock code for the patch part.
    qkv = attn.qkv(x).reshape(B, N, 3, nh, -1).permute(2, 0, 3, 1, 4)  # (3, B, nh, N, hd)
    q, k, v = qkv.reshape(3, B * nh, N, -1).unbind(0)  # (B*nh, N, hd)
    logits = (q * attn.scale) @ k.transpose(-2, -1)  # (B*nh, N, N)
    if attn.use_rel_pos:
        logits = add_decomposed_rel_pos(logits, q, attn.rel_pos_h, attn.rel_pos_w, (H, W), (H, W))

    n = prompts.shape[0]
    if n:
        hd = q.shape[-1]
        # Keys/values of the prompts: once per block, not once per window.
        pqkv = attn.qkv(prompts).reshape(n, 3, nh, hd).permute(1, 2, 0, 3)  # (3, nh, n, hd)
        pk, pv = pqkv[1], pqkv[2]  # (nh, n, hd)
        qh = (q * attn.scale).view(B, nh, N, hd)
        p_logits = (qh @ pk.transpose(-2, -1)).reshape(B * nh, N, n)  # broadcast over B'
        # Zero rel-pos bias on prompt columns: nothing is added to p_logits.
        logits = torch.cat([p_logits, logits], dim=-1)  # (B*nh, N, n+N)
        v = torch.cat([pv.unsqueeze(0).expand(B, nh, n, hd).reshape(B * nh, n, hd), v], dim=1)

    weights = logits.softmax(dim=-1)
    out = (weights @ v).view(B, nh, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
    return attn.proj(out)


class PromptedBlock(Block):
    """segment_anything's ViT ``Block`` with deep prompts (see module doc).

    Adopts the stock block's submodules (same names, so frozen weights keep their
    state_dict keys) and adds ``prompt`` (``EncoderPrompts``).
    """

    def __init__(self, base: Block, n: int, patch_size: tuple[int, int]):
        nn.Module.__init__(self)  # skip Block.__init__: it would build fresh weights
        for name, child in base.named_children():
            self.add_module(name, child)
        self.window_size = base.window_size
        ref = base.attn.proj.weight
        self.prompt = EncoderPrompts(n, ref.shape[0], patch_size).to(ref.device, ref.dtype)
        self.train(base.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C) -> (B, H, W, C)
        shortcut = x
        x = self.norm1(x)
        prompts = self.norm1(self.prompt.weight)  # (n, C): prompts go through norm1 too
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)  # (B*nW, ws, ws, C)
        x = prompted_attention(self.attn, x, prompts)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (H, W))
        x = shortcut + x
        x = x + self.mlp(self.norm2(x))
        return x
