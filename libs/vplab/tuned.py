"""Tuned models in the object store: ``tenants/{t}/models/{model}/adapter.safetensors`` and
``config.json`` (written last: a model exists once its config does)."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vplab.errors import InvalidInput, NotFound
from vplab.storage import ArtifactStore, keys

if TYPE_CHECKING:  # the gateway lists and exports adapters without importing torch
    from segment_anything.modeling import Sam

    from vplab.settings import Settings

ADAPTER_FILE, CONFIG_FILE = keys.ADAPTER_WEIGHTS_FILE, keys.ADAPTER_CONFIG_FILE


def save_tuned_model(
    store: ArtifactStore,
    tenant: str,
    model_id: str,
    sam: Sam,
    method: str,
    config: Any,
    base: dict[str, str],
    output: str | None = None,
) -> None:
    from vplab.peft.adapter_io import save_adapter

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "adapter"
        save_adapter(sam, out, method, config, base, output)
        store.put_file(keys.model_adapter(tenant, model_id), out / ADAPTER_FILE)
        store.put_file(keys.model_config(tenant, model_id), out / CONFIG_FILE)


def read_tuned_config(store: ArtifactStore, tenant: str, model_id: str) -> dict[str, Any]:
    try:
        return store.get_json(keys.model_config(tenant, keys.check_id(model_id, "model_id")))
    except NotFound:
        raise NotFound(f"model {model_id} not found") from None


def load_tuned_model(
    store: ArtifactStore, tenant: str, model_id: str, base_sam: Sam, base_sha256: str
):
    """(tuned SAM, adapter config dict). ``base_sam`` is modified in place."""
    from vplab.peft.adapter_io import load_adapter

    read_tuned_config(store, tenant, model_id)  # NotFound first, for unknown/foreign ids
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        store.get_file(keys.model_adapter(tenant, model_id), d / ADAPTER_FILE)
        store.get_file(keys.model_config(tenant, model_id), d / CONFIG_FILE)
        return load_adapter(d, base_sam, base_sha256)


def export_archive(store: ArtifactStore, tenant: str, model_id: str) -> bytes:
    """The adapter folder as a zip (adapter.safetensors + config.json)."""
    read_tuned_config(store, tenant, model_id)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(ADAPTER_FILE, store.get_bytes(keys.model_adapter(tenant, model_id)))
        z.writestr(CONFIG_FILE, store.get_bytes(keys.model_config(tenant, model_id)))
    return buf.getvalue()


def export_merged_checkpoint(
    store: ArtifactStore, settings: Settings, tenant: str, model_id: str
) -> bytes:
    """A plain ``segment_anything`` checkpoint (``torch.save`` of the state dict) with the
    tuned update folded in, for weight-delta methods (``MethodSpec.mergeable``); anything
    else is ``InvalidInput`` before a model is built. Builds the deployed base model."""
    import torch

    from vplab.inference.runtime import ModelRuntime
    from vplab.peft.merge import merged_state_dict
    from vplab.peft.registry import get_method

    method = read_tuned_config(store, tenant, model_id).get("method", "")
    if not get_method(method).mergeable:
        raise InvalidInput(
            f"model {model_id} ({method}) is not a pure weight delta: it cannot be merged into "
            "a plain SAM checkpoint; export the adapter instead"
        )
    base = ModelRuntime(settings, store).base
    sam, _ = load_tuned_model(store, tenant, model_id, base.build(store), base.sha256)
    buf = io.BytesIO()
    torch.save(merged_state_dict(sam, method), buf)
    return buf.getvalue()


def list_tuned_models(store: ArtifactStore, tenant: str) -> list[str]:
    prefix = keys.models_prefix(tenant)
    parsed = (keys.parse_model_config(k, tenant) for k in store.list(prefix))
    return sorted(model_id for model_id in parsed if model_id is not None)


def delete_tuned_model(store: ArtifactStore, tenant: str, model_id: str) -> None:
    read_tuned_config(store, tenant, model_id)
    store.delete(keys.model_config(tenant, model_id))  # config first: the model vanishes atomically
    store.delete_prefix(keys.model_prefix(tenant, model_id))
