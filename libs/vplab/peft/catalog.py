"""The registry as users choose from it: each method with its one-line description and its
trainable parameters on the base model actually deployed (the web app's method picker,
``GET /v1/methods``)."""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

from vplab.errors import VPLabError
from vplab.peft.registry import get_method, method_names


@dataclass(frozen=True)
class MethodInfo:
    name: str
    description: str
    encoder_mode: str
    prompt_free: bool
    mergeable: bool
    default_steps: int
    recipes: list[str]  # named training recipes, the default first
    base: str
    trainable_parameters: int | None  # None: the method's defaults do not fit this base
    unavailable: str  # why, when trainable_parameters is None

    def plain(self) -> dict[str, Any]:
        return asdict(self)


@functools.lru_cache(maxsize=8)
def method_catalog(base: str) -> tuple[MethodInfo, ...]:
    """Every registered method on ``base`` (counted on the meta device, ~0.05 s each; cached)."""
    from vplab.peft.describe import describe

    out = []
    for name in method_names():
        spec = get_method(name)
        try:
            count: int | None = describe(name, base)[1]
            why = ""
        except VPLabError as e:
            count, why = None, str(e)
        out.append(
            MethodInfo(
                name=name,
                description=spec.description,
                encoder_mode=spec.encoder_mode,
                prompt_free=spec.prompt_free,
                mergeable=spec.mergeable,
                default_steps=spec.recipe.steps,
                recipes=list(spec.recipes),
                base=base,
                trainable_parameters=count,
                unavailable=why,
            )
        )
    return tuple(out)
