"""Where a run's checkpoints live: the job's ``ckpt/`` prefix, newest wins, a few kept."""

from __future__ import annotations

from vplab.storage import ArtifactStore, keys


class CheckpointStore:
    def __init__(self, store: ArtifactStore, tenant: str, job: str, keep: int = 2):
        self.store = store
        self.tenant = tenant
        self.job = job
        self.keep = keep

    def steps(self) -> list[int]:
        found = self.store.list(keys.job_ckpt_prefix(self.tenant, self.job))
        return sorted(keys.parse_ckpt_step(k) for k in found)

    def save(self, step: int, data: bytes) -> None:
        # Atomic put: a crash mid-write leaves the previous checkpoint as the latest.
        self.store.put_bytes(keys.job_ckpt(self.tenant, self.job, step), data)
        for old in self.steps()[: -self.keep]:
            self.store.delete(keys.job_ckpt(self.tenant, self.job, old))

    def latest(self) -> tuple[int, bytes] | None:
        steps = self.steps()
        if not steps:
            return None
        return steps[-1], self.store.get_bytes(keys.job_ckpt(self.tenant, self.job, steps[-1]))
