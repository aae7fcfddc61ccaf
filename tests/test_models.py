"""vplab.models: SAM / DINOv2 construction, checkpoint loading and its errors, patch features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import sam_model_registry

from vplab.errors import CheckpointError, InvalidInput, Unavailable
from vplab.models import (
    DINOV2_NAMES,
    SAM_NAMES,
    build_dinov2,
    build_sam,
    extract_patch_features,
    extract_patch_features_batch,
    file_sha256,
    load_state_dict_file,
    resolve_device,
    sam_config,
)


@pytest.fixture(scope="module")
def vit_b_file(tmp_path_factory):
    """An official-shape ViT-B checkpoint (random weights, plain state dict like
    sam_vit_b_01ec64.pth), built with segment_anything's own builder. ~375 MB, once."""
    torch.manual_seed(1)
    sam = sam_model_registry["vit_b"]()
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_01ec64.pth"
    torch.save(sam.state_dict(), path)
    probe = {
        k: sam.state_dict()[k].clone()
        for k in (
            "image_encoder.pos_embed",
            "image_encoder.blocks.11.attn.rel_pos_h",
            "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
            "mask_decoder.iou_prediction_head.layers.2.weight",
        )
    }
    del sam
    return path, probe


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "sam_tiny.pth"
    torch.save(build_sam("sam_tiny").state_dict(), path)
    return path


# --- SAM --------------------------------------------------------------------------------


def test_names_and_configs():
    assert set(SAM_NAMES) == {"vit_b", "vit_l", "vit_h", "sam_tiny", "sam_mini"}
    assert sam_config("vit_b").encoder_global_attn_indexes == (2, 5, 8, 11)
    assert sam_config("vit_b").low_res_size == 256
    tiny = sam_config("sam_tiny")
    # the 16x16 grid is not a multiple of the window: windowed attention pads it.
    assert tiny.grid_size % tiny.window_size != 0
    with pytest.raises(InvalidInput, match="unknown SAM model"):
        sam_config("vit_x")


def test_vit_b_loads_strictly(vit_b_file):
    path, probe = vit_b_file
    sam = build_sam("vit_b", checkpoint=path)
    state = sam.state_dict()
    for k, v in probe.items():
        assert torch.equal(state[k], v), k
    assert not any(t.is_meta for t in [*sam.parameters(), *sam.buffers()])
    assert sam.pixel_mean.flatten().tolist() == pytest.approx([123.675, 116.28, 103.53])
    assert all(p.requires_grad for p in sam.parameters())  # freezing is the trainer's call
    assert not sam.training


def test_vit_b_sha256_ok_and_mismatch(vit_b_file):
    path, probe = vit_b_file
    digest = file_sha256(path)
    sam = build_sam("vit_b", checkpoint=str(path), sha256=digest)
    assert torch.equal(sam.image_encoder.pos_embed, probe["image_encoder.pos_embed"])
    with pytest.raises(CheckpointError) as e:
        build_sam("vit_b", checkpoint=path, sha256="0" * 64)
    assert str(path) in e.value.message and "sha256 mismatch" in e.value.message
    assert digest in e.value.message  # the actual digest is reported


def test_wrong_model_names_file_and_model(vit_b_file):
    path, _ = vit_b_file
    with pytest.raises(CheckpointError) as e:
        build_sam("vit_l", checkpoint=path)
    msg = e.value.message
    assert str(path) in msg and "'vit_l'" in msg
    assert "missing keys" in msg and "image_encoder.blocks.12" in msg
    assert "shape mismatches" in msg and "(768" in msg


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match=r"nope\.pth: file not found"):
        build_sam("sam_tiny", checkpoint=missing)
    with pytest.raises(CheckpointError, match="file not found"):
        load_state_dict_file(missing)


def test_truncated_and_corrupt_file(tiny_file, tmp_path):
    data = tiny_file.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        build_sam("sam_tiny", checkpoint=truncated)
    assert "truncated.pth" in e.value.message and "truncated" in e.value.message
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match=r"garbage\.pth: cannot be read"):
        load_state_dict_file(garbage)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_state_dict_file(empty)


def test_not_a_state_dict(tmp_path):
    a_list = tmp_path / "list.pth"
    torch.save([1, 2, 3], a_list)
    with pytest.raises(CheckpointError, match=r"list\.pth: not a state dict"):
        load_state_dict_file(a_list)
    mixed = tmp_path / "mixed.pth"
    torch.save({"w": torch.zeros(2), "epoch": 3}, mixed)
    with pytest.raises(CheckpointError, match=r"mixed\.pth: not a state dict"):
        load_state_dict_file(mixed)


def test_wrapped_state_dicts_are_accepted(tmp_path):
    state = build_sam("sam_tiny").state_dict()
    for wrapper in ("model", "state_dict"):
        path = tmp_path / f"{wrapper}.pth"
        torch.save({wrapper: state, "epoch": 7}, path)
        sam = build_sam("sam_tiny", checkpoint=path)
        assert torch.equal(
            sam.mask_decoder.iou_token.weight, state["mask_decoder.iou_token.weight"]
        )


def test_tiny_state_into_vit_b_is_rejected(tiny_file):
    with pytest.raises(CheckpointError, match=r"does not fit model 'vit_b'.*shape mismatches"):
        build_sam("vit_b", checkpoint=tiny_file)


def test_sam_tiny_is_deterministic_and_keeps_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_sam("sam_tiny")
    after = torch.rand(1)
    assert torch.equal(before, after)  # building did not consume the caller's RNG
    b = build_sam("sam_tiny")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    c = build_sam("sam_tiny", seed=1)
    assert not torch.equal(a.image_encoder.pos_embed, c.image_encoder.pos_embed)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert a.image_encoder(x).shape == (1, 256, 16, 16)


def test_decoder_upscaling_is_channels_last_and_unchanged_in_value(tiny_file):
    """build_sam stores the two upscaling convs channels-last (the layout of their input);
    the outputs equal those of SAM's default layout, and loaded checkpoints get it too."""
    import copy

    from vplab.segmentation.predictor import decode_torch

    for sam in (build_sam("sam_tiny"), build_sam("sam_tiny", checkpoint=tiny_file)):
        ups = [sam.mask_decoder.output_upscaling[i].weight for i in (0, 3)]
        assert all(
            w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
            for w in ups
        )
    plain = copy.deepcopy(sam)
    plain.mask_decoder.output_upscaling.to(memory_format=torch.contiguous_format)
    assert plain.mask_decoder.output_upscaling[0].weight.is_contiguous()
    assert list(plain.state_dict()) == list(sam.state_dict())
    torch.manual_seed(0)
    emb = torch.randn(1, 256, 16, 16)
    coords, labels = torch.tensor([[[100.0, 80.0], [30.0, 200.0]]]), torch.tensor([[1, 0]])
    with torch.no_grad():
        out, iou = decode_torch(sam, emb, coords, labels)
        ref, ref_iou = decode_torch(plain, emb, coords, labels)
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(iou, ref_iou, atol=1e-6)


def test_checkpoint_from_store_key(tiny_file, tmp_path):
    from vplab.storage import LocalStore

    store = LocalStore(tmp_path / "store")
    digest = file_sha256(tiny_file)
    key = f"base-models/sam_tiny/{digest}.pth"
    store.put_file(key, tiny_file)
    cache = tmp_path / "cache"
    sam = build_sam("sam_tiny", checkpoint=key, store=store, cache_dir=cache)
    expected = torch.load(tiny_file, weights_only=True)
    assert torch.equal(sam.image_encoder.pos_embed, expected["image_encoder.pos_embed"])
    cached = cache / key
    assert cached.is_file()
    # A corrupted cache entry is detected by the digest in the key and fetched again.
    cached.write_bytes(b"junk")
    build_sam("sam_tiny", checkpoint=key, store=store, cache_dir=cache)
    assert file_sha256(cached) == digest
    # A wrong upload under a digest key never reaches the cache.
    bad_key = f"base-models/sam_tiny/{'a' * 64}.pth"
    store.put_file(bad_key, tiny_file)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        build_sam("sam_tiny", checkpoint=bad_key, store=store, cache_dir=cache)
    assert not (cache / bad_key).exists()
    with pytest.raises(CheckpointError, match="not found in the object store"):
        build_sam(
            "sam_tiny",
            checkpoint=f"base-models/sam_tiny/{'b' * 64}.pth",
            store=store,
            cache_dir=cache,
        )


# --- DINOv2 -----------------------------------------------------------------------------


def _timm_to_meta(state: dict[str, torch.Tensor], dim: int) -> dict[str, torch.Tensor]:
    """Invert timm's DINOv2 conversion for a non-SwiGLU model: Meta's
    dinov2_vits14_pretrain.pth has the same key names plus ``mask_token``
    (and SwiGLU ``mlp.w12``/``mlp.w3`` for giant, which timm calls fc1/fc2)."""
    meta = {k: v.clone() for k, v in state.items()}
    meta["mask_token"] = torch.zeros(1, dim)
    return meta


def test_dinov2_meta_format_loads_strictly(tmp_path):
    assert "vit_small_patch14_dinov2" in DINOV2_NAMES
    torch.manual_seed(5)
    reference = build_dinov2("vit_small_patch14_dinov2", seed=5)
    state = reference.state_dict()
    meta = _timm_to_meta(state, 384)
    assert meta["pos_embed"].shape == (1, 1370, 384)  # 518 / 14 = 37, 37*37 + CLS
    assert "blocks.0.ls1.gamma" in meta
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(meta, path)
    loaded = build_dinov2("vit_small_patch14_dinov2", checkpoint=path, sha256=file_sha256(path))
    for k, v in state.items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # the timm-format state dict loads too
    timm_path = tmp_path / "timm.pth"
    torch.save(state, timm_path)
    build_dinov2("vit_small_patch14_dinov2", checkpoint=timm_path)


def test_dinov2_wrong_checkpoint(tmp_path):
    path = tmp_path / "tiny_dino.pth"
    torch.save(build_dinov2("dinov2_tiny").state_dict(), path)
    with pytest.raises(
        CheckpointError, match=r"tiny_dino.pth does not fit model 'vit_small_patch14_dinov2'"
    ):
        build_dinov2("vit_small_patch14_dinov2", checkpoint=path)
    with pytest.raises(InvalidInput, match="unknown DINOv2"):
        build_dinov2("vit_tiny_patch16_224")


def test_dinov2_tiny_is_deterministic():
    a, b = build_dinov2("dinov2_tiny"), build_dinov2("dinov2_tiny")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


def test_patch_features_non_square():
    model = build_dinov2("dinov2_tiny")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 120, 3), dtype=np.uint8)  # wide: pad at the bottom
    pf = extract_patch_features(model, image, size=224)  # 16 x 14
    assert pf.features.shape == (16, 16, 48) and pf.features.dtype == torch.float32
    assert pf.original_size == (50, 120)
    assert pf.input_size == (int(50 * 224 / 120 + 0.5), 224) == (93, 224)
    rows = -(-93 // 14)  # 7: the 7th row is part image, part padding
    assert pf.valid.shape == (16, 16) and pf.valid.dtype == torch.bool
    assert pf.valid[:rows].all() and not pf.valid[rows:].any()
    torch.testing.assert_close(pf.features.norm(dim=-1), torch.ones(16, 16))
    tall = rng.integers(0, 256, (120, 50, 3), dtype=np.uint8)
    batch = extract_patch_features_batch(model, [image, tall], size=224)
    torch.testing.assert_close(batch[0].features, pf.features, atol=1e-5, rtol=1e-4)
    assert batch[1].valid[:, :rows].all() and not batch[1].valid[:, rows:].any()
    # a size that is not a multiple of 14 cannot land on a patch grid
    with pytest.raises(InvalidInput, match="multiple of the patch size"):
        extract_patch_features(model, image, size=230)
    with pytest.raises(InvalidInput, match="uint8"):
        extract_patch_features(model, image.astype(np.float32), size=224)


def test_patch_features_default_size_grid():
    model = build_dinov2("dinov2_tiny")
    image = np.zeros((30, 20, 3), dtype=np.uint8)
    pf = extract_patch_features(model, image)  # 896 -> the 64x64 SAM grid
    assert pf.grid_size == (64, 64)
    assert pf.valid.sum(0)[0] == 64 and pf.valid[0].sum() == -(-597 // 14)


# --- device -----------------------------------------------------------------------------


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device().type == expected
    if not torch.cuda.is_available():
        with pytest.raises(Unavailable, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(InvalidInput, match="device setting"):
        resolve_device("tpu")


def test_base_sam_hashes_its_checkpoint_once(tmp_path, monkeypatch):
    """Every training job builds a fresh base: it must not re-hash the (up to 2.5 GB) file."""
    import vplab.models.checkpoint as checkpoint
    from vplab.models import build_sam
    from vplab.models.base import resolve_base_sam

    path = tmp_path / "tiny.pth"
    torch.save(build_sam("sam_tiny").state_dict(), path)
    hashed = []
    real = checkpoint.file_sha256
    monkeypatch.setattr(checkpoint, "file_sha256", lambda p: hashed.append(p) or real(p))
    import vplab.models.base as base_mod

    monkeypatch.setattr(base_mod, "file_sha256", checkpoint.file_sha256)
    base = resolve_base_sam("sam_tiny", path)
    assert len(hashed) == 1
    a, b = base.build(), base.build()
    assert len(hashed) == 1
    assert torch.equal(a.mask_decoder.iou_token.weight, b.mask_decoder.iou_token.weight)
