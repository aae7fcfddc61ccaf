"""E-PEFT on SAM's mask decoder (METHODS.md section 3).

Importing this package registers ``epeft``, ``epeft-lora``, ``epeft-ia3``,
``epeft-prompt`` and ``epeft-adapter`` (see vplab.peft.registry).
"""

from vplab.peft.epeft.config import (
    EPEFTAdapterConfig,
    EPEFTConfig,
    EPEFTIA3Config,
    EPEFTLoRAConfig,
    EPEFTPromptConfig,
)
from vplab.peft.epeft.layer import IA3Scale, ImageContextAdapter, MemoryTokens
from vplab.peft.epeft.model import EPEFTMaskDecoder, decoder_attentions, inject_epeft

__all__ = [
    "EPEFTAdapterConfig",
    "EPEFTConfig",
    "EPEFTIA3Config",
    "EPEFTLoRAConfig",
    "EPEFTMaskDecoder",
    "EPEFTPromptConfig",
    "IA3Scale",
    "ImageContextAdapter",
    "MemoryTokens",
    "decoder_attentions",
    "inject_epeft",
]
