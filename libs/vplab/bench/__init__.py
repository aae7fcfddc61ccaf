"""Benchmarks behind ``vplab bench NAME``: one module per benchmark, registered here.

Each module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` (its options; every
benchmark has ``--quick``: tiny models and few iterations, for tests) and
``run(args) -> BenchResult``. Targets are reported (met or not), never asserted.
The figures and how they were obtained are in BENCHMARKS.md.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from vplab.bench._common import BenchResult, Target

_MODULES = (
    "interactive",
    "cache",
    "train",
    "pipeline",
    "late_cache",
    "gpu",
    "load",
    "decoder_batch",
    "quality",
    "uncertainty",
    "ui",
    "dataio",
    "calibrate",
    "fidelity",
)


@dataclass(frozen=True)
class Benchmark:
    name: str
    help: str
    module: ModuleType

    def add_arguments(self, parser) -> None:
        self.module.add_arguments(parser)

    def run(self, args) -> BenchResult:
        return self.module.run(args)


def benchmarks() -> dict[str, Benchmark]:
    """name -> Benchmark, in the order of BENCHMARKS.md."""
    out = {}
    for mod_name in _MODULES:
        mod = importlib.import_module(f"vplab.bench.{mod_name}")
        out[mod.NAME] = Benchmark(mod.NAME, mod.HELP, mod)
    return out


def get_benchmark(name: str) -> Benchmark:
    from vplab.errors import InvalidInput

    all_ = benchmarks()
    if name not in all_:
        raise InvalidInput(f"unknown benchmark {name!r}; expected one of {list(all_)}")
    return all_[name]


__all__ = ["BenchResult", "Benchmark", "Target", "benchmarks", "get_benchmark"]
