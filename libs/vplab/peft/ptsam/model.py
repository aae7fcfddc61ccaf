"""PTSAM: prompt-tuned SAM as a prompt-free specialist (paper:
``ptsam-prompt-tuning-sam.txt``; METHODS.md section 4).

- ``ptsam-md``: ``PTSAMMaskDecoder`` appends ``n_md`` learned 256-d prompts to the
  decoder's token stream (2,048 trainable for n_md=8); encoder frozen.
- ``ptsam``: plus ``n_ie`` deep prompts in every ViT block (``PromptedBlock``):
  12 x 8 x 768 = 73,728 for ViT-B, 75,776 in all; the encoder runs in the training loop.

Prompt-free use: ``ptsam_decode(sam, image_embeddings)`` - no prompt encoder input; the
dense input is the frozen no-mask embedding; the output is mask token 0's mask
(``ptsam_segment(sam, image)`` runs one image end to end).
``PTSAMMaskDecoder`` keeps the stock call signature, so a PTSAM model also accepts
point/box prompts (they sit between the output tokens and the learned prompts), but it
was trained without them.
"""

from __future__ import annotations

import numpy as np
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


def ptsam_decode(sam: Sam, image_embeddings: torch.Tensor, output: str = "token0") -> torch.Tensor:
    """Prompt-free decoding: (B, C, h, w) image embeddings -> (B, 1, 4h, 4w) low-res logits
    ((B, 1, 256, 256) for SAM).

    No sparse prompts, the frozen no-mask embedding as the dense input; ``output``: mask
    token 0 (``multimask_output=False``, our default) or "token1", the first of the three
    multimask outputs (the PTSAM paper's). ``MaskDecoder.predict_masks`` repeats the image
    embedding once per prompt set (B images with B prompt sets -> B^2 masks), so this
    decodes one image at a time with a single (empty) prompt set; the decoder is light
    next to the encoder, so the loop costs little. Gradients flow (used for training).
    With a stock decoder this is SAM's own no-prompt output (a 0-shot baseline).
    """
    if image_embeddings.dim() != 4:
        raise InvalidInput(
            f"image embeddings must be (B, C, h, w), got {tuple(image_embeddings.shape)}"
        )
    pe = sam.prompt_encoder
    h, w = pe.image_embedding_size
    b, c = image_embeddings.shape[:2]
    if (c, *image_embeddings.shape[2:]) != (pe.embed_dim, h, w):
        raise InvalidInput(
            f"image embeddings must be (B, {pe.embed_dim}, {h}, {w}), got {tuple(image_embeddings.shape)}"
        )
    image_pe = pe.get_dense_pe()  # (1, C, h, w)
    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, h, w)  # (1, C, h, w)
    sparse = image_embeddings.new_zeros(1, 0, c)  # one empty prompt set
    if output not in ("token0", "token1"):
        raise InvalidInput(f"prompt-free decoding serves 'token0' or 'token1', not {output!r}")
    multimask = output == "token1"
    out = []
    for i in range(b):
        masks, _ = sam.mask_decoder(
            image_embeddings=image_embeddings[i : i + 1],
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        out.append(masks[:, :1])  # (1, 1, 4h, 4w): token 0, or token 1 of tokens 1-3
    return torch.cat(out, dim=0)  # (B, 1, 4h, 4w)


@torch.no_grad()
def ptsam_segment(sam: Sam, image: np.ndarray, output: str = "token0") -> np.ndarray:
    """One HxWx3 uint8 image -> HxW bool mask, prompt-free (for ``vplab predict``).

    SAM pre-processing (longest side to ``img_size``, normalise, pad), the (tuned)
    encoder, ``ptsam_decode``, then logits upsampled to the padded square, cropped,
    resized to H x W and thresholded at 0 (METHODS.md section 1).
    """
    from vplab.images import check_rgb_image
    from vplab.segmentation.transforms import (
        image_to_tensor,
        normalize_pad,
        postprocess_masks,
        resize_longest_side,
    )

    check_rgb_image(image)
    size = sam.image_encoder.img_size
    device = sam.pixel_mean.device
    resized = resize_longest_side(image, size)
    x = normalize_pad(
        image_to_tensor(resized, device), sam.pixel_mean.flatten(), sam.pixel_std.flatten(), size
    )
    x = x.to(next(sam.image_encoder.parameters()).dtype)
    logits = ptsam_decode(sam, sam.image_encoder(x), output)  # (1, 1, 4g, 4g)
    logits = postprocess_masks(logits.float(), resized.shape[:2], image.shape[:2], size)
    return (logits[0, 0] > 0).cpu().numpy()


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
