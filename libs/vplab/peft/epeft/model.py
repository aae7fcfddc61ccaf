"""E-PEFT: an ensemble of LoRA, IA3, memory tokens and an image-context adapter on SAM's
mask decoder (paper: ``vp-lab-e-peft.txt``; spec: METHODS.md section 3).

``EPEFTMaskDecoder`` is a ``MaskDecoder`` subclass with the stock call signature
``(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
multimask_output) -> (masks, iou_pred)``, so prompt segmentation and visual prompting use
a tuned SAM exactly like a stock one. It adopts the stock decoder's submodules (same
names, so the frozen weights keep their state_dict keys except where LoRA/IA3 wrap a
layer) and adds:

- LoRA (``LoRALinear``) on q/k/v/out of every decoder attention (r=8) and mlp.lin1/lin2
  (r=4).  Count for SAM (dim 256, cross-attention internal dim 128, mlp 2048):
  self-attn 4 x 8(256+256) = 16,384; each cross-attention 4 x 8(256+128) = 12,288;
  MLP 2 x 4(256+2048) = 18,432; 2 layers x (16,384 + 2 x 12,288 + 18,432) + 12,288
  (final attention) = 131,072.
- IA3 (``IA3Scale``, init 1) on keys and values of every decoder attention and on the
  MLP hidden activation: 2 x (512 + 256 + 256 + 2048) + 256 = 6,400.
- Memory tokens (``MemoryTokens``): n (default 8) prepended to the token stream and n
  (default 8) prepended to the image-token stream: 2 x 8 x 256 = 4,096.
- Image-context adapter (``ImageContextAdapter``): 256 -> 64 -> 256 = 33,088, from the
  mean image embedding to an additive offset of the memory tokens.
Total with defaults: 174,656 (the paper reports 201.1K; its LoRA/D-VPT sizes, 144.4K and
12.8K, imply other ranks/targets/token counts than the spec's defaults).

Design choices the paper leaves open (kept visible here):
- Positional encoding of the image-stream memory tokens: zero. They have no spatial
  position; a learned PE would only decouple their key (token + PE) from their value
  (token), which their own learned content already covers. Token-stream memory tokens
  use themselves as PE, like every SAM token (``query_pe = point_embedding``).
- Everything read from the transformer excludes the memory tokens: the IoU token and
  mask tokens are read at offset ``n_prompt_tokens``, and the image tokens used for
  upscaling drop the first ``n_image_prompt_tokens``.
- Adapter offset target: added to every memory token (both streams) when there are any;
  with no memory tokens (``epeft-adapter`` alone) it is added to SAM's output tokens
  (IoU + mask tokens). The output tokens are always present whatever the prompt (points,
  box, none), whereas sparse prompt embeddings can be empty or padding, and they play
  the same role as memory tokens (learned queries, not encodings of the user's clicks).
  Since SAM uses the initial tokens as their own positional encoding, the offset also
  reaches every layer's ``query_pe`` - as the memory tokens' content does.
- Adapter input: the mean of the raw image embedding (before the dense prompt is added),
  i.e. the image representation independent of the prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.transformer import Attention as DecoderAttention
from segment_anything.modeling.transformer import TwoWayTransformer
from torch import nn

from vplab.errors import InvalidInput
from vplab.peft.epeft.config import (
    EPEFTAdapterConfig,
    EPEFTConfig,
    EPEFTIA3Config,
    EPEFTLoRAConfig,
    EPEFTPromptConfig,
)
from vplab.peft.epeft.layer import IA3Scale, ImageContextAdapter, MemoryTokens
from vplab.peft.layers.lora import LoRALinear
from vplab.peft.registry import EncoderMode, MethodSpec, Recipe, register

_ATTN_PROJ = ("q_proj", "k_proj", "v_proj", "out_proj")


def decoder_attentions(transformer: TwoWayTransformer) -> list[tuple[str, DecoderAttention]]:
    """Every attention of SAM's two-way transformer, with its path under the transformer."""
    out: list[tuple[str, DecoderAttention]] = []
    for i, layer in enumerate(transformer.layers):
        for name in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
            out.append((f"layers.{i}.{name}", getattr(layer, name)))
    out.append(("final_attn_token_to_image", transformer.final_attn_token_to_image))
    return out


def _inject_lora(transformer: TwoWayTransformer, config: EPEFTConfig) -> None:
    for _, attn in decoder_attentions(transformer):
        for proj in _ATTN_PROJ:
            base = getattr(attn, proj)
            setattr(
                attn,
                proj,
                LoRALinear(base, config.lora_r_attn, config.lora_alpha_attn, config.lora_dropout),
            )
    for layer in transformer.layers:
        for lin in ("lin1", "lin2"):
            base = getattr(layer.mlp, lin)
            setattr(
                layer.mlp,
                lin,
                LoRALinear(base, config.lora_r_mlp, config.lora_alpha_mlp, config.lora_dropout),
            )


def _inject_ia3(transformer: TwoWayTransformer) -> None:
    # After LoRA (if any): IA3 scales the LoRA-updated projection's output.
    for _, attn in decoder_attentions(transformer):
        attn.k_proj = IA3Scale(attn.k_proj, attn.internal_dim)
        attn.v_proj = IA3Scale(attn.v_proj, attn.internal_dim)
    for layer in transformer.layers:
        # MLPBlock computes lin2(act(lin1(x))): scaling act's output scales the hidden
        # activation (mlp_dim = lin1.out_features, 2048 for SAM).
        layer.mlp.act = IA3Scale(layer.mlp.act, transformer.mlp_dim)


class EPEFTMaskDecoder(MaskDecoder):
    """SAM's ``MaskDecoder`` with E-PEFT pieces; same call signature and outputs."""

    def __init__(self, base: MaskDecoder, config: EPEFTConfig):
        # Skip MaskDecoder.__init__ (it would build fresh weights): adopt base's modules.
        nn.Module.__init__(self)
        for name, child in base.named_children():
            self.add_module(name, child)
        self.transformer_dim = base.transformer_dim
        self.num_multimask_outputs = base.num_multimask_outputs
        self.num_mask_tokens = base.num_mask_tokens
        self.config = config
        dim = base.transformer_dim
        ref = base.iou_token.weight  # new parameters follow the decoder's device/dtype

        if config.lora:
            _inject_lora(self.transformer, config)
        if config.ia3:
            _inject_ia3(self.transformer)
        n_tok = config.n_prompt_tokens if config.prompt_tokens else 0
        n_img = config.n_image_prompt_tokens if config.prompt_tokens else 0
        self.token_memory = MemoryTokens(n_tok, dim, config.prompt_init_std) if n_tok else None
        self.image_memory = MemoryTokens(n_img, dim, config.prompt_init_std) if n_img else None
        self.context_adapter = (
            ImageContextAdapter(dim, config.adapter_hidden) if config.adapter else None
        )
        self.to(device=ref.device, dtype=ref.dtype)
        self.train(base.training)

    @property
    def n_token_memory(self) -> int:
        return self.token_memory.n if self.token_memory is not None else 0

    @property
    def n_image_memory(self) -> int:
        return self.image_memory.n if self.image_memory is not None else 0

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,  # (Bi, C, h, w)
        image_pe: torch.Tensor,  # (1, C, h, w)
        sparse_prompt_embeddings: torch.Tensor,  # (T, S, C)
        dense_prompt_embeddings: torch.Tensor,  # (T or 1, C, h, w)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_tok, n_img = self.n_token_memory, self.n_image_memory
        t = sparse_prompt_embeddings.size(0)
        bi = image_embeddings.size(0)
        if bi > 1 and t > 1:
            # The stock decoder fails here too (repeat_interleave makes Bi*T image rows
            # for T token rows); say why instead of a broadcasting error.
            raise InvalidInput(
                f"mask decoder got {bi} images and {t} prompt sets: decode one image at a "
                "time (image batch 1) or use one prompt set (batch 1) for all images"
            )

        # As the stock decoder: output tokens (IoU, masks) then the sparse prompts.
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(t, -1, -1)  # (T, 1+M, C)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)  # (T, 1+M+S, C)

        src = torch.repeat_interleave(image_embeddings, t, dim=0)  # (R=Bi*T, C, h, w)
        src = src + dense_prompt_embeddings
        pos_src = torch.repeat_interleave(image_pe, t, dim=0)  # (T, C, h, w)
        b, c, h, w = src.shape

        offset = None  # (R, C): per decoded row, the image-context offset
        if self.context_adapter is not None:
            offset = torch.repeat_interleave(self.context_adapter(image_embeddings), t, dim=0)
        if (n_tok or n_img or offset is not None) and tokens.size(0) != b:
            # T == 1 with several images: the stock decoder broadcasts the single prompt
            # set over the images; per-image offsets need it materialised per row.
            tokens = tokens.expand(b, -1, -1)

        if offset is not None and not (n_tok or n_img):
            # No memory tokens: the offset goes to the output tokens (see module doc).
            n_out = 1 + self.num_mask_tokens
            tokens = torch.cat([tokens[:, :n_out] + offset[:, None], tokens[:, n_out:]], dim=1)
        if n_tok and self.token_memory is not None:  # n_tok > 0: the tokens exist
            mem = self.token_memory.weight.unsqueeze(0).expand(b, -1, -1)  # (R, n_tok, C)
            if offset is not None:
                mem = mem + offset[:, None]
            tokens = torch.cat([mem, tokens], dim=1)  # (R, n_tok+1+M+S, C)

        # Image stream as a sequence, as TwoWayTransformer.forward flattens it.
        keys = src.flatten(2).permute(0, 2, 1)  # (R, hw, C)
        key_pe = pos_src.flatten(2).permute(0, 2, 1)  # (T, hw, C)
        if n_img and self.image_memory is not None:  # n_img > 0: the tokens exist
            mem = self.image_memory.weight.unsqueeze(0).expand(b, -1, -1)  # (R, n_img, C)
            if offset is not None:
                mem = mem + offset[:, None]
            keys = torch.cat([mem, keys], dim=1)  # (R, n_img+hw, C)
            # Memory tokens have no position: zero PE (see module doc).
            key_pe = torch.cat([key_pe.new_zeros(key_pe.size(0), n_img, c), key_pe], dim=1)

        hs, keys = self._run_transformer(keys, key_pe, tokens)
        # Read outputs past the memory tokens.
        iou_token_out = hs[:, n_tok, :]
        mask_tokens_out = hs[:, n_tok + 1 : n_tok + 1 + self.num_mask_tokens, :]
        src = keys[:, n_img:, :].transpose(1, 2).view(b, c, h, w)

        # From here on the stock decoder's operations.
        upscaled_embedding = self.output_upscaling(src)  # (R, c, 4h, 4w), channels-last
        hyper_in_list: list[torch.Tensor] = []
        for i in range(self.num_mask_tokens):
            hyper_in_list.append(self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]))
        hyper_in = torch.stack(hyper_in_list, dim=1)  # (R, M, c)
        b, c, h, w = upscaled_embedding.shape
        # The stock (hyper_in @ up.view(b, c, hw)), computed as (up^T @ hyper_in^T)^T: the
        # same product, but its gradient w.r.t. the upscaled map comes back channels-last
        # like the map itself, so the upscaling's backward (GELU, ConvTranspose2d) runs on
        # one layout instead of mixing two (~15 ms of a 120 ms CPU step, BENCHMARKS.md).
        pixels = upscaled_embedding.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (R, hw, c)
        masks = (pixels @ hyper_in.transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred

    def _run_transformer(
        self, keys: torch.Tensor, key_pe: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``TwoWayTransformer.forward`` on already-flattened sequences (so memory tokens
        can be prepended to the image stream); same operations, same order."""
        tr = self.transformer
        queries = tokens
        for layer in tr.layers:
            queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=key_pe)
        q = queries + tokens
        k = keys + key_pe
        attn_out = tr.final_attn_token_to_image(q=q, k=k, v=keys)
        queries = queries + attn_out
        queries = tr.norm_final_attn(queries)
        return queries, keys


def inject_epeft(sam: Sam, config: EPEFTConfig) -> None:
    """Replace ``sam.mask_decoder`` by an ``EPEFTMaskDecoder`` (in place)."""
    decoder = sam.mask_decoder
    if isinstance(decoder, EPEFTMaskDecoder):
        raise InvalidInput("E-PEFT is already applied to this model's mask decoder")
    if (
        not isinstance(decoder, MaskDecoder)
        or type(decoder).predict_masks is not MaskDecoder.predict_masks  # another tuned decoder
        or not isinstance(decoder.transformer, TwoWayTransformer)
    ):
        raise InvalidInput(
            "E-PEFT needs segment_anything's stock MaskDecoder with a TwoWayTransformer, got "
            f"{type(decoder).__name__}"
        )
    sam.mask_decoder = EPEFTMaskDecoder(decoder, config)


class _CommonFields(TypedDict):
    inject: Callable[[nn.Module, Any], None]
    encoder_mode: EncoderMode
    prompt_free: bool
    recipe: Recipe


_COMMON: _CommonFields = {
    "inject": inject_epeft,
    "encoder_mode": "frozen",
    "prompt_free": False,
    "recipe": Recipe(
        lr=3e-3,
        steps=200,
        output="token0",
        source="lr ours (the paper gives none): the best of a small sweep on the demo task",
    ),
}

register(
    MethodSpec(
        name="epeft",
        config_cls=EPEFTConfig,
        description="E-PEFT: LoRA + IA3 + memory tokens + image-context adapter on the mask decoder",
        **_COMMON,
    )
)
register(
    MethodSpec(
        name="epeft-lora",
        config_cls=EPEFTLoRAConfig,
        # A pure weight delta (LoRALinear.merged()) when used alone.
        mergeable=True,
        description="E-PEFT's LoRA piece alone (decoder attention r=8, MLP r=4)",
        **_COMMON,
    )
)
register(
    MethodSpec(
        name="epeft-ia3",
        config_cls=EPEFTIA3Config,
        description="E-PEFT's IA3 piece alone (keys, values, MLP hidden; 6,400 params)",
        **_COMMON,
    )
)
register(
    MethodSpec(
        name="epeft-prompt",
        config_cls=EPEFTPromptConfig,
        description="E-PEFT's memory tokens alone (8 + 8 tokens prepended to both decoder streams)",
        **_COMMON,
    )
)
register(
    MethodSpec(
        name="epeft-adapter",
        config_cls=EPEFTAdapterConfig,
        description="E-PEFT's image-context adapter alone (offset added to SAM's output tokens)",
        **_COMMON,
    )
)
