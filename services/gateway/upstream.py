"""The gateway's side of the gRPC services: stubs on one channel, timeouts, call counts.

One ``Upstream`` per app, opened by the lifespan on the serving event loop and kept on
``app.state.upstream``; routes reach it through the ``Upstream`` dependency.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from fastapi import FastAPI

from services.gateway.metrics import GatewayMetrics
from vplab.rpc import convert
from vplab.rpc.v1 import (
    datajobs_pb2_grpc,
    features_pb2_grpc,
    predictions_pb2_grpc,
    segmentation_pb2_grpc,
    training_pb2_grpc,
)

ChannelSource = grpc.aio.Channel | Callable[[], grpc.aio.Channel] | None


@dataclass(frozen=True)
class Timeouts:
    rpc_s: float = 300.0  # unary calls
    stream_s: float | None = 3600.0  # visual prompting streams (None: no deadline)
    health_s: float = 3.0  # /healthz probes
    keepalive_s: float = 15.0  # SSE comment lines while a stream is quiet


class Upstream:
    """Stubs on one ``grpc.aio`` channel, and the metadata and counting every call gets."""

    def __init__(self, channel: grpc.aio.Channel, metrics: GatewayMetrics, timeouts: Timeouts):
        self.channel = channel
        self.metrics = metrics
        self.timeouts = timeouts
        self.features = features_pb2_grpc.FeaturesStub(channel)
        self.segmentation = segmentation_pb2_grpc.SegmentationStub(channel)
        self.training = training_pb2_grpc.TrainingStub(channel)
        self.predictions = predictions_pb2_grpc.PredictionsStub(channel)
        self.data_jobs = datajobs_pb2_grpc.DataJobsStub(channel)

    async def unary(
        self,
        app: str,
        method: str,
        request: Any,
        authorization: str | None,
        model_id: str | None = None,
    ) -> Any:
        """Call ``app``'s unary ``method``; a failed call raises its ``grpc.RpcError``."""
        call = self._method(app, method)
        try:
            response = await call(
                request,
                metadata=convert.call_metadata(app, authorization, model_id),
                timeout=self.timeouts.rpc_s,
            )
        except grpc.RpcError as e:
            self.count(app, method, e)
            raise
        self.count(app, method)
        return response

    def stream(
        self,
        app: str,
        method: str,
        request: Any,
        authorization: str | None,
        model_id: str | None = None,
        deadline: bool = True,
    ) -> Any:
        """Start a server-streaming call (iterate it; the caller counts its outcome)."""
        call = self._method(app, method)
        return call(
            request,
            metadata=convert.call_metadata(app, authorization, model_id),
            timeout=self.timeouts.stream_s if deadline else None,
        )

    async def probe(self, app: str, method: str, request: Any) -> None:
        """An unauthenticated call for health checks: raises the RpcError it gets."""
        call = self._method(app, method)
        await call(request, metadata=convert.call_metadata(app), timeout=self.timeouts.health_s)

    def count(self, app: str, method: str, error: grpc.RpcError | None = None) -> None:
        code = "OK" if error is None else (error.code().name if error.code() else "UNKNOWN")
        self.metrics.upstream.labels(app, method, code).inc()

    def _method(self, app: str, method: str) -> Any:
        """``app``'s stub method ``method``: an app may serve several gRPC services (the
        training app serves Training, Predictions and DataJobs)."""
        stubs = {
            convert.FEATURES: (self.features,),
            convert.SEGMENTATION: (self.segmentation,),
            convert.TRAINING: (self.training, self.predictions, self.data_jobs),
        }[app]
        for stub in stubs:
            if hasattr(stub, method):
                return getattr(stub, method)
        raise AttributeError(f"app {app!r} has no method {method!r}")


@contextlib.asynccontextmanager
async def upstream_lifespan(
    app: FastAPI, target: str, source: ChannelSource, timeouts: Timeouts
) -> AsyncIterator[None]:
    """Open the channel on the serving loop (grpc.aio channels belong to one loop).

    ``source``: None (a channel to ``target``, opened and closed here), a channel (the
    caller's: it must belong to the serving loop, and the caller closes it), or a
    zero-argument factory called here (its channel is closed here).
    """
    if source is None:
        own, channel = True, grpc.aio.insecure_channel(target, options=convert.CHANNEL_OPTIONS)
    elif isinstance(source, grpc.aio.Channel):
        own, channel = False, source
    else:
        own, channel = True, source()
    app.state.upstream = Upstream(channel, app.state.metrics, timeouts)
    try:
        yield
    finally:
        app.state.upstream = None
        if own:
            await channel.close(None)
