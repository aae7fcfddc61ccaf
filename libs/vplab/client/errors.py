"""``VPLabAPIError``: what every SDK call raises when the service says no."""

from __future__ import annotations

from typing import Any


class VPLabAPIError(Exception):
    """An error answer: ``status`` (HTTP status), ``code`` (e.g. "not_found"), ``message``.

    For gRPC calls ``status`` is the HTTP status the gateway would have answered and
    ``grpc_code`` the original gRPC status name.
    """

    def __init__(self, status: int, code: str, message: str, grpc_code: str | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.grpc_code = status, code, message, grpc_code

    @classmethod
    def from_response(cls, response: Any) -> VPLabAPIError:
        """From an httpx response whose status is >= 400 (JSON error body, or anything)."""
        status = response.status_code
        try:
            err = response.json()["error"]
            return cls(status, str(err["code"]), str(err["message"]))
        except Exception:  # noqa: BLE001
            text = response.text[:500] if hasattr(response, "text") else ""
            return cls(status, "http_error", text or f"HTTP {status}")

    @classmethod
    def from_rpc_error(cls, e: Any) -> VPLabAPIError:
        import grpc

        code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
        details = (e.details() if hasattr(e, "details") else None) or ""
        status = _GRPC_TO_HTTP.get(code.name if code else "UNKNOWN", 502)
        if status == 429:
            try:
                for key, value in e.trailing_metadata() or ():
                    if key == "vplab-http-status" and str(value) in ("413", "429"):
                        status = int(value)
            except Exception:  # noqa: BLE001
                pass
        return cls(
            status,
            _CODES.get(status, "error"),
            details or (code.name if code else "error"),
            grpc_code=code.name if code else None,
        )


_GRPC_TO_HTTP = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 404,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
_CODES = {
    400: "invalid_argument",
    401: "unauthenticated",
    404: "not_found",
    409: "conflict",
    413: "payload_too_large",
    429: "quota_exceeded",
    502: "bad_gateway",
    503: "unavailable",
    504: "deadline_exceeded",
}
