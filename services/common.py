"""Per-replica wiring shared by the Serve deployments: settings, store, authenticator,
the dataset layer (with quotas and request limits)."""

from __future__ import annotations

from dataclasses import dataclass

from vplab.datasets import DatasetStore
from vplab.models import configure_compute
from vplab.settings import Settings, get_settings
from vplab.storage import ArtifactStore, open_store
from vplab.tenancy import Authenticator


@dataclass
class Replica:
    settings: Settings
    store: ArtifactStore
    auth: Authenticator
    datasets: DatasetStore  # with the tenant quotas and the request limits

    @classmethod
    def from_env(cls) -> Replica:
        settings = get_settings()
        configure_compute(settings)  # Ray would leave torch on one thread
        store = open_store(settings)
        return cls(
            settings,
            store,
            Authenticator(store, settings.api_key_pepper),
            DatasetStore(store, settings),
        )
