"""Per-replica wiring shared by the Serve deployments: settings, store, authenticator."""

from __future__ import annotations

from dataclasses import dataclass

from vplab.models import configure_compute
from vplab.settings import Settings, get_settings
from vplab.storage import ArtifactStore, open_store
from vplab.tenancy import Authenticator, Quotas


@dataclass
class Replica:
    settings: Settings
    store: ArtifactStore
    auth: Authenticator
    quotas: Quotas

    @classmethod
    def from_env(cls) -> Replica:
        settings = get_settings()
        configure_compute(settings)  # Ray would leave torch on one thread
        store = open_store(settings)
        return cls(
            settings, store, Authenticator(store, settings.api_key_pepper), Quotas(store, settings)
        )
