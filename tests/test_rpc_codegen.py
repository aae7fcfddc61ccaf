"""The generated gRPC stubs (libs/vplab/rpc/v1) are fresh, importable and work over real gRPC."""

from __future__ import annotations

import importlib
import shutil
from concurrent import futures

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor

from vplab.rpc import generate
from vplab.rpc.v1 import (
    common_pb2,
    features_pb2,
    segmentation_pb2,
    segmentation_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)
from vplab.serving.apps import APPS

PB2_MODULES = (common_pb2, features_pb2, segmentation_pb2, training_pb2)


# --- freshness -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh() -> dict[str, str]:
    return generate.render()


def test_committed_stubs_equal_a_fresh_generation(fresh):
    problems = generate.diff(fresh)
    assert not problems, "stale generated stubs, run `make proto`:\n" + "\n".join(problems)


def test_generation_is_deterministic(fresh):
    assert generate.render() == fresh


def test_expected_files_and_rewritten_imports(fresh):
    for stem in ("common", "features", "segmentation", "training"):
        for suffix in generate.GENERATED_SUFFIXES:
            assert f"{stem}{suffix}" in fresh
    assert "__init__.py" in fresh
    for name, text in fresh.items():
        assert text.startswith(generate.HEADER), name
        assert "from vplab.v1 import" not in text, name
    assert "from vplab.rpc.v1 import common_pb2 as" in fresh["segmentation_pb2.py"]
    assert "from vplab.rpc.v1 import common_pb2 as" in fresh["training_pb2.pyi"]
    assert "from vplab.rpc.v1 import features_pb2 as" in fresh["features_pb2_grpc.py"]


def test_check_detects_a_changed_proto(tmp_path, fresh):
    """A modified proto (in a temp copy) renders differently, and --check's diff reports it."""
    proto_copy = tmp_path / "proto"
    shutil.copytree(generate.PROTO_ROOT, proto_copy)
    features = proto_copy / "vplab" / "v1" / "features.proto"
    features.write_text(
        features.read_text().replace(
            "  string encoder = 2;\n}\n\nmessage EmbedResponse",
            "  string encoder = 2;\n  bool force = 3;\n}\n\nmessage EmbedResponse",
            1,
        )
    )
    changed = generate.render(proto_copy)
    differing = sorted(n for n in fresh if changed.get(n) != fresh[n])
    assert "features_pb2.py" in differing and "features_pb2.pyi" in differing
    assert "common_pb2.py" not in differing

    # The committed tree, compared with the changed protos' output: stale.
    problems = generate.diff(changed)
    assert any(p.startswith("stale:") and p.endswith("features_pb2.py") for p in problems)

    # write() into a scratch dir produces a tree --check accepts; deleting one file -> missing;
    # an orphaned generated file -> extra (and write() removes it).
    out = tmp_path / "v1"
    generate.write(changed, out)
    assert generate.diff(changed, out) == []
    (out / "training_pb2_grpc.py").unlink()
    (out / "gone_pb2.py").write_text("x")
    problems = generate.diff(changed, out)
    assert any(p.startswith("missing:") and "training_pb2_grpc.py" in p for p in problems)
    assert any(p.startswith("extra:") and "gone_pb2.py" in p for p in problems)
    generate.write(changed, out)
    assert generate.diff(changed, out) == []


def test_check_cli_exit_code(capsys):
    assert generate.main(["--check"]) == 0
    assert "up to date" in capsys.readouterr().out


# --- the contract with the serving layer -----------------------------------------------------


@pytest.mark.parametrize("app", APPS, ids=lambda a: a.name)
def test_servicer_functions_import(app):
    module_name, _, func_name = app.servicer.rpartition(".")
    func = getattr(importlib.import_module(module_name), func_name)
    assert callable(func)


def _all_messages():
    def walk(desc):
        yield desc
        for nested in desc.nested_types:
            yield from walk(nested)

    for mod in PB2_MODULES:
        for desc in mod.DESCRIPTOR.message_types_by_name.values():
            yield from walk(desc)


def test_no_tenant_and_no_bytes_in_messages():
    """Tenant comes from the API key; large payloads go through the object store."""
    for desc in _all_messages():
        for field in desc.fields:
            assert "tenant" not in field.name, f"{desc.full_name}.{field.name}"
            assert field.type != FieldDescriptor.TYPE_BYTES, f"{desc.full_name}.{field.name}"


def test_services_and_streaming_shape():
    def methods(mod, service):
        svc = mod.DESCRIPTOR.services_by_name[service]
        return {
            m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in svc.methods
        }

    assert methods(features_pb2, "Features") == {
        "Embed": ("EmbedRequest", "EmbedResponse", False),
        "EmbedBatch": ("EmbedBatchRequest", "EmbedBatchResponse", False),
    }
    assert methods(segmentation_pb2, "Segmentation") == {
        "SegmentPrompt": ("SegmentPromptRequest", "SegmentPromptResponse", False),
        "VisualPrompt": ("VisualPromptRequest", "VisualPromptResponse", True),
        "AutoSegment": ("AutoSegmentRequest", "AutoSegmentResponse", False),
    }
    assert methods(training_pb2, "Training") == {
        "StartTraining": ("StartTrainingRequest", "StartTrainingResponse", False),
        "GetJob": ("GetJobRequest", "GetJobResponse", False),
        "WatchJob": ("WatchJobRequest", "JobEvent", True),
        "CancelJob": ("CancelJobRequest", "CancelJobResponse", False),
        "ListJobs": ("ListJobsRequest", "ListJobsResponse", False),
    }
    assert [v.name for v in common_pb2.JobState.DESCRIPTOR.values] == [
        "JOB_STATE_UNSPECIFIED",
        "QUEUED",
        "RUNNING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
    ]


# --- messages --------------------------------------------------------------------------------


def _roundtrip(msg):
    data = msg.SerializeToString(deterministic=True)
    back = type(msg).FromString(data)
    assert back == msg
    return back


def test_messages_roundtrip():
    req = segmentation_pb2.SegmentPromptRequest(
        image_id="a" * 64,
        points=[common_pb2.Point(x=10.5, y=20.0, label=1), common_pb2.Point(x=1, y=2, label=0)],
        box=common_pb2.Box(x0=1, y0=2, x1=30, y1=40),
        multimask_output=True,
    )
    back = _roundtrip(req)
    assert back.HasField("box") and not back.HasField("mask_input")
    assert [p.label for p in back.points] == [1, 0]
    assert not segmentation_pb2.SegmentPromptRequest(image_id="x").HasField("box")

    _roundtrip(
        segmentation_pb2.VisualPromptRequest(
            references=[
                segmentation_pb2.Reference(
                    image_id="b" * 64, mask=common_pb2.RleMask(height=4, width=5, counts="04L0")
                )
            ],
            target_image_ids=["c" * 64, "d" * 64],
            matcher="prototype",
            seed=7,
        )
    )
    _roundtrip(
        features_pb2.EmbedBatchResponse(
            results=[
                features_pb2.EmbedResponse(
                    image_id="e" * 64,
                    encoder_id="sam-vit_b",
                    cache_key="k",
                    cache_hit=True,
                    shape=[256, 64, 64],
                    dtype="bfloat16",
                    original_height=480,
                    original_width=640,
                )
            ]
        )
    )
    job = training_pb2.Job(
        job_id="j1",
        dataset_id="ds",
        method="epeft",
        state=common_pb2.SUCCEEDED,
        step=10,
        total_steps=10,
        best_val_iou=0.75,
        model_id="m1",
        attempts=2,
    )
    jobs = _roundtrip(training_pb2.ListJobsResponse(jobs=[job])).jobs
    assert jobs[0].state == common_pb2.SUCCEEDED
    _roundtrip(training_pb2.JobEvent(seq=2**40, job_id="j1", state=common_pb2.RUNNING, loss=0.5))
    assert common_pb2.JobState.Name(common_pb2.CANCELLED) == "CANCELLED"


# --- real gRPC (no Ray) ----------------------------------------------------------------------


class _Segmentation(segmentation_pb2_grpc.SegmentationServicer):
    def SegmentPrompt(self, request, context):
        meta = dict(context.invocation_metadata())
        if meta.get("authorization") != "Bearer k":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad key")
        n = 3 if request.multimask_output else 1
        return segmentation_pb2.SegmentPromptResponse(
            masks=[
                common_pb2.MaskResult(
                    mask=common_pb2.RleMask(height=8, width=9, counts=request.image_id),
                    score=1.0 - i / 10,
                )
                for i in range(n)
            ],
            height=8,
            width=9,
        )

    def VisualPrompt(self, request, context):
        for i, target in enumerate(request.target_image_ids):
            yield segmentation_pb2.VisualPromptResponse(
                index=i, image_id=target, score=0.5, points=[common_pb2.Point(x=i, y=i, label=1)]
            )


class _Training(training_pb2_grpc.TrainingServicer):
    def WatchJob(self, request, context):
        for seq in range(request.after_seq + 1, 4):
            yield training_pb2.JobEvent(seq=seq, job_id=request.job_id, state=common_pb2.RUNNING)


@pytest.fixture
def grpc_channel():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    segmentation_pb2_grpc.add_SegmentationServicer_to_server(_Segmentation(), server)
    training_pb2_grpc.add_TrainingServicer_to_server(_Training(), server)
    port = server.add_insecure_port("127.0.0.1:0")  # 0: the OS picks a free port
    assert port > 0
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        server.stop(grace=None)


def test_stubs_over_real_grpc(grpc_channel):
    seg = segmentation_pb2_grpc.SegmentationStub(grpc_channel)
    md = (("authorization", "Bearer k"),)

    # unary
    resp = seg.SegmentPrompt(
        segmentation_pb2.SegmentPromptRequest(image_id="abc", multimask_output=True),
        metadata=md,
        timeout=10,
    )
    assert (resp.height, resp.width) == (8, 9)
    assert [m.mask.counts for m in resp.masks] == ["abc"] * 3
    assert resp.masks[0].score == pytest.approx(1.0)

    with pytest.raises(grpc.RpcError) as err:
        seg.SegmentPrompt(segmentation_pb2.SegmentPromptRequest(image_id="abc"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    # server streaming
    targets = ["t0", "t1", "t2"]
    got = list(
        seg.VisualPrompt(segmentation_pb2.VisualPromptRequest(target_image_ids=targets), timeout=10)
    )
    assert [(r.index, r.image_id) for r in got] == list(enumerate(targets))
    assert got[2].points[0].x == 2

    events = list(
        training_pb2_grpc.TrainingStub(grpc_channel).WatchJob(
            training_pb2.WatchJobRequest(job_id="j", after_seq=1), timeout=10
        )
    )
    assert [e.seq for e in events] == [2, 3]

    # an RPC the servicer does not implement: the generated base class answers UNIMPLEMENTED
    with pytest.raises(grpc.RpcError) as err:
        seg.AutoSegment(segmentation_pb2.AutoSegmentRequest(image_id="x", model_id="m"), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_messages_pickle_under_their_real_module():
    """Ray Serve pickles request messages between proxy and replica: the class's
    __module__ must be importable (protoc would name it vplab.v1.*)."""
    import pickle

    from vplab.rpc.v1 import features_pb2, segmentation_pb2, training_pb2

    for msg in (
        features_pb2.EmbedRequest(image_id="a" * 64),
        segmentation_pb2.AutoSegmentRequest(model_id="m"),
        training_pb2.JobEvent(seq=3),
    ):
        assert type(msg).__module__.startswith("vplab.rpc.v1.")
        assert pickle.loads(pickle.dumps(msg)) == msg
