"""Gateway routes with their dependencies overridden (no gRPC, no server): the tenant,
the upstream services and the store are swapped through ``app.dependency_overrides``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.gateway import deps
from services.gateway.main import create_app
from vplab.images import encode_png
from vplab.masks import encode_rle
from vplab.rpc import convert
from vplab.rpc.v1 import common_pb2, segmentation_pb2, training_pb2
from vplab.settings import Settings
from vplab.storage import LocalStore


class FakeCall:
    """A server-streaming call: async-iterable, cancellable."""

    def __init__(self, items):
        self.items, self.cancelled = list(items), False

    def __aiter__(self):
        async def gen():
            for item in self.items:
                yield item

        return gen()

    def cancel(self):
        self.cancelled = True


class FakeUpstream:
    def __init__(self):
        self.calls: list[tuple[str, str, object, str | None]] = []
        self.counted: list[tuple[str, str, bool]] = []
        self.unary_replies: dict[str, object] = {}
        self.streams: dict[str, FakeCall] = {}

    async def unary(self, app, method, request, authorization, model_id=None):
        self.calls.append((app, method, request, model_id))
        return self.unary_replies[method]

    def stream(self, app, method, request, authorization, model_id=None, deadline=True):
        self.calls.append((app, method, request, model_id))
        return self.streams[method]

    def count(self, app, method, error=None):
        self.counted.append((app, method, error is None))


@pytest.fixture()
def gw(tmp_path):
    settings = Settings(data_dir=tmp_path, api_key_pepper="p", s3_endpoint=None)
    app = create_app(settings, store=LocalStore(tmp_path / "store"))
    up = FakeUpstream()
    app.dependency_overrides[deps.get_tenant] = lambda: "t1"
    app.dependency_overrides[deps.get_upstream] = lambda: up
    with TestClient(app) as client:
        yield client, up, app.state.datasets


def _png(seed: int) -> bytes:
    return encode_png(np.random.default_rng(seed).integers(0, 255, (8, 10, 3), np.uint8))


def test_segment_builds_the_request_and_converts_the_reply(gw):
    client, up, _ = gw
    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:7] = True
    rle = encode_rle(mask)
    up.unary_replies["SegmentPrompt"] = segmentation_pb2.SegmentPromptResponse(
        masks=convert.mask_results_to_pb([(rle, 0.91)]), height=8, width=10
    )
    image_id = "a" * 64
    r = client.post(
        f"/v1/images/{image_id}/segment",
        json={"points": [[4, 3]], "labels": [1], "box": [1, 1, 8, 6], "model_id": "m-1"},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"masks": [{"rle": rle, "score": 0.91}], "height": 8, "width": 10}
    app_name, method, request, model_id = up.calls[-1]
    assert (app_name, method, model_id) == ("segmentation", "SegmentPrompt", "m-1")
    assert convert.segment_request_from_pb(request) == (
        [(4.0, 3.0, 1)],
        (1.0, 1.0, 8.0, 6.0),
        None,
        False,
    )
    png = client.post(
        f"/v1/images/{image_id}/segment?format=png", json={"points": [[4, 3]], "labels": [1]}
    )
    assert png.headers["content-type"] == "image/png"


def test_visual_prompt_resolves_targets_in_the_dataset_and_streams(gw):
    client, up, datasets = gw
    ds = datasets.create_dataset("t1", "d").id
    ids = [datasets.add_image("t1", ds, _png(i)) for i in range(3)]
    outsider = datasets.add_image("t1", datasets.create_dataset("t1", "o").id, _png(9))
    rle = encode_rle(np.ones((8, 10), bool))
    body = {"references": [{"image_id": ids[0], "mask_rle": rle}]}
    # A target outside the dataset: 404 before any call upstream.
    r = client.post(f"/v1/datasets/{ds}/visual-prompt", json={**body, "targets": [outsider]})
    assert r.status_code == 404 and not up.calls
    results = [
        convert.visual_prompt_result_to_pb(k, i, rle, 0.5, [(1.0, 2.0, 1)])
        for k, i in reversed(list(enumerate(sorted(ids[1:]))))
    ]
    up.streams["VisualPrompt"] = FakeCall(results)
    r = client.post(f"/v1/datasets/{ds}/visual-prompt", json=body)
    assert r.status_code == 200, r.text
    assert [x["index"] for x in r.json()["results"]] == [0, 1]  # sorted by index
    request = up.calls[-1][2]
    assert request.dataset_id == ds and sorted(request.target_image_ids) == sorted(ids[1:])
    # SSE: one `result` per target in arrival order, then `end` with the total.
    up.streams["VisualPrompt"] = call = FakeCall(results)
    with client.stream(
        "POST",
        f"/v1/datasets/{ds}/visual-prompt",
        json=body,
        headers={"Accept": "text/event-stream"},
    ) as s:
        text = "".join(s.iter_text())
    events = [block for block in text.split("\n\n") if block.startswith("id:") or "event:" in block]
    names = [
        line.split(": ", 1)[1]
        for b in events
        for line in b.splitlines()
        if line.startswith("event:")
    ]
    assert names == ["result", "result", "end"]
    assert json.loads(events[-1].split("data: ", 1)[1]) == {"count": 2, "total": 2}
    assert call.cancelled and up.counted[-1] == ("segmentation", "VisualPrompt", True)


def test_training_events_end_at_the_terminal_state(gw):
    client, up, _ = gw
    job = training_pb2.Job(job_id="j-1", state=common_pb2.RUNNING)
    up.unary_replies["GetJob"] = training_pb2.GetJobResponse(job=job)
    events = [
        convert.event_to_pb(
            {"seq": 1, "job_id": "j-1", "state": "RUNNING", "step": 1, "loss": 0.5}
        ),
        convert.event_to_pb({"seq": 2, "job_id": "j-1", "state": "SUCCEEDED", "model_id": "m-1"}),
        convert.event_to_pb({"seq": 3, "job_id": "j-1", "state": "SUCCEEDED"}),  # never relayed
    ]
    up.streams["WatchJob"] = FakeCall(events)
    with client.stream("GET", "/v1/trainings/j-1/events", headers={"Last-Event-ID": "0"}) as s:
        text = "".join(s.iter_text())
    assert "id: 1\nevent: progress" in text and "id: 2\nevent: end" in text and "id: 3" not in text
    assert client.get("/v1/trainings/j-1/events", headers={"Last-Event-ID": "x"}).status_code == 400


def test_unknown_state_filter_and_bad_ids_are_400_without_a_call(gw):
    client, up, _ = gw
    assert client.get("/v1/trainings?state=DONE").status_code == 400
    assert client.get("/v1/trainings/J_BAD").status_code == 400
    assert (
        client.post("/v1/trainings", json={"dataset_id": "d", "method": "nope"}).status_code == 400
    )
    assert client.post("/v1/trainings", json={"dataset_id": "d", "seed": True}).status_code == 400
    assert up.calls == []
