"""E-PEFT configuration: which of the four decoder pieces are on, and their sizes.

One dataclass for the ensemble (``epeft``) and one subclass per single-piece variant
(``epeft-lora``, ``epeft-ia3``, ``epeft-prompt``, ``epeft-adapter``) that only changes the
defaults, so every variant accepts the same fields (e.g. ``epeft-lora`` with
``{"lora_r_attn": 16}``, or even ``{"ia3": True}``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EPEFTConfig:
    # --- LoRA on the decoder transformer's linear layers (W x + (alpha/r) B A x) ---
    lora: bool = True
    lora_r_attn: int = 8  # q/k/v/out of every decoder attention
    lora_r_mlp: int = 4  # mlp.lin1 / mlp.lin2 of both TwoWayAttentionBlocks
    lora_alpha_attn: float | None = None  # None: alpha = r (scaling 1)
    lora_alpha_mlp: float | None = None
    lora_dropout: float = 0.0
    # --- IA3: vectors (init 1) scaling keys, values and the MLP hidden activation ---
    ia3: bool = True
    # --- prompt (memory) tokens, prepended to both decoder input sequences ---
    prompt_tokens: bool = True
    n_prompt_tokens: int = 8  # prepended to the token stream (queries)
    n_image_prompt_tokens: int = 8  # prepended to the image-token stream (keys)
    # Small init: memory tokens are extra inputs, so they perturb the frozen decoder at
    # step 0; near-zero tokens keep that perturbation small (their keys/values are then
    # ~ the projection biases). Configurable because the paper does not say.
    prompt_init_std: float = 0.02
    # --- image-context adapter: mean image embedding -> MLP -> additive token offset ---
    adapter: bool = True
    adapter_hidden: int = 64

    def __post_init__(self) -> None:
        from vplab.errors import InvalidInput

        if not (self.lora or self.ia3 or self.prompt_tokens or self.adapter):
            raise InvalidInput(
                "E-PEFT: at least one piece (lora, ia3, prompt_tokens, adapter) must be on"
            )
        if self.lora and (self.lora_r_attn <= 0 or self.lora_r_mlp <= 0):
            raise InvalidInput("E-PEFT: LoRA ranks must be positive")
        if self.n_prompt_tokens < 0 or self.n_image_prompt_tokens < 0:
            raise InvalidInput("E-PEFT: prompt token counts must be >= 0")
        if self.adapter and self.adapter_hidden <= 0:
            raise InvalidInput("E-PEFT: adapter_hidden must be positive")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise InvalidInput("E-PEFT: lora_dropout must be in [0, 1)")


@dataclass
class EPEFTLoRAConfig(EPEFTConfig):
    ia3: bool = False
    prompt_tokens: bool = False
    adapter: bool = False


@dataclass
class EPEFTIA3Config(EPEFTConfig):
    lora: bool = False
    prompt_tokens: bool = False
    adapter: bool = False


@dataclass
class EPEFTPromptConfig(EPEFTConfig):
    lora: bool = False
    ia3: bool = False
    adapter: bool = False


@dataclass
class EPEFTAdapterConfig(EPEFTConfig):
    lora: bool = False
    ia3: bool = False
    prompt_tokens: bool = False
