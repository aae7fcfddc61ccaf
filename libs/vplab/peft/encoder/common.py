"""Shared helpers for the encoder PEFT family (paper: peft-sam-biomedical-study).

Every method here works on SAM's ViT blocks (``image_encoder.blocks[i]``) and, unless the
method says otherwise, leaves the mask decoder and prompt encoder trainable: the study
always updates them ("prompt encoder and mask decoder are always updated").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import Block
from torch import nn

from vplab.errors import InvalidInput
from vplab.peft.registry import Recipe

# The peft-sam study's training (micro-sam's ``train_sam``), selectable as recipe
# "micro-sam" for every prompted method of this family: Dice on the best of the three
# multimask outputs plus MSE of the IoU head, iterative prompting (8 sub-iterations: the
# first prompt, then 7 updates of a positive and a negative point, the previous logits as
# mask_input half the time), lr 1e-5, the lr cut by 0.9 after 3 validations without
# improvement. Steps stay ours: the study trains
# epochs on a GPU. docs/FIDELITY.md says how it differs from micro-sam's code.
MICRO_SAM_RECIPE = Recipe(
    name="micro-sam",
    lr=1e-5,
    steps=200,
    output="best_of_3",
    loss="dice",
    corrective_rounds=7,
    mask_input_prob=0.5,
    schedule="plateau",
    plateau_factor=0.9,
    plateau_patience=3,
    source="micro-sam train_sam / SamTrainer (peft-sam study): lr, loss, iterative "
    "prompting, ReduceLROnPlateau; steps ours",
)

# Row ranges of SAM's fused ``attn.qkv`` output (3 * dim): q, then k, then v.
_QKV_INDEX = {"q": 0, "k": 1, "v": 2}


@dataclass
class EncoderPeftConfig:
    """Fields every encoder method has: whether decoder / prompt encoder also train."""

    train_decoder: bool = True
    train_prompt_encoder: bool = True


def set_trainable(params: Iterable[nn.Parameter], flag: bool = True) -> None:
    for p in params:
        p.requires_grad_(flag)


def train_heads(sam: Sam, config: EncoderPeftConfig) -> None:
    """Unfreeze decoder / prompt encoder as the config says (the model arrives frozen)."""
    if config.train_decoder:
        set_trainable(sam.mask_decoder.parameters())
    if config.train_prompt_encoder:
        set_trainable(sam.prompt_encoder.parameters())


def encoder_blocks(sam: Sam, start_block: int = 0) -> list[Block]:
    """``image_encoder.blocks[start_block:]``, with a clear error for a bad start."""
    blocks = list(sam.image_encoder.blocks)
    if not 0 <= start_block < len(blocks):
        raise InvalidInput(
            f"start_block={start_block} is out of range for an encoder with {len(blocks)} blocks"
        )
    return blocks[start_block:]


def qkv_slices(dim: int, targets: Sequence[str]) -> list[tuple[int, int]]:
    """Output row ranges of the fused qkv for the requested projections, in q, k, v order."""
    unknown = sorted(set(targets) - set(_QKV_INDEX))
    if unknown or not targets:
        raise InvalidInput(
            f"qkv targets must be a non-empty subset of q, k, v; got {list(targets)}"
        )
    idx = sorted({_QKV_INDEX[t] for t in targets})
    return [(i * dim, (i + 1) * dim) for i in idx]


def is_meta(sam: nn.Module) -> bool:
    """Built on the meta device (architecture only, used by ``describe``)."""
    p = next(sam.parameters(), None)
    return p is not None and p.device.type == "meta"
