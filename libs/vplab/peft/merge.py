"""Fold a tuned model back into a plain ``segment_anything`` state dict (``export --merge``).

Mergeable pieces are wrappers that keep the original layer as ``.base`` and implement
``merged() -> nn.Module`` (a plain layer with the update folded in: LoRA into the Linear
weight, SSF into the Linear / LayerNorm it follows). Selective methods need nothing: the
tuned model already is a plain SAM. Anything else injected (adapters, prompts, IA3,
quantised layers) makes the model non-mergeable.
"""

from __future__ import annotations

import torch
from torch import nn

from vplab.errors import InvalidInput
from vplab.peft.registry import get_method


def merged_state_dict(sam: nn.Module, method: str | None = None) -> dict[str, torch.Tensor]:
    """A plain SAM state dict equal in function to the tuned ``sam``.

    Loadable with ``sam_model_registry[name](checkpoint=...)`` after ``torch.save``.
    ``method`` (optional) is checked against the registry's ``mergeable`` flag; the model
    itself is checked either way. Raises ``InvalidInput`` for non-mergeable models.
    """
    if method is not None and not get_method(method).mergeable:
        raise InvalidInput(
            f"method {method!r} is not a pure weight delta and cannot be merged into a plain "
            "SAM checkpoint; export the adapter instead"
        )
    state = sam.state_dict()
    done: list[str] = []  # prefixes of wrappers already folded (skip their subtrees)
    for name, module in sam.named_modules():
        if any(name.startswith(p + ".") for p in done):
            continue
        if getattr(module, "vplab_created", False):
            raise InvalidInput(
                f"{name} ({type(module).__name__}) is a layer created by the method (e.g. a "
                "quantised copy); the model cannot be merged into a plain SAM checkpoint"
            )
        if getattr(module, "peft_piece", None) is None:
            continue
        merge = getattr(module, "merged", None)
        if merge is None:
            raise InvalidInput(
                f"{name} ({type(module).__name__}, piece {module.peft_piece!r}) is not a pure "
                "weight delta; the model cannot be merged into a plain SAM checkpoint"
            )
        prefix = name + "."
        for key in [k for k in state if k.startswith(prefix)]:
            del state[key]
        for key, value in merge().state_dict().items():
            state[prefix + key] = value.detach()
        done.append(name)
    # Tensors are detached views of the live model's: clone so later training or a
    # caller's in-place edit does not change the exported weights.
    # Contiguous: a checkpoint is a plain state dict, whatever layout the live model used.
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in state.items()}
