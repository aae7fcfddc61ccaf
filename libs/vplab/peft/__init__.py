"""Parameter-efficient fine-tuning methods for SAM: one registry, one way to apply them.

Importing this package registers every method (see ``registry.py``).
"""

# Method families register themselves on import.
from vplab.peft import encoder as _encoder  # noqa: F401
from vplab.peft import epeft as _epeft  # noqa: F401
from vplab.peft import ptsam as _ptsam  # noqa: F401
from vplab.peft.core import apply_method, count_trainable, trainable_by_piece
from vplab.peft.registry import MethodSpec, get_method, make_config, method_names, register

__all__ = [
    "MethodSpec",
    "apply_method",
    "count_trainable",
    "get_method",
    "make_config",
    "method_names",
    "register",
    "trainable_by_piece",
]
