"""PTSAM: prompt-tuned SAM (METHODS.md section 4).

Importing this package registers ``ptsam-md`` and ``ptsam`` (see vplab.peft.registry).
Prompt-free inference/training goes through ``vplab.segmentation.prompt_free``.
"""

from vplab.peft.ptsam.config import PTSAMConfig, PTSAMDecoderConfig
from vplab.peft.ptsam.layer import DecoderPrompts, EncoderPrompts, PromptedBlock, prompted_attention
from vplab.peft.ptsam.model import (
    PTSAMMaskDecoder,
    inject_encoder_prompts,
    inject_ptsam,
    inject_ptsam_md,
)

__all__ = [
    "DecoderPrompts",
    "EncoderPrompts",
    "PTSAMConfig",
    "PTSAMDecoderConfig",
    "PTSAMMaskDecoder",
    "PromptedBlock",
    "inject_encoder_prompts",
    "inject_ptsam",
    "inject_ptsam_md",
    "prompted_attention",
]
