"""The ``vplab`` command, run as a new user would (subcommands in-process via main())."""

import json

import numpy as np
import pytest
import torch

from vplab.cli import main
from vplab.images import read_image
from vplab.masks import read_binary_mask


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    assert main(["demo-data", str(d), "--n", "4", "--size", "96"]) == 0
    return d


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in (
        "segment",
        "visual-prompt",
        "demo-data",
        "train",
        "predict",
        "export",
        "peft",
        "up",
        "down",
        "tenants",
        "gateway",
    ):
        assert cmd in out


def test_demo_data_layout(demo):
    images = sorted((demo / "images").glob("*.png"))
    masks = sorted((demo / "masks").glob("*.png"))
    assert (
        [p.name for p in images] == [p.name for p in masks] == [f"img_00{i}.png" for i in range(4)]
    )
    assert read_image(images[0]).shape == (96, 96, 3)
    assert read_binary_mask(masks[0]).any()


def test_segment_writes_a_mask(demo, tmp_path, capsys):
    out = tmp_path / "m.png"
    assert (
        main(
            [
                "segment",
                str(demo / "images/img_000.png"),
                "--points",
                "40,40",
                "10,10,0",
                "--box",
                "5,5,90,90",
                "--out",
                str(out),
                "--demo",
            ]
        )
        == 0
    )
    assert read_binary_mask(out).shape == (96, 96)
    assert "predicted IoU" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--points", "500,500"], "outside"),
        (["--points", "1,2,7"], "label"),
        (["--points", "a,b"], "comma-separated numbers"),
        ([], "at least one"),
    ],
)
def test_segment_bad_input_is_a_clear_error_and_writes_nothing(
    demo, tmp_path, capsys, argv, message
):
    out = tmp_path / "m.png"
    rc = main(["segment", str(demo / "images/img_000.png"), *argv, "--out", str(out), "--demo"])
    assert rc == 2 and not out.exists()
    assert message in capsys.readouterr().err


def test_segment_rejects_a_corrupt_image(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    assert (
        main(["segment", str(bad), "--points", "1,1", "--out", str(tmp_path / "o.png"), "--demo"])
        == 2
    )
    assert "not a readable image" in capsys.readouterr().err


def test_segment_needs_a_checkpoint_or_demo(demo, tmp_path, capsys):
    assert (
        main(
            [
                "segment",
                str(demo / "images/img_000.png"),
                "--points",
                "1,1",
                "--out",
                str(tmp_path / "o.png"),
            ]
        )
        == 2
    )
    assert "--sam CHECKPOINT" in capsys.readouterr().err


def test_visual_prompt_folder(demo, tmp_path):
    out = tmp_path / "vp"
    assert (
        main(
            [
                "visual-prompt",
                "--demo",
                "--ref",
                str(demo / "images/img_000.png"),
                "--ref-mask",
                str(demo / "masks/img_000.png"),
                "--targets",
                str(demo / "images"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.glob("*.png")) == [f"img_00{i}.png" for i in range(4)]


def test_evaluate_scores_visual_prompting_output_against_the_masks(demo, tmp_path, capsys):
    from vplab.masks import iou

    out = tmp_path / "vp"
    ref = ["--ref", str(demo / "images/img_000.png"), "--ref-mask", str(demo / "masks/img_000.png")]
    assert (
        main(
            ["visual-prompt", "--demo", *ref, "--targets", str(demo / "images"), "--out", str(out)]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(out), "--gt", str(demo / "masks"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["n_images"] == 4 and set(report["per_class"]) == {"1"}
    # Per image: the binary IoU of the files, computed independently.
    for row in report["per_image"]:
        pred = read_binary_mask((out / f"{row['image_id']}.png").read_bytes())
        gt = read_binary_mask((demo / f"masks/{row['image_id']}.png").read_bytes())
        assert row["iou"] == pytest.approx(iou(pred, gt))
    # The masks against themselves: perfect.
    assert (
        main(["evaluate", "--pred", str(demo / "masks"), "--gt", str(demo / "masks"), "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip())["miou"] == 1.0
    # A missing prediction is a clear error, not a score.
    (out / "img_003.png").unlink()
    assert main(["evaluate", "--pred", str(out), "--gt", str(demo / "masks")]) != 0
    assert "img_003" in capsys.readouterr().err


def test_visual_prompt_rejects_empty_reference_mask(demo, tmp_path, capsys):
    from vplab.images import encode_png

    empty = tmp_path / "empty.png"
    empty.write_bytes(encode_png(np.zeros((96, 96), np.uint8)))
    out = tmp_path / "vp"
    assert (
        main(
            [
                "visual-prompt",
                "--demo",
                "--ref",
                str(demo / "images/img_000.png"),
                "--ref-mask",
                str(empty),
                "--targets",
                str(demo / "images"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "is empty" in capsys.readouterr().err and not out.exists()


def test_peft_describe_prints_exact_counts(capsys):
    assert main(["peft", "describe", "--method", "cellseg1", "--base", "sam_vit_b"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "trainable_params: 171008"
    assert main(["peft", "describe", "--method", "ptsam-md", "--base", "sam_vit_b"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "trainable_params: 2048"
    # the per-method recipe (#12): PTSAM's paper learning rate, not one recipe for all
    assert {"recipe.lr: 0.05", "recipe.steps: 400", "recipe.output: token0"} <= set(lines)
    assert main(["peft", "describe", "--method", "nope"]) == 2
    assert "unknown PEFT method" in capsys.readouterr().err


def test_train_predict_export_loop(demo, tmp_path):
    adapter = tmp_path / "adapter"
    assert (
        main(
            [
                "train",
                "--demo",
                "--method",
                "epeft",
                "--images",
                str(demo / "images"),
                "--labels",
                str(demo / "masks"),
                "--out",
                str(adapter),
                "--steps",
                "6",
                "--eval-every",
                "3",
                "--views",
                "2",
            ]
        )
        == 0
    )
    config = json.loads((adapter / "config.json").read_text())
    assert config["method"] == "epeft" and config["base"]["name"] == "sam_mini"
    assert not any(p.name.endswith(".checkpoints") for p in tmp_path.iterdir())  # cleaned up

    pred = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--demo",
                "--adapter",
                str(adapter),
                "--images",
                str(demo / "images"),
                "--out",
                str(pred),
                "--ref",
                str(demo / "images/img_000.png"),
                "--ref-mask",
                str(demo / "masks/img_000.png"),
            ]
        )
        == 0
    )
    assert len(list(pred.glob("*.png"))) == 4

    copy = tmp_path / "exported"
    assert main(["export", "--adapter", str(adapter), "--out", str(copy)]) == 0
    assert (copy / "adapter.safetensors").read_bytes() == (
        adapter / "adapter.safetensors"
    ).read_bytes()


def test_ptsam_predict_is_prompt_free(demo, tmp_path):
    adapter = tmp_path / "pt"
    assert (
        main(
            [
                "train",
                "--demo",
                "--method",
                "ptsam-md",
                "--images",
                str(demo / "images"),
                "--labels",
                str(demo / "masks"),
                "--out",
                str(adapter),
                "--steps",
                "3",
                "--eval-every",
                "3",
                "--views",
                "1",
            ]
        )
        == 0
    )
    pred = tmp_path / "pred"
    assert (
        main(
            [
                "predict",
                "--adapter",
                str(adapter),
                "--images",
                str(demo / "images"),
                "--out",
                str(pred),
            ]
        )
        == 0
    )
    assert len(list(pred.glob("*.png"))) == 4


def test_export_merge_reproduces_the_tuned_model(demo, tmp_path):
    from vplab.models import build_sam
    from vplab.models.base import resolve_base_sam
    from vplab.peft.adapter_io import load_adapter

    adapter = tmp_path / "lora"
    assert (
        main(
            [
                "train",
                "--demo",
                "--method",
                "lora",
                "--config",
                '{"r": 4}',
                "--images",
                str(demo / "images"),
                "--labels",
                str(demo / "masks"),
                "--out",
                str(adapter),
                "--steps",
                "3",
                "--eval-every",
                "3",
                "--views",
                "1",
                "--lr",
                "0.01",
            ]
        )
        == 0
    )
    merged = tmp_path / "merged.pth"
    assert main(["export", "--adapter", str(adapter), "--merge", "--out", str(merged)]) == 0
    plain = build_sam("sam_mini", random_init=True)  # --demo trains on the embedded sam_mini
    plain.load_state_dict(torch.load(merged, weights_only=True), strict=True)
    base = resolve_base_sam("sam_mini")
    tuned, _ = load_adapter(adapter, base.build(), base.sha256)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.allclose(plain.image_encoder(x), tuned.image_encoder(x), atol=1e-4)


def test_export_merge_refuses_non_delta_methods(demo, tmp_path, capsys):
    adapter = tmp_path / "ep"
    assert (
        main(
            [
                "train",
                "--demo",
                "--method",
                "epeft",
                "--images",
                str(demo / "images"),
                "--labels",
                str(demo / "masks"),
                "--out",
                str(adapter),
                "--steps",
                "2",
                "--eval-every",
                "2",
                "--views",
                "1",
            ]
        )
        == 0
    )
    out = tmp_path / "m.pth"
    assert main(["export", "--adapter", str(adapter), "--merge", "--out", str(out)]) == 2
    assert "cannot be merged" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--method", "nope"], "unknown PEFT method"),
        (["--steps", "0"], "steps must be > 0"),
        (["--labels", "/nonexistent"], "does not exist"),
    ],
)
def test_train_bad_input_writes_nothing(demo, tmp_path, capsys, argv, message):
    out = tmp_path / "adapter"
    base = [
        "train",
        "--demo",
        "--images",
        str(demo / "images"),
        "--labels",
        str(demo / "masks"),
        "--out",
        str(out),
    ]
    assert main(base + argv) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_train_rejects_labels_that_do_not_match_images(demo, tmp_path, capsys):
    from vplab.images import encode_png

    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "img_000.png").write_bytes(encode_png(np.ones((10, 10), np.uint8) * 255))
    out = tmp_path / "adapter"
    assert (
        main(
            [
                "train",
                "--demo",
                "--images",
                str(demo / "images"),
                "--labels",
                str(labels),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "but the image is" in capsys.readouterr().err and not out.exists()


def test_tenants_create_prints_a_key_that_authenticates(tmp_path, monkeypatch, capsys):
    from vplab.settings import Settings, get_settings
    from vplab.storage import open_store
    from vplab.tenancy import Authenticator

    monkeypatch.setenv("VPLAB_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        assert main(["tenants", "create", "Acme Labs"]) == 0
        out = capsys.readouterr().out
        key = next(
            line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("api_key:")
        )
        store = open_store(Settings(data_dir=tmp_path))
        assert (
            Authenticator(store, Settings().api_key_pepper).authenticate(f"Bearer {key}").name
            == "Acme Labs"
        )
        everything = b"".join(store.get_bytes(k) for k in store.list(""))
        assert key.encode() not in everything  # only a hash is stored
        assert main(["tenants", "list"]) == 0 and "Acme Labs" in capsys.readouterr().out
        assert main(["tenants", "create", "Acme Labs"]) == 2  # same id: a clear error
    finally:
        get_settings.cache_clear()


def test_gateway_keeps_idle_connections_longer_than_clients_do(monkeypatch, capsys):
    """uvicorn's 5 s keep-alive equals httpx's pool expiry: a client may reuse a connection
    the server is closing (ReadError under load). The gateway keeps them 75 s unless told."""
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: calls.append(kw))
    assert main(["gateway", "--port", "18080"]) == 0
    assert calls[-1]["timeout_keep_alive"] == 75.0 and calls[-1]["port"] == 18080
    assert main(["gateway", "--timeout-keep-alive", "2.5"]) == 0
    assert calls[-1]["timeout_keep_alive"] == 2.5
    assert main(["gateway", "--timeout-keep-alive", "0"]) != 0
    assert "--timeout-keep-alive must be > 0" in capsys.readouterr().err
    assert len(calls) == 2  # the bad value started nothing
