"""Pick the torch device the models run on (settings ``device``: auto | cpu | cuda[:N])."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

from vplab.errors import InvalidInput, Unavailable

if TYPE_CHECKING:
    from vplab.settings import Settings


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


def configure_compute(settings: Settings) -> int:
    """Set up this process for model work: torch threads and the allocator (``Settings``).

    Every Serve replica and training task calls this once at start. Returns the threads.
    """
    from vplab.allocator import keep_freed_memory

    keep_freed_memory(settings.malloc_trim_mb)
    return configure_threads(settings.torch_threads)


def configure_threads(n: int = 0) -> int:
    """Set torch's intra-op threads: ``n``, or every core this process may use when 0.

    Ray sets OMP_NUM_THREADS to a worker's CPU reservation (1 for a Serve replica or a
    training task), which left decoding single-threaded: 107 ms instead of 55 ms per click
    on 2 cores (BENCHMARKS.md). Set ``VPLAB_TORCH_THREADS`` to the pod's CPU limit where the
    machine's cores are shared.
    """
    n = n or len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()
