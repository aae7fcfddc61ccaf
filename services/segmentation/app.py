"""Ray Serve app ``segmentation``: SegmentPrompt, VisualPrompt (streamed), AutoSegment, and
the targets of prediction runs (``predict_target``, called by the run's worker).

Tuned adapters are loaded per (tenant, model_id) through ``@serve.multiplexed``, the one
tuned-model cache (``max_models_per_replica`` models per replica, LRU); clients route with
the ``multiplexed_model_id`` metadata, but the model itself is always looked up under the
authenticated tenant, so another tenant's id is NOT_FOUND.
"""

from __future__ import annotations

import asyncio

from ray import serve

from services.common import Replica
from vplab.inference.features import FeatureEngine
from vplab.inference.runtime import ModelRuntime
from vplab.inference.segmentation import (
    Prompt,
    SegmentationEngine,
    TunedModel,
    decoder_batch_size,
)
from vplab.rpc import convert
from vplab.rpc.v1 import segmentation_pb2 as pb
from vplab.serving.apps import deployment_options
from vplab.serving.grpc_glue import ServiceMetrics, streaming, tenant_of, unary
from vplab.settings import get_settings
from vplab.storage import keys

# Read where the replica imports this module (its settings arrive in its environment).
_SETTINGS = get_settings()
MAX_MODELS_PER_REPLICA = _SETTINGS.max_models_per_replica


@serve.deployment(name="SegmentationDeployment", **deployment_options(_SETTINGS, "segmentation"))
class SegmentationDeployment:
    def __init__(self):
        self.replica = Replica.from_env()
        s = self.replica.settings
        self.metrics = ServiceMetrics("segmentation")
        features = FeatureEngine(
            ModelRuntime(s, self.replica.store), s.embedding_lru_bytes, self.metrics.cache_lookup
        )
        self.engine = SegmentationEngine(features)
        self.batch_max = decoder_batch_size(s, features.segmenter)
        self._segment_batch.set_max_batch_size(self.batch_max)
        self._segment_batch.set_batch_wait_timeout_s(s.segment_batch_wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)  # sizes set in __init__
    async def _segment_batch(self, calls: list[tuple]) -> list:
        return await self.replica.run_model(self.engine.segment_prompts, calls)

    async def _segment(self, tenant: str, image_id: str, prompt: Prompt, model):
        if self.batch_max <= 1 or prompt.box is not None or prompt.mask_input is not None:
            return await self.replica.run_model(
                self.engine.segment_prompt, tenant, image_id, prompt, model
            )
        out = await self._segment_batch((tenant, image_id, prompt, model))
        if isinstance(out, BaseException):
            raise out
        return out

    @serve.multiplexed(max_num_models_per_replica=MAX_MODELS_PER_REPLICA)
    async def get_model(self, tenant_model: str) -> TunedModel:
        tenant, model_id = keys.parse_multiplexed_model(tenant_model)
        return await self.replica.run_model(self.engine.load_model, tenant, model_id)

    async def _model(self, tenant: str, model_id: str) -> TunedModel | None:
        if not model_id:
            return None
        return await self.get_model(keys.multiplexed_model(tenant, model_id))

    async def predict_target(self, tenant: str, run, image_id: str) -> dict:
        """One target of a prediction run (a Python call from the run's worker task, over
        a deployment handle: Serve spreads a run's targets over the replicas)."""
        model = await self._model(tenant, run.model_id)
        return await self.replica.run_model(
            self.engine.predict_target, tenant, run, image_id, model
        )

    async def SegmentPrompt(
        self, request: pb.SegmentPromptRequest, grpc_context
    ) -> pb.SegmentPromptResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            model = await self._model(tenant, request.model_id)
            points, box, mask_input, multimask = convert.segment_request_from_pb(request)
            prompt = Prompt(points=points, box=box, mask_input=mask_input, multimask=multimask)
            masks, (h, w) = await self._segment(tenant, request.image_id, prompt, model)
            return pb.SegmentPromptResponse(
                masks=convert.mask_results_to_pb(masks), height=h, width=w
            )

        return await unary(
            grpc_context, self.metrics, "SegmentPrompt", pb.SegmentPromptResponse(), handle
        )

    async def VisualPrompt(self, request: pb.VisualPromptRequest, grpc_context):
        async def results():
            tenant = tenant_of(self.replica.auth, grpc_context)
            refs = [(r.image_id, convert.rle_from_pb(r.mask)) for r in request.references]
            targets = await asyncio.to_thread(
                self.replica.datasets.visual_prompt_targets,
                tenant,
                request.dataset_id,
                [image_id for image_id, _ in refs],
                list(request.target_image_ids),
            )
            model = await self._model(tenant, request.model_id)
            it = self.engine.visual_prompt(
                tenant, refs, targets, model, request.matcher, request.seed
            )
            while True:
                item = await self.replica.run_model(next, it, None)
                if item is None:
                    return
                yield convert.visual_prompt_result_to_pb(*item)

        async for item in streaming(grpc_context, self.metrics, "VisualPrompt", results):
            yield item

    async def AutoSegment(
        self, request: pb.AutoSegmentRequest, grpc_context
    ) -> pb.AutoSegmentResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            model = await self._model(tenant, request.model_id)
            rle, score = await self.replica.run_model(
                self.engine.auto_segment, tenant, request.image_id, model
            )
            return pb.AutoSegmentResponse(mask=convert.rle_to_pb(rle), score=score)

        return await unary(
            grpc_context, self.metrics, "AutoSegment", pb.AutoSegmentResponse(), handle
        )


app = SegmentationDeployment.bind()  # type: ignore[attr-defined]  # serve.deployment makes it a Deployment
