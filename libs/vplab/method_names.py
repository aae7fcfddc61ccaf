"""The names of the PEFT methods, importable without torch (the gateway declares them in
its OpenAPI document). ``vplab.peft.registry`` refuses to register a name missing here,
and a test checks that both lists are equal: add a new method's name here too."""

from __future__ import annotations

METHOD_NAMES: tuple[str, ...] = (
    "adaptformer",
    "attn-tune",
    "bias-tune",
    "cellseg1",
    "cellseg1-md",
    "cellseg1-md-pf",
    "cellseg1-pf",
    "epeft",
    "epeft-adapter",
    "epeft-ia3",
    "epeft-lora",
    "epeft-prompt",
    "fact",
    "freeze-encoder",
    "full-ft",
    "late-ft",
    "late-lora",
    "ln-tune",
    "lora",
    "ptsam",
    "ptsam-md",
    "qlora",
    "samed",
    "ssf",
)
DEFAULT_METHOD = "epeft"
DEFAULT_RECIPE = "vplab"  # every method's default training recipe (vplab.peft.registry)
