"""vplab.allocator: glibc keeps freed blocks instead of faulting them in again every step."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from vplab import allocator

# Six 8 MB blocks live at once, then freed: with glibc's defaults the freed heap top is
# trimmed, so every round faults ~12k pages in again (the decoder step's pattern).
_CHURN = """
import resource, sys
import numpy as np
from vplab.allocator import keep_freed_memory
applied = keep_freed_memory(int(sys.argv[1]))
def churn():
    for _ in range(10):
        held = [np.ones(2_000_000, np.float32) for _ in range(6)]
        del held
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(trim_mb: int) -> tuple[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _CHURN, str(trim_mb)], capture_output=True, text=True, check=True
    )
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_keep_freed_memory_stops_refaulting_freed_blocks():
    default_applied, default_faults = _faults(0)
    kept_applied, kept_faults = _faults(256)
    assert (default_applied, kept_applied) == ("False", "True")
    assert default_faults > 10_000  # the pattern really faults with glibc's defaults
    assert kept_faults < default_faults / 10


def test_off_and_without_glibc_it_does_nothing(monkeypatch):
    assert allocator.keep_freed_memory(0) is False
    assert allocator.keep_freed_memory(-1) is False
    monkeypatch.setattr(allocator, "_libc", lambda: None)
    assert allocator.keep_freed_memory(256) is False


def test_settings_reach_the_allocator(monkeypatch):
    import torch

    from vplab.models import configure_compute
    from vplab.settings import Settings

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda mb: calls.append(mb) or True)
    before = torch.get_num_threads()
    try:
        threads = configure_compute(Settings(malloc_trim_mb=64, torch_threads=1))
    finally:
        torch.set_num_threads(before)
    assert calls == [64] and threads == 1
