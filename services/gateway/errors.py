"""Every error the gateway returns is JSON ``{"error": {"code", "message"}}``.

Library errors (``VPLabError``) carry their HTTP status; gRPC errors from the services are
mapped by status code (RESOURCE_EXHAUSTED is 413 or 429: the services say which in the
``vplab-http-status`` trailer); anything else is a 5xx with a generic message.
"""

from __future__ import annotations

import logging

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vplab.errors import VPLabError
from vplab.serving.grpc_glue import HTTP_STATUS_TRAILER

log = logging.getLogger("vplab.gateway")

CODES = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "quota_exceeded",
    500: "internal",
    502: "bad_gateway",
    503: "unavailable",
    504: "deadline_exceeded",
}

# gRPC status -> HTTP status, for codes a service returns on purpose.
GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 404,  # never reveal that another tenant's object exists
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class ApiError(Exception):
    """An error with an explicit status (for the few cases no VPLabError class fits)."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code or CODES.get(status, "error")


def error_json(
    status: int, message: str, code: str | None = None, headers: dict | None = None
) -> JSONResponse:
    body = {"error": {"code": code or CODES.get(status, "error"), "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


_TOO_LARGE_HINTS = ("too many", "too large", "over the limit", "limit is", "exceeds the")


def _exhausted_status(e: grpc.RpcError, details: str) -> int:
    """413 (request over a size limit) or 429 (tenant quota) for RESOURCE_EXHAUSTED.

    The services say which in the ``vplab-http-status`` trailer (grpc_glue). Without it
    (an older service, or a proxy that drops trailers) the library's messages decide:
    quota errors mention "quota"; limit errors say "too many"/"too large"/"limit".
    """
    try:
        trailers = e.trailing_metadata() or ()
    except Exception:  # noqa: BLE001
        trailers = ()
    for key, value in trailers:
        if key == HTTP_STATUS_TRAILER and str(value) in ("413", "429"):
            return int(value)
    text = details.lower()
    if "quota" in text:
        return 429
    if any(h in text for h in _TOO_LARGE_HINTS):
        return 413
    return 429


def status_of_rpc_error(e: grpc.RpcError) -> tuple[int, str]:
    """(HTTP status, message) for a failed RPC."""
    code = e.code() if hasattr(e, "code") else None
    details = (e.details() if hasattr(e, "details") else None) or ""
    status = GRPC_TO_HTTP.get(code)
    if status is None:  # INTERNAL, UNKNOWN, UNIMPLEMENTED, CANCELLED, DATA_LOSS...
        log.warning("upstream error %s: %s", code, details)
        return 502, "the service failed to handle the request"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        status = _exhausted_status(e, details)
    if status in (503, 504):
        # Transport details (addresses, reasons) are not for the caller.
        log.warning("upstream %s: %s", code, details)
        message = (
            "the service is unavailable, try again later"
            if status == 503
            else "the service timed out"
        )
        return status, message
    if code == grpc.StatusCode.NOT_FOUND and "pplication" in details and "not" in details:
        # Serve's proxy: "Application 'x' not found" / "Application metadata not set".
        log.warning("upstream routing error: %s", details)
        return 503, "the service is unavailable, try again later"
    return status, details or CODES.get(status, "error")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VPLabError)
    async def _vplab(request: Request, e: VPLabError):
        headers = {"WWW-Authenticate": "Bearer"} if e.http_status == 401 else None
        if e.http_status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, e.message)
        return error_json(e.http_status, e.message, headers=headers)

    @app.exception_handler(ApiError)
    async def _api(request: Request, e: ApiError):
        return error_json(e.status, e.message, e.code)

    @app.exception_handler(grpc.RpcError)
    async def _rpc(request: Request, e: grpc.RpcError):
        status, message = status_of_rpc_error(e)
        return error_json(status, message)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        parts = []
        for err in e.errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return error_json(400, "invalid request: " + "; ".join(parts))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        # FastAPI turns any failure while reading the body into a 400; a body over the
        # size limit is a 413 (the PayloadTooLarge raised by our receive wrapper).
        cause = e.__cause__
        if isinstance(cause, VPLabError):
            return error_json(cause.http_status, cause.message)
        message = e.detail if isinstance(e.detail, str) else CODES.get(e.status_code, "error")
        if e.status_code == 404 and message == "Not Found":
            message = "no such route"
        return error_json(e.status_code, message, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return error_json(500, "internal error")


__all__ = ["ApiError", "error_json", "install_error_handlers", "status_of_rpc_error"]
