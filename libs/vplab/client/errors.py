"""``VPLabAPIError``: what every SDK call raises when the service says no."""

from __future__ import annotations

from typing import Any

from vplab.rpc.status import OVERLOADED_CODE, error_code, rpc_error_parts


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
        grpc_code, details, status, overloaded = rpc_error_parts(e)
        code = OVERLOADED_CODE if overloaded else error_code(status)
        return cls(status, code, details or (grpc_code or "error"), grpc_code=grpc_code)
