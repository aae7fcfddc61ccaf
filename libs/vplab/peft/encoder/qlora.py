"""QLoRA: LoRA (as ``lora``) over 4-bit NF4 frozen encoder Linears (bitsandbytes).

CUDA only: bitsandbytes' 4-bit kernels need a GPU. bitsandbytes is imported lazily so
that the package imports (and every other method works) on machines without it. The
quantised layers are *created* by the method (not in the base checkpoint), so they are
flagged ``vplab_created`` and the adapter file carries them (see ``adapter_io``).

Not mergeable: the study found inference on the 4-bit weights unreliable and instead
applies the learned LoRA to full-precision weights - load the LoRA tensors as ``lora``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from segment_anything.modeling import Sam
from torch import nn

from vplab.errors import Unavailable
from vplab.peft.encoder.common import (
    MICRO_SAM_RECIPE,
    EncoderPeftConfig,
    encoder_blocks,
    is_meta,
    train_heads,
)
from vplab.peft.encoder.lora import lora_qkv
from vplab.peft.registry import MethodSpec, register


@dataclass
class QLoraConfig(EncoderPeftConfig):
    r: int = 32
    alpha: float | None = None
    dropout: float = 0.0
    targets: Sequence[str] = ("q", "v")
    quant_type: str = "nf4"  # bitsandbytes 4-bit type: "nf4" or "fp4"


def _quantise(linear: nn.Linear, bnb, quant_type: str, device: torch.device) -> nn.Module:
    q = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=linear.weight.dtype,
        quant_type=quant_type,
    )
    # Params4bit quantises when moved to the GPU.
    q.weight = bnb.nn.Params4bit(
        linear.weight.data.detach().cpu(), requires_grad=False, quant_type=quant_type
    )
    if linear.bias is not None:
        q.bias = nn.Parameter(linear.bias.data.detach().cpu().clone(), requires_grad=False)
    q = q.to(device)
    q.vplab_created = True  # adapter_io: its (quantised) tensors are not in the base model
    return q


def inject_qlora(sam: Sam, config: QLoraConfig) -> None:
    if is_meta(sam):
        # Architecture-only build (``describe``): same trainable structure, no quantisation.
        for block in encoder_blocks(sam):
            lora_qkv(block, config.targets, config.r, config.alpha, config.dropout)
        train_heads(sam, config)
        return
    if not torch.cuda.is_available():
        raise Unavailable(
            "qlora needs a CUDA GPU (bitsandbytes 4-bit kernels) and none is available here; "
            "use 'lora' (same adapter, full-precision base) instead"
        )
    try:
        import bitsandbytes as bnb  # lazy: optional, CUDA-only dependency
    except ImportError:
        raise Unavailable(
            "qlora needs the 'bitsandbytes' package, which is not installed; "
            "install it on a CUDA machine or use 'lora' instead"
        ) from None
    device = torch.device("cuda", torch.cuda.current_device())
    sam.to(device)  # the quantised layers live on the GPU; keep the whole model with them
    for block in encoder_blocks(sam):
        for parent, name in (
            (block.attn, "qkv"),
            (block.attn, "proj"),
            (block.mlp, "lin1"),
            (block.mlp, "lin2"),
        ):
            setattr(parent, name, _quantise(getattr(parent, name), bnb, config.quant_type, device))
        wrapped = lora_qkv(block, config.targets, config.r, config.alpha, config.dropout)
        wrapped.lora_A.to(device)
        wrapped.lora_B.to(device)
    train_heads(sam, config)


register(
    MethodSpec(
        name="qlora",
        config_cls=QLoraConfig,
        inject=inject_qlora,
        encoder_mode="full",
        alternatives=(MICRO_SAM_RECIPE,),
        mergeable=False,
        description="LoRA r32 on q, v over 4-bit frozen encoder weights (bitsandbytes, CUDA only).",
    )
)
