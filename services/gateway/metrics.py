"""Prometheus metrics of one gateway app (own CollectorRegistry: apps never share counters).

Requests are labelled by route *template* (``/v1/datasets/{dataset_id}``), never by the
raw path, so ids cannot blow up the label cardinality. Latency runs until the last body
byte is sent (streams included).
"""

from __future__ import annotations

import re
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vplab.errors import PayloadTooLarge


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "vplab_gateway_requests",
            "HTTP requests by route template, method and status",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "vplab_gateway_request_duration_seconds",
            "HTTP request latency by route template",
            ("route", "method"),
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
        )
        self.upstream = Counter(
            "vplab_gateway_upstream_rpcs",
            "gRPC calls to the services by app, method and code",
            ("app", "method", "code"),
            registry=self.registry,
        )


def route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class MetricsAndLimitsMiddleware:
    """Counts requests, and caps request bodies at ``max_body`` bytes (413).

    The cap is applied twice: on Content-Length before anything is read, and on the bytes
    actually received (chunked uploads), so no route ever buffers more than the limit.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: GatewayMetrics,
        max_body: int,
        larger: tuple[tuple[re.Pattern[str], int], ...] = (),
    ):
        """``larger``: (path pattern, cap) for the routes that take more (archive imports)."""
        self.app, self.metrics, self.default_max_body, self.larger = app, metrics, max_body, larger

    def max_body_for(self, path: str) -> int:
        for pattern, cap in self.larger:
            if pattern.fullmatch(path):
                return cap
        return self.default_max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]
        method = scope.get("method", "GET")
        max_body = self.max_body_for(scope.get("path", ""))

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            length = _content_length(scope)
            if length is not None and length > max_body:
                from services.gateway.errors import error_json

                response = error_json(
                    413, f"request body is {length} bytes, over the limit of {max_body} bytes"
                )
                await response(scope, receive, send_wrapper)
                return
            received = [0]

            async def limited_receive() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    received[0] += len(message.get("body", b""))
                    if received[0] > max_body:
                        raise PayloadTooLarge(f"request body is over the limit of {max_body} bytes")
                return message

            await self.app(scope, limited_receive, send_wrapper)
        finally:
            route = route_label(scope)
            self.metrics.requests.labels(route, method, str(status[0])).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", ()):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
