"""PTSAM configuration (paper: ``ptsam-prompt-tuning-sam.txt``; METHODS.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PTSAMDecoderConfig:
    """``ptsam-md``: learned prompts appended to the mask decoder's token stream."""

    n_md: int = 8  # decoder prompts, 256-d each: 8 x 256 = 2,048 trainable
    # The paper does not give an init; small normal, configurable. (With the paper's lr
    # of 0.05 the prompts leave this scale within a few steps anyway.)
    md_init_std: float = 0.02

    def __post_init__(self) -> None:
        from vplab.errors import InvalidInput

        if self.n_md < 1:
            raise InvalidInput("PTSAM: n_md (decoder prompts) must be >= 1")
        if self.md_init_std < 0:
            raise InvalidInput("PTSAM: md_init_std must be >= 0")


@dataclass
class PTSAMConfig(PTSAMDecoderConfig):
    """``ptsam``: decoder prompts plus deep (per-block) prompts in the image encoder."""

    # Prompts per ViT block, embed_dim each: 12 x 8 x 768 = 73,728 for ViT-B.
    # Initialised uniform(-v, v), v = sqrt(6 / (3 * patch_h * patch_w + embed_dim)), as in
    # VPT (Jia et al.). 0 means no encoder prompts (the encoder still runs in the loop).
    n_ie: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        from vplab.errors import InvalidInput

        if self.n_ie < 0:
            raise InvalidInput("PTSAM: n_ie (encoder prompts per block) must be >= 0")
