"""Error types shared by the library, the CLI and every service.

Each error maps to one HTTP status and one gRPC status code, so the gateway and the
gRPC services translate library errors the same way (see ``http_status`` / ``grpc_code``).
"""

from __future__ import annotations


class VPLabError(Exception):
    """Base class. ``message`` is safe to show to the caller."""

    http_status = 500
    grpc_code = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidInput(VPLabError):
    """The request is malformed: bad image, out-of-range point, wrong shape..."""

    http_status = 400
    grpc_code = "INVALID_ARGUMENT"


class CheckpointError(InvalidInput):
    """A checkpoint file is missing, truncated, corrupt or does not fit the model."""


class NotFound(VPLabError):
    """Unknown id, or an id that belongs to another tenant (never reveal which)."""

    http_status = 404
    grpc_code = "NOT_FOUND"


class Unauthenticated(VPLabError):
    http_status = 401
    grpc_code = "UNAUTHENTICATED"


class PayloadTooLarge(VPLabError):
    """A single request exceeds a size limit (image bytes, pixels, points, targets)."""

    http_status = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class QuotaExceeded(VPLabError):
    """A tenant quota (images, bytes, concurrent jobs) would be exceeded."""

    http_status = 429
    grpc_code = "RESOURCE_EXHAUSTED"


class Conflict(VPLabError):
    """The object is in a state that does not allow the operation (e.g. job finished)."""

    http_status = 409
    grpc_code = "FAILED_PRECONDITION"


class PreconditionFailed(VPLabError):
    """A conditional write's precondition no longer holds (``If-Match``: someone saved
    meanwhile). Nothing was written."""

    http_status = 412
    grpc_code = "FAILED_PRECONDITION"


class Unavailable(VPLabError):
    """A dependency is not available on this machine (e.g. CUDA for QLoRA)."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
