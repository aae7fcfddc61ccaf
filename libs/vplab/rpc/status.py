"""The one status mapping: gRPC code <-> HTTP status <-> error code name.

Used by the gRPC services (library error -> code + HTTP trailer), the gateway (RPC error
-> HTTP reply) and both SDK clients (reply -> ``VPLabAPIError``). RESOURCE_EXHAUSTED is
either 413 (one request over a size limit) or 429 (a tenant quota, or load shed): the
services say which in the ``vplab-http-status`` trailing metadata.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

HTTP_STATUS_TRAILER = "vplab-http-status"

# HTTP status -> the ``code`` of the JSON error body.
ERROR_CODES: dict[int, str] = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "quota_exceeded",  # or OVERLOADED_CODE when the service shed the request
    500: "internal",
    502: "bad_gateway",
    503: "unavailable",
    504: "deadline_exceeded",
}

# gRPC status name -> HTTP status, for the codes a service returns on purpose. Anything
# else (INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS...) is a failure of the service: 502.
GRPC_TO_HTTP: dict[str, int] = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 404,  # never reveal that another tenant's object exists
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
UPSTREAM_FAILURE_HTTP = 502
# A request shed under load (Serve's back-pressure: RESOURCE_EXHAUSTED with Serve's own
# "dropped due to backpressure" message and none of our trailers), answered 429 with this
# code and Retry-After.
OVERLOADED_CODE = "overloaded"
RETRY_AFTER_S = 1

# The split of RESOURCE_EXHAUSTED when a reply carries no trailer (an older service, or a
# proxy that drops trailers): quota errors say "quota"; limit errors "too many" etc.
_TOO_LARGE_HINTS = ("too many", "too large", "over the limit", "limit is", "exceeds the")


# INTERNAL from Serve's proxy when the replica serving a call died with its node or process
# (Ray's ActorUnavailableError / ActorDiedError text; no trailer of ours): the request may be
# retried once Serve has replaced the replica, so it is a 503 with Retry-After, not a 502.
_REPLICA_LOST_HINTS = ("actorunavailableerror", "actordiederror", "the actor died")


def is_replica_lost(
    code_name: str | None, details: str, trailers: Iterable[tuple[str, Any]] = ()
) -> bool:
    """Did the call fail because its Serve replica died (rather than through our code)?"""
    if code_name != "INTERNAL" or any(key == HTTP_STATUS_TRAILER for key, _ in trailers):
        return False
    text = details.lower()
    return any(h in text for h in _REPLICA_LOST_HINTS) or (
        text.startswith("the actor ") and " is unavailable" in text
    )


def error_code(http_status: int) -> str:
    """The JSON error ``code`` for an HTTP status ("error" for one we never send)."""
    return ERROR_CODES.get(http_status, "error")


def http_status_of_grpc(
    code_name: str | None, details: str = "", trailers: Iterable[tuple[str, Any]] = ()
) -> int:
    """HTTP status for a gRPC status name, the reply's details and trailing metadata."""
    if is_replica_lost(code_name, details, trailers):
        return 503
    status = GRPC_TO_HTTP.get(code_name or "", UPSTREAM_FAILURE_HTTP)
    if code_name != "RESOURCE_EXHAUSTED":
        return status
    for key, value in trailers:
        if key == HTTP_STATUS_TRAILER and str(value) in ("413", "429"):
            return int(value)
    text = details.lower()
    if "quota" in text:
        return 429
    if any(h in text for h in _TOO_LARGE_HINTS):
        return 413
    return 429


def is_overload(code_name: str | None, details: str, trailers: Iterable[tuple[str, Any]]) -> bool:
    """Was the call shed by Ray Serve (its queue was full) rather than refused by our code?"""
    return (
        code_name == "RESOURCE_EXHAUSTED"
        and "backpressure" in details.lower()
        and not any(key == HTTP_STATUS_TRAILER for key, _ in trailers)
    )


def rpc_error_parts(e: Any) -> tuple[str | None, str, int, bool]:
    """(gRPC status name, details, HTTP status, shed under load) of a ``grpc.RpcError``."""
    code = e.code() if hasattr(e, "code") else None
    name = code.name if code is not None else None
    details = (e.details() if hasattr(e, "details") else None) or ""
    try:
        trailers = tuple(e.trailing_metadata() or ())
    except Exception:  # noqa: BLE001 - no trailers on some transport failures
        trailers = ()
    return (
        name,
        details,
        http_status_of_grpc(name, details, trailers),
        is_overload(name, details, trailers),
    )
