"""Adapter files: what a tuned model adds to its base, tied to the base by digest.

An adapter directory holds
- ``adapter.safetensors``: every trainable tensor, plus tensors the method *created* that
  are not in the base checkpoint but are frozen (e.g. quantisation state), and
- ``config.json``: {"format": "vplab-adapter/1", "method", "config", "base": {"name",
  "sha256"}, "trainable_params", "pieces", "output"}. ``output`` is the decoder output the
  model was trained on and must be served through (``Recipe.output``; adapters written
  before it existed were all trained on token 0).

Which tensors were "created": everything inside a module that declares ``peft_piece``
except its ``base`` child (wrappers keep the original layer there), plus everything in
modules flagged ``vplab_created`` (layers the method rebuilt, e.g. 4-bit copies).

Writes are atomic (a temp dir next to the target, then rename): a reader never sees a
half-written adapter and a failed save leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vplab.errors import CheckpointError, InvalidInput
from vplab.peft.core import apply_method, count_trainable, trainable_by_piece
from vplab.peft.registry import DECODER_OUTPUTS, get_method
from vplab.storage import keys

FORMAT = "vplab-adapter/1"
WEIGHTS, CONFIG = keys.ADAPTER_WEIGHTS_FILE, keys.ADAPTER_CONFIG_FILE


def _created(sam: nn.Module) -> tuple[set[str], list[str]]:
    """(exact state-dict keys, key prefixes) whose state the method created."""
    exact: set[str] = set()
    prefixes: list[str] = []
    for name, module in sam.named_modules():
        prefix = f"{name}." if name else ""
        if getattr(module, "vplab_created", False):
            prefixes.append(prefix)
        elif getattr(module, "peft_piece", None) is not None:
            for child_name, _ in module.named_children():
                if child_name != "base":
                    prefixes.append(f"{prefix}{child_name}.")
            # The wrapper's own direct parameters/buffers (e.g. IA3 vectors, prompts).
            for pname, _ in module.named_parameters(recurse=False):
                exact.add(f"{prefix}{pname}")
            for bname, _ in module.named_buffers(recurse=False):
                exact.add(f"{prefix}{bname}")
    return exact, prefixes


def adapter_tensors(sam: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors an adapter file holds for ``sam`` (trainable + method-created)."""
    exact, prefixes = _created(sam)
    out: dict[str, torch.Tensor] = {}
    for key, value in sam.state_dict(keep_vars=True).items():
        trainable = isinstance(value, nn.Parameter) and value.requires_grad
        if trainable or key in exact or any(key.startswith(p) for p in prefixes):
            out[key] = value
    return out


def _to_plain(t: torch.Tensor) -> torch.Tensor:
    # safetensors wants dense, contiguous CPU tensors that share no memory.
    return t.detach().to("cpu").contiguous().clone()


def save_adapter(
    sam: nn.Module,
    out_dir: str | os.PathLike,
    method: str,
    config: Any,
    base: dict[str, str],
    output: str | None = None,
) -> Path:
    """Write the adapter of ``sam`` (tuned with ``method``/``config``, on decoder ``output``:
    default the method's recipe) to ``out_dir``."""
    from safetensors.torch import save_file

    spec = get_method(method)  # unknown method -> InvalidInput, nothing written
    output = output or spec.recipe.output
    if output not in DECODER_OUTPUTS:
        raise InvalidInput(f"output must be one of {list(DECODER_OUTPUTS)}, got {output!r}")
    if not isinstance(base, dict) or not base.get("name") or not base.get("sha256"):
        raise InvalidInput("base must be a dict with 'name' and 'sha256' of the base checkpoint")
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config_dict = dataclasses.asdict(config)
    elif isinstance(config, dict) or config is None:
        config_dict = dict(config or {})
    else:
        raise InvalidInput(
            f"config must be the method's config dataclass or a dict, not {type(config).__name__}"
        )
    tensors = {k: _to_plain(v) for k, v in adapter_tensors(sam).items()}
    meta = {
        "format": FORMAT,
        "method": method,
        "config": config_dict,
        "base": {"name": str(base["name"]), "sha256": str(base["sha256"])},
        "trainable_params": count_trainable(sam),
        "pieces": dict(trainable_by_piece(sam)),
        "output": output,
    }
    text = json.dumps(meta, indent=2, sort_keys=True)  # fails here (not mid-write) if not JSON

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT, "method": method})
        (tmp / CONFIG).write_text(text)
        if out.exists():
            # Swap: move the old one aside first so the target is never half-replaced.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "x")
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_adapter_config(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(adapter_dir) / CONFIG
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"adapter {adapter_dir}: {CONFIG} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"adapter {adapter_dir}: {CONFIG} is unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"adapter {adapter_dir}: not a {FORMAT} adapter")
    for key in ("method", "config", "base"):
        if key not in meta:
            raise CheckpointError(f"adapter {adapter_dir}: {CONFIG} lacks {key!r}")
    if not isinstance(meta["base"], dict) or "sha256" not in meta["base"]:
        raise CheckpointError(f"adapter {adapter_dir}: {CONFIG} lacks base.sha256")
    return meta


def adapter_output(meta: dict[str, Any]) -> str:
    """The decoder output an adapter serves (its config.json's ``output``, else token 0)."""
    output = meta.get("output", "token0")
    if output not in DECODER_OUTPUTS:
        raise CheckpointError(f"adapter config: unknown decoder output {output!r}")
    return str(output)


def load_adapter(
    adapter_dir: str | os.PathLike, base_sam: nn.Module, base_sha256: str
) -> tuple[nn.Module, Any]:
    """Apply the adapter's method to ``base_sam`` (in place) and load its tensors.

    ``base_sha256`` is the digest of the checkpoint ``base_sam`` was loaded from; it must
    be the one the adapter was trained on. Returns (model, config dataclass).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_adapter_config(adapter_dir)
    expected = meta["base"]["sha256"]
    if expected != base_sha256:
        raise InvalidInput(
            f"adapter {adapter_dir} was trained on base sha256 {expected} "
            f"({meta['base'].get('name', '?')}), but the given base has sha256 {base_sha256}"
        )
    weights = Path(adapter_dir) / WEIGHTS
    try:
        tensors = load_file(str(weights), device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"adapter {adapter_dir}: {WEIGHTS} is missing") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"adapter {adapter_dir}: {WEIGHTS} is corrupt ({e})") from None

    config = apply_method(base_sam, meta["method"], meta["config"])
    if "trainable_params" in meta and count_trainable(base_sam) != meta["trainable_params"]:
        raise CheckpointError(
            f"adapter {adapter_dir}: {meta['method']} on this base has "
            f"{count_trainable(base_sam)} trainable parameters, the adapter {meta['trainable_params']}"
            " (different base architecture?)"
        )
    expected_keys = set(adapter_tensors(base_sam))
    state = base_sam.state_dict()
    # Registered parameters/buffers load; other state-dict entries are derived state some
    # layers serialise (e.g. bitsandbytes' quant_state), rebuilt deterministically by
    # apply_method from the (digest-checked) base weights: only require their presence.
    loadable = {n for n, _ in base_sam.named_parameters()} | {
        n for n, _ in base_sam.named_buffers()
    }
    missing = sorted(expected_keys - set(tensors))
    unexpected = sorted(set(tensors) - expected_keys)
    if missing or unexpected:
        raise CheckpointError(
            f"adapter {adapter_dir} does not fit {meta['method']}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    to_load = {}
    for key, value in tensors.items():
        if key not in loadable:
            continue
        if tuple(value.shape) != tuple(state[key].shape):
            raise CheckpointError(
                f"adapter {adapter_dir}: {key} has shape {tuple(value.shape)}, "
                f"model expects {tuple(state[key].shape)}"
            )
        to_load[key] = value
    with torch.no_grad():
        base_sam.load_state_dict(to_load, strict=False)
    return base_sam, config
