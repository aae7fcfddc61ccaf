"""Shared pieces of the benchmarks: timing, percentiles, the result record, machine facts.

Benchmarks print progress to stderr; the CLI prints the human summary and, as the last
line of stdout, one JSON object with the figures (``BenchResult.to_json``).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Target:
    """One target: ``figure`` compared with ``limit`` by ``op`` ("<=" or ">=")."""

    figure: str
    op: str
    limit: float

    def met(self, figures: dict[str, Any]) -> bool | None:
        value = figures.get(self.figure)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None  # not measured
        return value <= self.limit if self.op == "<=" else value >= self.limit

    @property
    def label(self) -> str:
        return f"{self.figure} {self.op} {self.limit:g}"


@dataclass
class BenchResult:
    name: str
    figures: dict[str, Any]
    summary: list[str] = field(default_factory=list)  # human lines (without the targets)
    targets: list[Target] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # what was run (model, sizes, iterations)
    skipped: str | None = None  # why nothing was measured (e.g. "no cuda")

    def met(self) -> dict[str, bool | None]:
        return {t.label: t.met(self.figures) for t in self.targets}

    def to_json(self) -> str:
        if self.skipped:
            return json.dumps({"skipped": self.skipped})
        doc = {
            "benchmark": self.name,
            **{k: _jsonable(v) for k, v in self.figures.items()},
            "targets_met": self.met(),
            "config": _jsonable(self.config),
            "machine": machine(),
        }
        return json.dumps(doc, sort_keys=False)

    def human(self) -> str:
        lines = [f"== vplab bench {self.name} =="]
        if self.skipped:
            return "\n".join(lines + [f"skipped: {self.skipped}", *self.summary])
        if self.config:
            lines.append("config: " + ", ".join(f"{k}={v}" for k, v in self.config.items()))
        lines += self.summary
        for t in self.targets:
            ok = t.met(self.figures)
            verdict = "not measured" if ok is None else ("met" if ok else "MISSED")
            value = self.figures.get(t.figure)
            shown = f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
            lines.append(f"target {t.label}: {verdict} (measured {shown})")
        return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def log(message: str) -> None:
    """Progress on stderr (stdout is the summary and the JSON line)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), ``q`` in [0, 100]."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def time_ms(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def repeat_ms(fn: Callable[[], Any], n: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    return [time_ms(fn) for _ in range(n)]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    import torch

    try:
        ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        ram_gib = float("nan")
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(ram_gib, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "loadavg_1m": round(load[0], 2),
    }


def demo_images(n: int, size: int, seed: int = 0):
    """``n`` synthetic (image, mask) pairs (cells + distractors) of ``size`` x ``size``."""
    from vplab.demo import load_demo_samples

    return load_demo_samples(n, size, seed=seed)
