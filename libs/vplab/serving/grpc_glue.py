"""What every gRPC service does around its handlers: authenticate, map errors, count.

Ray Serve delivers a gRPC status only through ``grpc_context.set_code`` followed by a
normal return (PLATFORM-NOTES), so library errors become (code, details) here, once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

from vplab.errors import VPLabError
from vplab.rpc.status import HTTP_STATUS_TRAILER

log = logging.getLogger("vplab.services")


def _set_error(grpc_context, code: str, message: str, http_status: int = 500) -> None:
    # 413 and 429 share RESOURCE_EXHAUSTED: the trailer says which (vplab.rpc.status).
    grpc_context.set_code(getattr(grpc.StatusCode, code))
    grpc_context.set_details(message)
    grpc_context.set_trailing_metadata([(HTTP_STATUS_TRAILER, str(http_status))])


class ServiceMetrics:
    """Request counts and latency per RPC through Ray Serve's metrics (Prometheus)."""

    def __init__(self, service: str):
        from ray.serve import metrics

        self.service = service
        # ray.serve.metrics annotates tag_keys as Tuple[str] (exactly one key) although it
        # takes any number (ray.util.metrics: Tuple[str, ...]): hence the ignores below.
        self.requests = metrics.Counter(
            "vplab_rpc_requests",
            description="RPCs by service, method and code",
            tag_keys=("service", "method", "code"),  # type: ignore[arg-type]  # ray stub bug
        )
        self.latency = metrics.Histogram(
            "vplab_rpc_latency_ms",
            description="RPC latency (ms)",
            boundaries=[1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000, 60000],
            tag_keys=("service", "method"),  # type: ignore[arg-type]  # ray stub bug
        )

        self.cache = metrics.Counter(
            "vplab_embedding_cache",
            description="embedding cache lookups by encoder and result",
            tag_keys=("service", "encoder", "result"),  # type: ignore[arg-type]  # ray stub bug
        )

    def cache_lookup(self, encoder: str, hit: bool) -> None:
        self.cache.inc(
            tags={"service": self.service, "encoder": encoder, "result": "hit" if hit else "miss"}
        )

    def observe(self, method: str, code: str, started: float) -> None:
        self.requests.inc(tags={"service": self.service, "method": method, "code": code})
        self.latency.observe(
            (time.perf_counter() - started) * 1000, tags={"service": self.service, "method": method}
        )


def tenant_of(authenticator, grpc_context) -> str:
    """The authenticated tenant id: never taken from request data."""
    return authenticator.authenticate_metadata(grpc_context.invocation_metadata()).id


async def unary(
    grpc_context,
    metrics: ServiceMetrics | None,
    method: str,
    empty: Any,
    handler: Callable[[], Awaitable[Any]],
) -> Any:
    started = time.perf_counter()
    code = "OK"
    try:
        return await handler()
    except VPLabError as e:
        code = e.grpc_code
        _set_error(grpc_context, e.grpc_code, e.message, e.http_status)
        return empty
    except Exception:
        code = "INTERNAL"
        log.exception("%s failed", method)
        _set_error(grpc_context, "INTERNAL", f"{method}: internal error")
        return empty
    finally:
        if metrics is not None:
            metrics.observe(method, code, started)


class StreamAborted(Exception):
    """Raised after setting the status: Serve applies a status set on the context of a
    server-streaming call only when the handler raises (an empty stream would end OK)."""


async def streaming(
    grpc_context,
    metrics: ServiceMetrics | None,
    method: str,
    items: Callable[[], AsyncIterator[Any] | Iterator[Any]],
) -> AsyncIterator[Any]:
    started = time.perf_counter()
    code = "OK"
    try:
        source = items()
        if hasattr(source, "__aiter__"):
            async for item in source:
                yield item
        else:
            for item in source:
                yield item
    except VPLabError as e:
        code = e.grpc_code
        _set_error(grpc_context, e.grpc_code, e.message, e.http_status)
        raise StreamAborted(e.message) from None
    except Exception:
        code = "INTERNAL"
        log.exception("%s failed", method)
        _set_error(grpc_context, "INTERNAL", f"{method}: internal error")
        raise StreamAborted(f"{method}: internal error") from None
    finally:
        if metrics is not None:
            metrics.observe(method, code, started)
