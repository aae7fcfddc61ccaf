"""Ray Serve app ``segmentation``: SegmentPrompt, VisualPrompt (streamed), AutoSegment.

Tuned adapters are loaded per (tenant, model_id) through ``@serve.multiplexed`` (LRU per
replica); clients route with the ``multiplexed_model_id`` metadata, but the model itself is
always looked up under the authenticated tenant, so another tenant's id is NOT_FOUND.
"""

from __future__ import annotations

import asyncio

from ray import serve

from services.common import Replica
from vplab.inference.features import FeatureEngine
from vplab.inference.runtime import ModelRuntime
from vplab.inference.segmentation import Prompt, SegmentationEngine
from vplab.rpc.v1 import common_pb2
from vplab.rpc.v1 import segmentation_pb2 as pb
from vplab.serving.grpc_glue import ServiceMetrics, streaming, tenant_of, unary
from vplab.storage import keys


def _rle_pb(rle: dict) -> common_pb2.RleMask:
    h, w = rle["size"]
    return common_pb2.RleMask(height=h, width=w, counts=rle["counts"])


def _rle_dict(m: common_pb2.RleMask) -> dict:
    return {"size": [m.height, m.width], "counts": m.counts}


def _points_pb(points) -> list[common_pb2.Point]:
    return [common_pb2.Point(x=x, y=y, label=label) for x, y, label in points]


@serve.deployment(name="SegmentationDeployment")
class SegmentationDeployment:
    def __init__(self):
        self.replica = Replica.from_env()
        s = self.replica.settings
        self.metrics = ServiceMetrics("segmentation")
        features = FeatureEngine(
            ModelRuntime(s, self.replica.store), s.embedding_lru_bytes, self.metrics.cache_lookup
        )
        self.engine = SegmentationEngine(features, s.max_models_per_replica)

    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_model(self, tenant_model: str):
        tenant, model_id = tenant_model.split("/", 1)
        return await asyncio.to_thread(self.engine.load_model, tenant, model_id)

    async def _model(self, tenant: str, model_id: str):
        if not model_id:
            return None
        keys.check_id(model_id, "model_id")
        return await self.get_model(f"{tenant}/{model_id}")

    async def SegmentPrompt(
        self, request: pb.SegmentPromptRequest, grpc_context
    ) -> pb.SegmentPromptResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            model = await self._model(tenant, request.model_id)
            prompt = Prompt(
                points=[(p.x, p.y, p.label) for p in request.points],
                box=(request.box.x0, request.box.y0, request.box.x1, request.box.y1)
                if request.HasField("box")
                else None,
                mask_input=_rle_dict(request.mask_input)
                if request.HasField("mask_input")
                else None,
                multimask=request.multimask_output,
            )
            masks, (h, w) = await asyncio.to_thread(
                self.engine.segment_prompt, tenant, request.image_id, prompt, model
            )
            return pb.SegmentPromptResponse(
                masks=[common_pb2.MaskResult(mask=_rle_pb(r), score=s) for r, s in masks],
                height=h,
                width=w,
            )

        return await unary(
            grpc_context, self.metrics, "SegmentPrompt", pb.SegmentPromptResponse(), handle
        )

    async def VisualPrompt(self, request: pb.VisualPromptRequest, grpc_context):
        async def results():
            tenant = tenant_of(self.replica.auth, grpc_context)
            model = await self._model(tenant, request.model_id)
            refs = [(r.image_id, _rle_dict(r.mask)) for r in request.references]
            it = self.engine.visual_prompt(
                tenant, refs, list(request.target_image_ids), model, request.matcher, request.seed
            )
            while True:
                item = await asyncio.to_thread(next, it, None)
                if item is None:
                    return
                index, image_id, rle, score, points = item
                yield pb.VisualPromptResponse(
                    index=index,
                    image_id=image_id,
                    mask=_rle_pb(rle),
                    score=score,
                    points=_points_pb(points),
                )

        async for item in streaming(grpc_context, self.metrics, "VisualPrompt", results):
            yield item

    async def AutoSegment(
        self, request: pb.AutoSegmentRequest, grpc_context
    ) -> pb.AutoSegmentResponse:
        async def handle():
            tenant = tenant_of(self.replica.auth, grpc_context)
            model = await self._model(tenant, request.model_id)
            rle, score = await asyncio.to_thread(
                self.engine.auto_segment, tenant, request.image_id, model
            )
            return pb.AutoSegmentResponse(mask=_rle_pb(rle), score=score)

        return await unary(
            grpc_context, self.metrics, "AutoSegment", pb.AutoSegmentResponse(), handle
        )


app = SegmentationDeployment.bind()
