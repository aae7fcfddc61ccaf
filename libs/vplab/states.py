"""Job states: one enum for the library, the wire and both SDK clients.

The names equal the proto enum ``vplab.v1.JobState``'s values (``vplab.rpc.convert``
maps them) and the strings stored in job records, so a ``JobState`` compares equal to
the plain string everywhere (``StrEnum``).
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
)
ACTIVE_STATES: frozenset[JobState] = frozenset({JobState.QUEUED, JobState.RUNNING})


def is_terminal(state: str) -> bool:
    return state in TERMINAL_STATES
