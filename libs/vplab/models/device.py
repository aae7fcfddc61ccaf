"""Pick the torch device the models run on (settings ``device``: auto | cpu | cuda[:N])."""

from __future__ import annotations

import torch

from vplab.errors import InvalidInput, Unavailable


def resolve_device(setting: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU. ``cuda`` without CUDA is an error, not a
    silent CPU fallback: a GPU deployment running on CPU would be 100x slower unnoticed."""
    value = (setting or "auto").strip().lower()
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value == "cpu":
        return torch.device("cpu")
    if value == "cuda" or value.startswith("cuda:"):
        try:
            device = torch.device(value)
        except RuntimeError as e:
            raise InvalidInput(f"device setting {setting!r} is not a valid device: {e}") from e
        if not torch.cuda.is_available():
            raise Unavailable(
                f"device setting {setting!r} asks for CUDA but CUDA is not available on this "
                "machine (no GPU or a CPU-only torch build); use 'auto' or 'cpu'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise Unavailable(
                f"device setting {setting!r} names GPU {device.index} but only "
                f"{torch.cuda.device_count()} GPU(s) are visible"
            )
        return device
    raise InvalidInput(f"device setting must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {setting!r}")
