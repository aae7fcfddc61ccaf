"""The training bank cached in the object store, like any embedding (METHODS.md section 6).

Keys are the tenant's embedding cache (``tenants/{t}/cache/{encoder_id}/{sha}``) under an
encoder id that names the base encoder, the view and what is stored, so a resumed or
repeated job reuses every view and nothing mixes across weights, views or tenants.
"""

from __future__ import annotations

import re

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vplab.errors import NotFound
from vplab.storage import ArtifactStore, keys


class StoreFeatureCache:
    def __init__(self, store: ArtifactStore, tenant: str, encoder_id: str):
        self.store = store
        self.tenant = tenant
        self.encoder_id = encoder_id

    def _key(self, name: str, view: str, what: str) -> str:
        # View names like "gamma0.7" become id-safe segments ("gamma0p7").
        view_id = re.sub(r"[^a-z0-9_-]", "p", view.lower())
        return keys.embedding(self.tenant, f"{self.encoder_id}.bank.{what}.{view_id}", name)

    def get(self, name: str, view: str, what: str) -> torch.Tensor | None:
        try:
            data = self.store.get_bytes(self._key(name, view, what))
        except NotFound:
            return None
        return st_load(data)["feature"].float()

    def put(self, name: str, view: str, what: str, value: torch.Tensor) -> torch.Tensor:
        # bf16 like every cached embedding: half the bytes, far below what changes a mask.
        stored = value.detach().to("cpu", torch.bfloat16).contiguous()
        self.store.put_bytes(self._key(name, view, what), st_save({"feature": stored}))
        return stored.float()
