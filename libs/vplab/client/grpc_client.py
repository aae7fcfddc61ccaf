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

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import numpy as np

from vplab.client.errors import VPLabAPIError
from vplab.client.rest import SegmentResult, VisualPromptResult, _mask_to_rle, _rle_to_mask
from vplab.rpc import convert
from vplab.rpc.convert import SEGMENTATION as SEGMENTATION_APP
from vplab.rpc.convert import TRAINING as TRAINING_APP
from vplab.rpc.v1 import segmentation_pb2, segmentation_pb2_grpc, training_pb2, training_pb2_grpc
from vplab.states import is_terminal


def _mask(rle: dict[str, Any]) -> np.ndarray:
    return _rle_to_mask(rle)


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
        opts = [*convert.CHANNEL_OPTIONS, *options]
        self._channel = (
            grpc.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.insecure_channel(target, options=opts)
        )
        self._auth = convert.bearer(api_key)
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
        return convert.call_metadata(app, self._auth, model_id)

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
        request = convert.segment_request_to_pb(
            image_id,
            [(x, y, lab) for (x, y), lab in zip(pts, labs)],
            box=box,
            mask_input=_mask_to_rle(mask_input) if mask_input is not None else None,
            multimask=multimask,
            model_id=model_id,
        )
        r = self._unary(self._seg.SegmentPrompt, request, SEGMENTATION_APP, model_id)
        masks = [_mask(convert.rle_from_pb(m.mask)) for m in r.masks]
        stack = np.stack(masks) if masks else np.zeros((0, r.height, r.width), bool)
        return SegmentResult(
            stack, np.asarray([m.score for m in r.masks], np.float32), r.height, r.width
        )

    def visual_prompt(
        self,
        dataset_id: str,
        references: Sequence[tuple[str, np.ndarray | dict]],
        targets: Sequence[str] | None = None,
        model_id: str | None = None,
        matcher: str = "soft",
        seed: int = 0,
    ) -> Iterator[VisualPromptResult]:
        """Yields one result per target as it finishes (not in order: see ``.index``).
        ``targets`` default: every image of the dataset that is not a reference."""
        request = convert.visual_prompt_request_to_pb(
            dataset_id,
            [(i, _mask_to_rle(m)) for i, m in references],
            targets,
            model_id,
            matcher,
            seed,
        )
        call = self._seg.VisualPrompt(request, metadata=self._md(SEGMENTATION_APP, model_id))
        try:
            for r in call:
                d = convert.visual_prompt_result_from_pb(r)
                yield VisualPromptResult(
                    index=d["index"],
                    image_id=d["image_id"],
                    mask=_mask(d["mask_rle"]),
                    score=d["score"],
                    points=np.asarray(d["points"], np.float32).reshape(-1, 2),
                    point_labels=np.asarray(d["point_labels"], np.int64),
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
        return _mask(convert.rle_from_pb(r.mask)), convert.wire_float(r.score)

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
        recipe: str = "",
    ) -> dict[str, Any]:
        request = convert.start_training_to_pb(
            dataset_id, method, base_model or "", steps, method_config, seed, lr, recipe
        )
        return convert.job_from_pb(
            self._unary(self._train.StartTraining, request, TRAINING_APP).job
        )

    def get_training(self, job_id: str) -> dict[str, Any]:
        return convert.job_from_pb(
            self._unary(
                self._train.GetJob, training_pb2.GetJobRequest(job_id=job_id), TRAINING_APP
            ).job
        )

    def list_trainings(self, state: str | None = None, limit: int = 0) -> list[dict[str, Any]]:
        request = training_pb2.ListJobsRequest(limit=limit, state=convert.job_state_to_pb(state))
        return [
            convert.job_from_pb(j)
            for j in self._unary(self._train.ListJobs, request, TRAINING_APP).jobs
        ]

    def cancel_training(self, job_id: str) -> dict[str, Any]:
        return convert.job_from_pb(
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
                yield convert.event_from_pb(e)
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
                    if is_terminal(event["state"]):
                        break
            except VPLabAPIError as e:
                if e.status not in (502, 503, 504):
                    raise
                failures += 1
                if failures > max_reconnects:
                    raise
            job = self.get_training(job_id)
            if is_terminal(job["state"]):
                return job
            time.sleep(0.2)  # the stream ended early (service restart...): resume shortly
