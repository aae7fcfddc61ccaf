"""Per-replica wiring shared by the Serve deployments: settings, store, authenticator,
the dataset layer (with quotas and request limits)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vplab.datasets import DatasetStore
from vplab.models import configure_compute
from vplab.settings import Settings, get_settings
from vplab.storage import ArtifactStore, open_store
from vplab.tenancy import Authenticator

T = TypeVar("T")


@dataclass
class Replica:
    settings: Settings
    store: ArtifactStore
    auth: Authenticator
    datasets: DatasetStore  # with the tenant quotas and the request limits
    # Model calls run here, serve_model_threads at a time (each uses every torch thread):
    # concurrent requests wait their turn in FIFO order instead of oversubscribing the cores.
    model_pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))

    async def run_model(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.model_pool, fn, *args)

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
            ThreadPoolExecutor(max(1, settings.serve_model_threads), "vplab-model"),
        )
