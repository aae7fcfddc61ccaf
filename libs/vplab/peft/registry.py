"""The one registry of PEFT methods.

A method is a ``MethodSpec``: a config dataclass, an ``inject`` function that modifies a
``segment_anything`` ``Sam`` in place (adding modules and marking what trains), and the
facts the trainer needs (which part of the encoder runs in the training loop, whether the
method is prompt-free, whether it is a pure weight delta that can be merged on export).

Methods live in their own modules (one folder or file per method family, as in HF peft's
``tuners/``) and call ``register(...)`` at import; ``vplab.peft`` imports them all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from vplab.errors import InvalidInput
from vplab.method_names import DEFAULT_RECIPE, METHOD_NAMES

# What the trainer has to run per step:
#   "frozen": nothing of the image encoder (train from cached embeddings)
#   "late":   only image_encoder.blocks[start_block:] + neck (cached activations)
#   "full":   the whole image encoder
EncoderMode = Literal["frozen", "late", "full"]

# The decoder output a tuned model is trained on - and therefore served through:
#   "token0":    SAM's single-mask output (``multimask_output=False``)
#   "best_of_3": the three multimask outputs, trained with the min-over-masks loss and the
#                IoU head regressed to the true IoU; served by the IoU head's argmax
#   "token1":    the first of the three multimask outputs (the PTSAM paper's choice for
#                prompt-free decoding)
DecoderOutput = Literal["token0", "best_of_3", "token1"]
DECODER_OUTPUTS: tuple[str, ...] = ("token0", "best_of_3", "token1")


@dataclass(frozen=True)
class Recipe:
    """How a method is trained unless a job says otherwise (``vplab peft describe`` shows it).

    ``augmentation``: "bank" - a precomputed bank of embeddings of augmented views (8
    flips/rotations + 2 photometric), for methods that never run the encoder in the loop;
    "online" - a fresh random augmentation per step (rotation, crop, elastic, flips, noise,
    gamma, brightness, contrast), free when the encoder runs anyway.
    ``loss``: "ce_dice" - 0.2 x cross-entropy + 0.8 x Dice (METHODS.md section 6); "dice" -
    Dice alone (micro-sam). ``corrective_rounds``: iterative prompting - after the first
    prompt, this many rounds each add a positive in the misses and a negative in the leaks
    of the previous round's best mask, whose logits go back in as ``mask_input`` with
    probability ``mask_input_prob``; rounds after the first decode a single mask (token 0),
    as SAM and micro-sam do for several points; the loss is the mean over rounds. ``schedule``: "cosine" to 0 over the steps, or "plateau" - the lr times
    ``plateau_factor`` after ``plateau_patience`` validations without a better IoU.
    """

    name: str = DEFAULT_RECIPE
    lr: float = 1e-4  # AdamW
    steps: int = 200
    output: DecoderOutput = "token0"
    augmentation: Literal["bank", "online"] = "bank"
    weight_decay: float = 0.01  # on matrices only: vectors (biases, scales) are not decayed
    loss: Literal["ce_dice", "dice"] = "ce_dice"
    corrective_rounds: int = 0
    mask_input_prob: float = 1.0
    schedule: Literal["cosine", "plateau"] = "cosine"
    plateau_factor: float = 0.9
    plateau_patience: int = 3
    source: str = ""  # where the numbers come from

    def __post_init__(self) -> None:
        if self.output not in DECODER_OUTPUTS:
            raise ValueError(f"output must be one of {DECODER_OUTPUTS}, got {self.output!r}")
        if self.loss not in ("ce_dice", "dice") or self.schedule not in ("cosine", "plateau"):
            raise ValueError(f"unknown loss {self.loss!r} or schedule {self.schedule!r}")
        if self.corrective_rounds < 0 or not 0 <= self.mask_input_prob <= 1:
            raise ValueError("corrective_rounds must be >= 0, mask_input_prob in [0, 1]")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config_cls: type
    inject: Callable[[nn.Module, Any], None]  # (sam, config) -> None, in place
    encoder_mode: EncoderMode
    prompt_free: bool = False  # PTSAM: no prompt encoder input; decode without prompts
    mergeable: bool = False  # pure weight delta: `vplab export --merge` supported
    recipe: Recipe = Recipe()  # the default
    alternatives: tuple[Recipe, ...] = ()  # other recipes a job may select by name
    description: str = ""

    @property
    def recipes(self) -> dict[str, Recipe]:
        """name -> recipe, the default first."""
        return {r.name: r for r in (self.recipe, *self.alternatives)}

    def recipe_named(self, name: str | None) -> Recipe:
        """The recipe called ``name`` (None or "": the default); InvalidInput if unknown."""
        if not name:
            return self.recipe
        try:
            return self.recipes[name]
        except KeyError:
            raise InvalidInput(
                f"method {self.name!r} has no recipe {name!r}; its recipes: "
                f"{', '.join(self.recipes)}"
            ) from None


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"PEFT method {spec.name!r} registered twice")
    if spec.name not in METHOD_NAMES:
        raise ValueError(f"PEFT method {spec.name!r} is not listed in vplab.method_names")
    if not dataclasses.is_dataclass(spec.config_cls):
        raise TypeError(f"{spec.name}: config_cls must be a dataclass")
    if len(spec.recipes) != 1 + len(spec.alternatives):
        raise ValueError(f"{spec.name}: two recipes share a name")
    for recipe in spec.recipes.values():
        if recipe.augmentation == "online" and spec.encoder_mode != "full":
            raise ValueError(f"{spec.name}: online augmentation needs the encoder in the loop")
        if spec.prompt_free and (recipe.output == "best_of_3" or recipe.corrective_rounds):
            raise ValueError(f"{spec.name}: a prompt-free method has no prompts to choose or add")
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidInput(
            f"unknown PEFT method {name!r}; known methods: {', '.join(method_names())}"
        ) from None


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def make_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """Build the method's config dataclass, rejecting unknown fields clearly."""
    spec = get_method(name)
    overrides = dict(overrides or {})
    known = {f.name for f in dataclasses.fields(spec.config_cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidInput(
            f"unknown config field(s) {unknown} for method {name!r}; known: {sorted(known)}"
        )
    return spec.config_cls(**overrides)
