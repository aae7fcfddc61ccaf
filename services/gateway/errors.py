"""Every error the gateway returns is JSON ``{"error": {"code", "message"}}``.

Library errors (``VPLabError``) carry their HTTP status; gRPC errors from the services are
mapped by ``vplab.rpc.status`` (the one table); anything else is a 5xx with a generic
message. A 405 names every method the path allows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from vplab.errors import VPLabError
from vplab.rpc.status import OVERLOADED_CODE, RETRY_AFTER_S, error_code, rpc_error_parts

log = logging.getLogger("vplab.gateway")


class ApiError(Exception):
    """An error with an explicit status (for the few cases no VPLabError class fits)."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code or error_code(status)


def error_json(
    status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code or error_code(status), "message": message}}
    return JSONResponse(body, status_code=status, headers=headers)


def status_of_rpc_error(e: grpc.RpcError) -> tuple[int, str]:
    """(HTTP status, message safe for the caller) for a failed RPC."""
    return _rpc_reply(e)[:2]


def _rpc_reply(e: grpc.RpcError) -> tuple[int, str, str, dict[str, str]]:
    """(HTTP status, message, error code, headers) for a failed RPC."""
    code_name, details, status, overloaded = rpc_error_parts(e)
    status, message = _status_and_message(code_name, details, status, overloaded)
    code = OVERLOADED_CODE if overloaded else error_code(status)
    retry = overloaded or status == 503
    return status, message, code, ({"Retry-After": str(RETRY_AFTER_S)} if retry else {})


def _status_and_message(
    code: str | None, details: str, status: int, overloaded: bool
) -> tuple[int, str]:
    if overloaded:
        log.info("upstream shed a request: %s", details)
        return status, "the service is busy, retry shortly"
    if status >= 500 and status not in (503, 504):  # INTERNAL, UNKNOWN, UNIMPLEMENTED...
        log.warning("upstream error %s: %s", code, details)
        return status, "the service failed to handle the request"
    if status in (503, 504):
        # Transport details (addresses, reasons) are not for the caller.
        log.warning("upstream %s: %s", code, details)
        message = (
            "the service is unavailable, try again later"
            if status == 503
            else "the service timed out"
        )
        return status, message
    if code == "NOT_FOUND" and "pplication" in details and "not" in details:
        # Serve's proxy: "Application 'x' not found" / "Application metadata not set".
        log.warning("upstream routing error: %s", details)
        return 503, "the service is unavailable, try again later"
    return status, details or error_code(status)


def rpc_error_body(e: grpc.RpcError) -> dict[str, Any]:
    """The ``error`` event of an SSE stream that failed after its status was sent."""
    status, message, code, _ = _rpc_reply(e)
    return {"error": {"code": code, "message": message}, "status": status}


def _routes(routes: Iterable[Any]) -> Iterator[Any]:
    """The app's routes, through FastAPI's included routers."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        else:
            yield route


def allowed_methods(request: Request) -> list[str]:
    """Every method some route accepts for this path (the router's own 405 names at most
    the first route's when several routes share a path)."""
    methods: set[str] = set()
    for route in _routes(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def app_routes(app: FastAPI) -> list[Any]:
    """Every route of ``app`` (``APIRoute``s with their full path templates)."""
    return list(_routes(app.router.routes))


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
        status, message, code, headers = _rpc_reply(e)
        return error_json(status, message, code, headers=headers or None)

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
        message = e.detail if isinstance(e.detail, str) else error_code(e.status_code)
        headers = dict(getattr(e, "headers", None) or {})
        if e.status_code == 404 and message == "Not Found":
            message = "no such route"
        if e.status_code == 405:
            allow = allowed_methods(request)
            headers["Allow"] = ", ".join(allow)
            message = f"{request.method} is not allowed here; allowed: {', '.join(allow)}"
        return error_json(e.status_code, message, headers=headers or None)

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return error_json(500, "internal error")


__all__ = [
    "ApiError",
    "allowed_methods",
    "app_routes",
    "error_json",
    "install_error_handlers",
    "rpc_error_body",
    "status_of_rpc_error",
]
