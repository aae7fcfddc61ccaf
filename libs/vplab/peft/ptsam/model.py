"""PTSAM: prompt-tuned SAM as a prompt-free specialist (paper:
``ptsam-prompt-tuning-sam.txt``; METHODS.md section 4).

- ``ptsam-md``: ``PTSAMMaskDecoder`` appends ``n_md`` learned 256-d prompts to the
  decoder's token stream (2,048 trainable for n_md=8); encoder frozen.
- ``ptsam``: plus ``n_ie`` deep prompts in every ViT block (``PromptedBlock``):
  12 x 8 x 768 = 73,728 for ViT-B, 75,776 in all; the encoder runs in the training loop.

Prompt-free use: ``vplab.segmentation.prompt_free`` (``prompt_free_decode`` - no prompt
encoder input, the frozen no-mask embedding as the dense input - and
``prompt_free_segment`` for one image end to end), shared with every prompt-free method.
``PTSAMMaskDecoder`` keeps the stock call signature, so a PTSAM model also accepts
point/box prompts (they sit between the output tokens and the learned prompts), but it
was trained without them.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import Block, ImageEncoderViT
from segment_anything.modeling.mask_decoder import MaskDecoder
from torch import nn

from vplab.errors import InvalidInput
from vplab.peft.ptsam.config import PTSAMConfig, PTSAMDecoderConfig
from vplab.peft.ptsam.layer import DecoderPrompts, PromptedBlock
from vplab.peft.registry import MethodSpec, Recipe, register


class PTSAMMaskDecoder(MaskDecoder):
    """SAM's ``MaskDecoder`` with learned prompts appended to the token stream.

    Token stream: [IoU token, 4 mask tokens, sparse prompts (none when prompt-free),
    n_md learned prompts]. Everything else is the stock ``predict_masks``.
    """

    def __init__(self, base: MaskDecoder, n_md: int, init_std: float):
        nn.Module.__init__(self)  # skip MaskDecoder.__init__: adopt base's modules
        for name, child in base.named_children():
            self.add_module(name, child)
        self.transformer_dim = base.transformer_dim
        self.num_multimask_outputs = base.num_multimask_outputs
        self.num_mask_tokens = base.num_mask_tokens
        ref = base.iou_token.weight
        self.prompts = DecoderPrompts(n_md, base.transformer_dim, init_std).to(
            ref.device, ref.dtype
        )
        self.train(base.training)

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,  # (Bi, C, h, w)
        image_pe: torch.Tensor,  # (1, C, h, w)
        sparse_prompt_embeddings: torch.Tensor,  # (T, S, C); S = 0 when prompt-free
        dense_prompt_embeddings: torch.Tensor,  # (T or 1, C, h, w)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = sparse_prompt_embeddings.size(0)
        prompts = self.prompts.weight.unsqueeze(0).expand(t, -1, -1)  # (T, n_md, C)
        sparse = torch.cat([sparse_prompt_embeddings, prompts], dim=1)  # (T, S+n_md, C)
        return super().predict_masks(image_embeddings, image_pe, sparse, dense_prompt_embeddings)


def inject_encoder_prompts(image_encoder: ImageEncoderViT, n_ie: int) -> None:
    """Replace every ViT block by a ``PromptedBlock`` with ``n_ie`` prompts (in place)."""
    patch = tuple(image_encoder.patch_embed.proj.kernel_size)
    for i, blk in enumerate(image_encoder.blocks):
        if isinstance(blk, PromptedBlock) or type(blk).forward is not Block.forward:
            raise InvalidInput(
                f"PTSAM: image_encoder.blocks[{i}] is already modified ({type(blk).__name__})"
            )
        image_encoder.blocks[i] = PromptedBlock(blk, n_ie, patch)


def _inject_decoder(sam: Sam, config: PTSAMDecoderConfig) -> None:
    decoder = sam.mask_decoder
    if (
        not isinstance(decoder, MaskDecoder)
        or type(decoder).predict_masks is not MaskDecoder.predict_masks
    ):
        raise InvalidInput(
            f"PTSAM needs segment_anything's stock MaskDecoder, got {type(decoder).__name__}"
        )
    sam.mask_decoder = PTSAMMaskDecoder(decoder, config.n_md, config.md_init_std)


def inject_ptsam_md(sam: Sam, config: PTSAMDecoderConfig) -> None:
    _inject_decoder(sam, config)


def inject_ptsam(sam: Sam, config: PTSAMConfig) -> None:
    _inject_decoder(sam, config)
    if config.n_ie:
        inject_encoder_prompts(sam.image_encoder, config.n_ie)


register(
    MethodSpec(
        name="ptsam-md",
        config_cls=PTSAMDecoderConfig,
        inject=inject_ptsam_md,
        encoder_mode="frozen",
        prompt_free=True,
        recipe=Recipe(
            lr=0.05,
            steps=400,
            output="token0",
            augmentation="bank",
            source="PTSAM paper (decoder prompts only): lr 0.05, output 'token1' is the "
            "paper's first multimask output; steps ours (paper: 20,000 on a GPU), 400 as "
            "a 2,048-parameter prompt trains from cached embeddings",
        ),
        description="PTSAM, mask decoder prompts only (8 x 256 = 2,048 params); prompt-free",
    )
)
register(
    MethodSpec(
        name="ptsam",
        config_cls=PTSAMConfig,
        inject=inject_ptsam,
        encoder_mode="full",
        prompt_free=True,
        recipe=Recipe(
            lr=0.01,
            steps=200,
            output="token0",
            augmentation="online",
            source="PTSAM paper (with encoder prompts): lr 0.01, on-the-fly augmentation "
            "(rotation, crop, elastic, flips, noise, gamma, brightness, contrast); steps "
            "ours (paper: 20,000): the encoder runs every step",
        ),
        description="PTSAM: decoder prompts + deep prompts in every ViT block (75,776 for ViT-B); prompt-free",
    )
)
