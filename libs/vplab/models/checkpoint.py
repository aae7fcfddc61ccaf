"""Checkpoint references, sha256 verification and strict state-dict loading.

A checkpoint reference is either a local path or an object-store key such as
``base-models/vit_b/<sha256>.pth``. Keys are fetched through the store into a local cache
directory once; every load is verified against the expected sha256 when one is known.

Every failure becomes a ``CheckpointError`` whose message names the file and what is
wrong, because the person reading it is usually an operator with a bad upload.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from vplab.errors import CheckpointError

if TYPE_CHECKING:  # the storage package is optional at import time
    from vplab.storage import ArtifactStore

StateDict = dict[str, torch.Tensor]

# Keys stored as ``.../<64 hex>.pth`` carry their own digest: verify it even when the
# caller did not pass one.
_KEY_SHA = re.compile(r"(?:^|/)([0-9a-f]{64})\.[A-Za-z0-9]+$")
_CHUNK = 4 * 1024 * 1024
_SHOW = 5  # how many offending keys an error message lists


def default_cache_dir() -> Path:
    """``$VPLAB_MODEL_CACHE``, else ``$XDG_CACHE_HOME/vplab/models`` (``~/.cache/...``)."""
    explicit = os.environ.get("VPLAB_MODEL_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "vplab" / "models"


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, streamed (checkpoints are up to 2.5 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str) -> None:
    expected = expected.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise CheckpointError(
            f"checkpoint {path}: expected sha256 {expected!r} is not 64 hex digits"
        )
    actual = file_sha256(path)
    if actual != expected:
        raise CheckpointError(
            f"checkpoint {path}: sha256 mismatch, expected {expected} but the file has {actual} "
            "(wrong file, or a truncated/corrupted download)"
        )


def resolve_checkpoint(
    ref: str | Path,
    store: ArtifactStore | None = None,
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Path, str | None]:
    """Turn a reference into a local file. Returns ``(path, sha256_to_check)``.

    A ``Path`` or an existing local file is used as is. Anything else, given a store, is an
    object key: it is downloaded once into ``cache_dir`` (atomically, so a crash never
    leaves a half file under the final name). The returned digest is ``sha256`` or the one
    embedded in the key's file name; ``None`` means the file cannot be verified.
    """
    local = Path(ref)
    if isinstance(ref, Path) or local.exists() or store is None:
        if not local.is_file():
            where = "" if store is None else " (and it is not an object-store key)"
            raise CheckpointError(f"checkpoint {ref}: file not found{where}")
        return local, sha256

    key = str(ref)
    if key.startswith("/") or ".." in key.split("/"):
        raise CheckpointError(f"checkpoint key {key!r}: not a valid object-store key")
    match = _KEY_SHA.search(key)
    key_sha = match.group(1) if match else None
    if sha256 and key_sha and sha256.lower() != key_sha:
        raise CheckpointError(
            f"checkpoint {key}: expected sha256 {sha256} but the key names digest {key_sha}"
        )
    expected = sha256 or key_sha

    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = target / key
    if target.is_file():
        # A cached copy is trusted only if it still hashes right; otherwise fetch again.
        if expected is None or file_sha256(target) == expected.lower():
            return target, None
        target.unlink()
    try:
        found = store.exists(key)
    except Exception as e:  # the store's own errors say what failed (network, auth...)
        raise CheckpointError(f"checkpoint {key}: object store lookup failed: {e}") from e
    if not found:
        raise CheckpointError(f"checkpoint {key}: not found in the object store")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".part-", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        store.get_file(key, tmp)
        if expected is not None:
            _check_sha256(tmp, expected)
        os.replace(tmp, target)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {key}: download from the object store failed: {e}"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
    return target, None  # verified (or unverifiable) already


def load_state_dict_file(path: str | Path, expected_sha256: str | None = None) -> StateDict:
    """Read a plain state dict (or ``{"model"|"state_dict": state_dict}``) from ``path``.

    Uses ``weights_only=True``: a checkpoint is data, never code to execute.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path}: file is empty")
    if expected_sha256:
        _check_sha256(path, expected_sha256)
    if path.suffix == ".safetensors":  # our own fp16 exports (the embedded models)
        from safetensors.torch import load_file

        try:
            return _as_state_dict(load_file(path), path)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(
                f"checkpoint {path}: cannot be read as safetensors ({type(e).__name__}: "
                f"{str(e)[:200]})"
            ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path}: cannot be read, the file is truncated, corrupt or not a "
            f"torch checkpoint ({type(e).__name__}: {reason[:200]})"
        ) from e
    return _as_state_dict(obj, path)


def _as_state_dict(obj: object, path: Path) -> StateDict:
    if isinstance(obj, Mapping):
        for wrapper in ("model", "state_dict"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"checkpoint {path}: not a state dict (got {type(obj).__name__}; expected a dict "
            "of parameter name -> tensor, optionally under 'model' or 'state_dict')"
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"checkpoint {path}: not a state dict, {len(bad)} entries are not name -> tensor "
            f"(e.g. {bad[:_SHOW]})"
        )
    state = dict(obj)
    # DistributedDataParallel saves every key under "module.".
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def check_state_dict(
    model: nn.Module, state: Mapping[str, torch.Tensor], model_name: str, source: object
) -> None:
    """Raise ``CheckpointError`` unless ``state`` fits ``model`` exactly (keys and shapes)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[:_SHOW]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:_SHOW]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:_SHOW]})")
    raise CheckpointError(
        f"checkpoint {source} does not fit model {model_name!r}: " + "; ".join(parts)
    )


def load_strict(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    model_name: str,
    source: object,
    assign: bool = False,
) -> nn.Module:
    """Strictly load ``state`` into ``model`` after a readable key/shape check.

    ``assign=True`` is for models built on the meta device: the loaded tensors become the
    parameters (cast to the model's dtypes), so no random init or second copy is needed.
    """
    check_state_dict(model, state, model_name, source)
    if assign:
        own = model.state_dict()
        state = {
            k: (v.to(own[k].dtype) if v.is_floating_point() and own[k].is_floating_point() else v)
            for k, v in state.items()
        }
    try:
        model.load_state_dict(state, strict=True, assign=assign)
    except RuntimeError as e:  # anything check_state_dict did not foresee
        raise CheckpointError(f"checkpoint {source} does not fit model {model_name!r}: {e}") from e
    return model


def read_checkpoint(
    ref: str | Path,
    sha256: str | None = None,
    store: ArtifactStore | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[StateDict, Path]:
    """Resolve a reference (path or store key), verify it and read its state dict."""
    path, to_check = resolve_checkpoint(ref, store=store, sha256=sha256, cache_dir=cache_dir)
    return load_state_dict_file(path, expected_sha256=to_check), path
