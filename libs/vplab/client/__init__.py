"""Python SDK for VP Lab.

``VPLabClient`` talks to the REST gateway (the whole loop: datasets, prompting, visual
prompting, labels, training, export); ``VPLabGrpcClient`` calls the segmentation and
training services directly over gRPC. Both raise ``VPLabAPIError`` on failure.

    from vplab.client import VPLabClient

    with VPLabClient("http://localhost:8080", api_key="vpl_...") as vp:
        ds = vp.create_dataset("cells")
        ids = [vp.upload_image(ds["id"], p) for p in ["a.png", "b.png", "c.png"]]
        ref = vp.segment(ids[0], points=[[120, 80]], labels=[1]).best_mask
        results = vp.visual_prompt(ds["id"], references=[(ids[0], ref)])
        vp.put_label(ds["id"], ids[1], results[0].mask)
        job = vp.start_training(ds["id"], method="epeft", steps=200)
        job = vp.wait_for_training(job["job_id"], on_event=print)
        vp.export_model(job["model_id"], "adapter.zip")
"""

from vplab.client.errors import VPLabAPIError
from vplab.client.grpc_client import VPLabGrpcClient
from vplab.client.rest import SegmentResult, VisualPromptResult, VPLabClient

__all__ = ["SegmentResult", "VPLabAPIError", "VPLabClient", "VPLabGrpcClient", "VisualPromptResult"]
