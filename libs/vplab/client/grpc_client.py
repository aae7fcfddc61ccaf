"""``VPLabGrpcClient``: the segmentation and training services over gRPC, without the gateway.

Every call carries the metadata the Ray Serve gRPC proxy and the services need:
``authorization: Bearer <key>``, ``application: <app name>`` and, for a tuned model,
``multiplexed_model_id``. Images must already be uploaded (through the REST API or
``VPLabClient``): gRPC messages carry image ids, never pixels.

    from vplab.client import VPLabGrpcClient

    with VPLabGrpcClient("localhost:9000", api_key="vpl_...") as g:
        seg = g.segment(image_id, points=[[120, 80]], labels=[1])
        for r in g.visual_prompt(references=[(image_id, seg.best_mask)], targets=other_ids):
            print(r.image_id, r.score)
        job = g.start_training("d-1234", method="epeft", steps=100)
        final = g.wait_for_training(job["job_id"], on_event=print)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np

from vplab.client.errors import VPLabAPIError
from vplab.client.rest import (
    TERMINAL_STATES,
    SegmentResult,
    VisualPromptResult,
    _mask_to_rle,
    _rle_to_mask,
)
from vplab.rpc.v1 import (
    common_pb2,
    segmentation_pb2,
    segmentation_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

SEGMENTATION_APP, TRAINING_APP = "segmentation", "training"


def _rle_pb(mask: Any) -> common_pb2.RleMask:
    rle = _mask_to_rle(mask)
    return common_pb2.RleMask(
        height=int(rle["size"][0]), width=int(rle["size"][1]), counts=rle["counts"]
    )


def _mask(m: common_pb2.RleMask) -> np.ndarray:
    return _rle_to_mask({"size": [m.height, m.width], "counts": m.counts})


def _job(job: training_pb2.Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "dataset_id": job.dataset_id,
        "method": job.method,
        "base_model": job.base_model,
        "state": common_pb2.JobState.Name(job.state),
        "step": job.step,
        "total_steps": job.total_steps,
        "best_val_iou": job.best_val_iou,
        "initial_val_iou": job.initial_val_iou,
        "model_id": job.model_id,
        "error": job.error,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "attempts": job.attempts,
    }


def _event(e: training_pb2.JobEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "job_id": e.job_id,
        "state": common_pb2.JobState.Name(e.state),
        "phase": e.phase,
        "step": e.step,
        "total_steps": e.total_steps,
        "loss": e.loss,
        "val_iou": e.val_iou,
        "best_val_iou": e.best_val_iou,
        "eta_s": e.eta_s,
        "message": e.message,
        "model_id": e.model_id,
        "time": e.time,
    }


class VPLabGrpcClient:
    """gRPC client for the segmentation and training services (through Serve's gRPC proxy).

    ``target`` is ``host:port``; pass ``credentials`` (``grpc.ssl_channel_credentials()``)
    for TLS. ``timeout`` (seconds) applies to unary calls; streams have none by default.
    Errors raise ``VPLabAPIError`` with the HTTP-equivalent ``status`` and ``grpc_code``.
    """

    def __init__(
        self,
        target: str,
        api_key: str,
        timeout: float = 300.0,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ):
        opts = [("grpc.max_receive_message_length", 64 * 1024 * 1024), *options]
        self._channel = (
            grpc.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.insecure_channel(target, options=opts)
        )
        self._auth = f"Bearer {api_key}"
        self.timeout = timeout
        self._seg = segmentation_pb2_grpc.SegmentationStub(self._channel)
        self._train = training_pb2_grpc.TrainingStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> VPLabGrpcClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _md(self, app: str, model_id: str | None = None) -> list[tuple[str, str]]:
        md = [("application", app), ("authorization", self._auth)]
        if model_id:
            md.append(("multiplexed_model_id", model_id))
        return md

    def _unary(self, fn, request, app: str, model_id: str | None = None):
        try:
            return fn(request, metadata=self._md(app, model_id), timeout=self.timeout)
        except grpc.RpcError as e:
            raise VPLabAPIError.from_rpc_error(e) from None

    # --- segmentation --------------------------------------------------------------------

    def segment(
        self,
        image_id: str,
        points: Sequence[Sequence[float]] = (),
        labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        model_id: str | None = None,
        multimask: bool = False,
        mask_input: np.ndarray | dict | None = None,
    ) -> SegmentResult:
        """Prompted segmentation (see ``VPLabClient.segment``)."""
        pts = np.asarray(points, dtype=float).reshape(-1, 2) if len(points) else np.zeros((0, 2))
        labs = list(labels) if labels is not None else [1] * len(pts)
        if len(labs) != len(pts):
            raise ValueError("points and labels must have the same length")
        request = segmentation_pb2.SegmentPromptRequest(
            image_id=image_id,
            multimask_output=multimask,
            model_id=model_id or "",
            points=[
                common_pb2.Point(x=float(x), y=float(y), label=int(lab))
                for (x, y), lab in zip(pts, labs)
            ],
        )
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in box)
            request.box.CopyFrom(common_pb2.Box(x0=x0, y0=y0, x1=x1, y1=y1))
        if mask_input is not None:
            request.mask_input.CopyFrom(_rle_pb(mask_input))
        r = self._unary(self._seg.SegmentPrompt, request, SEGMENTATION_APP, model_id)
        masks = [_mask(m.mask) for m in r.masks]
        stack = np.stack(masks) if masks else np.zeros((0, r.height, r.width), bool)
        return SegmentResult(
            stack, np.asarray([m.score for m in r.masks], np.float32), r.height, r.width
        )

    def visual_prompt(
        self,
        references: Sequence[tuple[str, np.ndarray | dict]],
        targets: Sequence[str],
        model_id: str | None = None,
        matcher: str = "soft",
        seed: int = 0,
    ) -> Iterator[VisualPromptResult]:
        """Yields one result per target as it finishes (not in order: see ``.index``)."""
        request = segmentation_pb2.VisualPromptRequest(
            references=[
                segmentation_pb2.Reference(image_id=i, mask=_rle_pb(m)) for i, m in references
            ],
            target_image_ids=list(targets),
            model_id=model_id or "",
            matcher=matcher,
            seed=seed,
        )
        call = self._seg.VisualPrompt(request, metadata=self._md(SEGMENTATION_APP, model_id))
        try:
            for r in call:
                yield VisualPromptResult(
                    index=r.index,
                    image_id=r.image_id,
                    mask=_mask(r.mask),
                    score=float(r.score),
                    points=np.asarray([[p.x, p.y] for p in r.points], np.float32).reshape(-1, 2),
                    point_labels=np.asarray([p.label for p in r.points], np.int64),
                )
        except grpc.RpcError as e:
            raise VPLabAPIError.from_rpc_error(e) from None
        finally:
            call.cancel()

    def auto_segment(self, image_id: str, model_id: str) -> tuple[np.ndarray, float]:
        r = self._unary(
            self._seg.AutoSegment,
            segmentation_pb2.AutoSegmentRequest(image_id=image_id, model_id=model_id),
            SEGMENTATION_APP,
            model_id,
        )
        return _mask(r.mask), float(r.score)

    # --- training ------------------------------------------------------------------------

    def start_training(
        self,
        dataset_id: str,
        method: str = "epeft",
        steps: int = 0,
        base_model: str | None = None,
        method_config: dict[str, Any] | None = None,
        seed: int = 0,
        lr: float | None = None,
    ) -> dict[str, Any]:
        request = training_pb2.StartTrainingRequest(
            dataset_id=dataset_id,
            method=method,
            base_model=base_model or "",
            steps=steps,
            method_config_json=json.dumps(method_config) if method_config else "",
            seed=seed,
            lr=lr or 0.0,
        )
        return _job(self._unary(self._train.StartTraining, request, TRAINING_APP).job)

    def get_training(self, job_id: str) -> dict[str, Any]:
        return _job(
            self._unary(
                self._train.GetJob, training_pb2.GetJobRequest(job_id=job_id), TRAINING_APP
            ).job
        )

    def list_trainings(self, state: str | None = None, limit: int = 0) -> list[dict[str, Any]]:
        request = training_pb2.ListJobsRequest(
            limit=limit, state=common_pb2.JobState.Value(state) if state else 0
        )
        return [_job(j) for j in self._unary(self._train.ListJobs, request, TRAINING_APP).jobs]

    def cancel_training(self, job_id: str) -> dict[str, Any]:
        return _job(
            self._unary(
                self._train.CancelJob, training_pb2.CancelJobRequest(job_id=job_id), TRAINING_APP
            ).job
        )

    def iter_training_events(self, job_id: str, after_seq: int = 0) -> Iterator[dict[str, Any]]:
        call = self._train.WatchJob(
            training_pb2.WatchJobRequest(job_id=job_id, after_seq=after_seq),
            metadata=self._md(TRAINING_APP),
        )
        try:
            for e in call:
                yield _event(e)
        except grpc.RpcError as e:
            raise VPLabAPIError.from_rpc_error(e) from None
        finally:
            call.cancel()

    def wait_for_training(
        self,
        job_id: str,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        max_reconnects: int = 5,
    ) -> dict[str, Any]:
        """Follow the job's events until it ends (resuming after the last seq on a broken
        stream); return the final job."""
        last_seq, failures = 0, 0
        while True:
            try:
                for event in self.iter_training_events(job_id, after_seq=last_seq):
                    last_seq = max(last_seq, event["seq"])
                    if on_event is not None:
                        on_event(event)
                    if event["state"] in TERMINAL_STATES:
                        break
            except VPLabAPIError as e:
                if e.status not in (502, 503, 504):
                    raise
                failures += 1
                if failures > max_reconnects:
                    raise
            job = self.get_training(job_id)
            if job["state"] in TERMINAL_STATES:
                return job
            time.sleep(0.2)  # the stream ended early (service restart...): resume shortly
