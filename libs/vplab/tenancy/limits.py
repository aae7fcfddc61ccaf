"""Per-request limits (413 ``PayloadTooLarge``): stateless, the same for every tenant.

One object for every transport: the gateway checks early (before a byte is forwarded),
and the services check again, so a direct gRPC caller meets the same limits. Quotas
(per-tenant, stateful) are ``vplab.tenancy.quotas``.
"""

from __future__ import annotations

from vplab.errors import InvalidInput, PayloadTooLarge
from vplab.settings import Settings


class RequestLimits:
    def __init__(self, settings: Settings):
        self.settings = settings

    @property
    def max_image_bytes(self) -> int:
        return self.settings.max_image_bytes

    @property
    def max_image_pixels(self) -> int:
        return self.settings.max_image_pixels

    def check_points(self, n: int) -> None:
        _limit(
            n,
            self.settings.max_points_per_request,
            "points in one request",
            "max_points_per_request",
        )

    def check_targets(self, n: int) -> None:
        _limit(
            n,
            self.settings.max_targets_per_call,
            "target images in one call",
            "max_targets_per_call",
        )

    def check_references(self, n: int) -> None:
        # References cost a DINOv2 + SAM pass each, like targets: the same cap.
        _limit(
            n, self.settings.max_targets_per_call, "references in one call", "max_targets_per_call"
        )

    def check_image_bytes(self, n: int, what: str = "image") -> None:
        """A declared or read upload size (e.g. Content-Length), before decoding it."""
        _limit(n, self.settings.max_image_bytes, f"bytes in one {what}", "max_image_bytes")


def _limit(n: object, limit: int, what: str, setting: str) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise InvalidInput(f"number of {what} must be a non-negative integer, got {n!r}")
    if n > limit:
        raise PayloadTooLarge(f"too many {what}: {n}, the limit is {limit} ({setting})")
