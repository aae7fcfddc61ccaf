"""Ray Serve app ``features``: image embeddings (SAM encoder, DINOv2) into the tenant cache."""

from __future__ import annotations

import asyncio

from ray import serve

from services.common import Replica
from vplab.errors import VPLabError
from vplab.inference.features import FeatureEngine
from vplab.inference.runtime import ModelRuntime
from vplab.rpc import convert
from vplab.rpc.v1 import features_pb2 as pb
from vplab.serving.apps import deployment_options
from vplab.serving.grpc_glue import ServiceMetrics, tenant_of, unary
from vplab.settings import get_settings


@serve.deployment(name="FeaturesDeployment", **deployment_options(get_settings(), "features"))
class FeaturesDeployment:
    def __init__(self):
        self.replica = Replica.from_env()
        self.metrics = ServiceMetrics("features")
        self.engine = FeatureEngine(
            ModelRuntime(self.replica.settings, self.replica.store),
            self.replica.settings.embedding_lru_bytes,
            self.metrics.cache_lookup,
        )

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
    async def _embed(self, requests: list[tuple[str, str, str]]) -> list:
        # One encoder batch for every miss that arrived together.
        return await self.replica.run_model(self.engine.embed_many, requests)

    async def _one(self, tenant: str, image_id: str, encoder: str) -> pb.EmbedResponse:
        result = await self._embed((tenant, image_id, encoder))
        if isinstance(result, VPLabError):
            raise result
        return convert.embed_response_to_pb(result[1])

    async def Embed(self, request: pb.EmbedRequest, grpc_context) -> pb.EmbedResponse:
        async def handle():
            return await self._one(
                tenant_of(self.replica.auth, grpc_context), request.image_id, request.encoder
            )

        return await unary(grpc_context, self.metrics, "Embed", pb.EmbedResponse(), handle)

    async def embed_images(self, tenant: str, image_ids: list[str], encoder: str) -> list:
        """EmbedBatch for a caller inside the cluster (a precompute job's worker, which
        names the tenant itself): one encoder batch of the misses."""
        return await self.replica.run_model(self.engine.precompute, tenant, image_ids, encoder)

    async def EmbedBatch(
        self, request: pb.EmbedBatchRequest, grpc_context
    ) -> pb.EmbedBatchResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            self.replica.datasets.limits.check_targets(len(request.image_ids))
            results = await asyncio.gather(
                *[self._one(tenant, i, request.encoder) for i in request.image_ids]
            )
            return pb.EmbedBatchResponse(results=results)

        return await unary(
            grpc_context, self.metrics, "EmbedBatch", pb.EmbedBatchResponse(), handle
        )


app = FeaturesDeployment.bind()  # type: ignore[attr-defined]  # serve.deployment makes it a Deployment
