"""Prompt-free decoding: SAM's decoder with no prompt at all, the way PTSAM, SAMed and the
PTSAM paper's prompt-free CellSeg1 segment a whole class automatically.

No sparse prompt; the dense input is the prompt encoder's no-mask embedding (frozen unless
a method trains the prompt encoder); the output is mask token 0 or the first of the three
multimask outputs. Shared by training, validation, serving and ``vplab predict``.
"""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.modeling import Sam

from vplab.errors import InvalidInput


def prompt_free_decode(
    sam: Sam, image_embeddings: torch.Tensor, output: str = "token0"
) -> torch.Tensor:
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
def prompt_free_segment(sam: Sam, image: np.ndarray, output: str = "token0") -> np.ndarray:
    """One HxWx3 uint8 image -> HxW bool mask, prompt-free (for ``vplab predict``).

    SAM pre-processing (longest side to ``img_size``, normalise, pad), the (tuned)
    encoder, ``prompt_free_decode``, then logits upsampled to the padded square, cropped,
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
    logits = prompt_free_decode(sam, sam.image_encoder(x), output)  # (1, 1, 4g, 4g)
    logits = postprocess_masks(logits.float(), resized.shape[:2], image.shape[:2], size)
    return (logits[0, 0] > 0).cpu().numpy()
