"""Encoder PEFT suite (METHODS.md section 5), merging and adapter files.

Exact counts run on one real SAM ViT-B build (module-scoped, deep-copied per method);
forward checks run on a tiny SAM (256 px, embed 64) - never the ViT-B encoder forward.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from torch import nn

from vplab.errors import InvalidInput, Unavailable
from vplab.peft import apply_method, count_trainable, get_method, make_config, method_names
from vplab.peft.adapter_io import load_adapter, save_adapter
from vplab.peft.layers.lora import LoRALinear
from vplab.peft.merge import merged_state_dict

ENCODER_EXPECTED = {
    "freeze-encoder": 4_064_560,
    "lora": 5_244_208,
    "late-lora": 6_423_856,
    "late-ft": 46_638_128,
    "fact": 4_365_616,
    "bias-tune": 4_165_936,
    "ln-tune": 4_101_424,
    "full-ft": 93_735_472,
    "cellseg1": 171_008,
    "cellseg1-md": 23_552,
    "cellseg1-pf": 171_008,  # the same parameters, trained and served prompt-free
    "cellseg1-md-pf": 23_552,
    "samed": 4_212_016,
}
MERGEABLE = {
    "lora",
    "late-lora",
    "late-ft",
    "full-ft",
    "ssf",
    "bias-tune",
    "ln-tune",
    "attn-tune",
    "freeze-encoder",
    "cellseg1",
    "cellseg1-md",
    "cellseg1-pf",
    "cellseg1-md-pf",
    "samed",
}
ENCODER_METHODS = sorted(MERGEABLE | {"qlora", "fact", "adaptformer"})
# The tiny SAM may have fewer blocks than ViT-B's default start_block=6.
TINY_CONFIG = {"late-ft": {"start_block": 1}, "late-lora": {"start_block": 1}}


# ----------------------------------------------------------------------------- helpers


def _tiny_sam() -> nn.Module:
    from vplab.models import build_sam

    return build_sam("sam_tiny")


@pytest.fixture(scope="module")
def tiny_base_state():
    torch.manual_seed(0)
    sam = _tiny_sam()
    # Nonzero rel-pos tables so they matter in the checks (SAM zero-inits them).
    with torch.no_grad():
        for block in sam.image_encoder.blocks:
            block.attn.rel_pos_h.normal_(0, 0.02)
            block.attn.rel_pos_w.normal_(0, 0.02)
    return copy.deepcopy(sam.state_dict())


@pytest.fixture
def fresh_tiny(tiny_base_state):
    def make() -> nn.Module:
        sam = _tiny_sam()
        sam.load_state_dict(tiny_base_state)
        return sam.eval()

    return make


@pytest.fixture(scope="module")
def image():
    torch.manual_seed(1)
    return torch.randn(1, 3, 256, 256)


def _encode(sam: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return sam.image_encoder(x)


def _decode(sam: nn.Module, emb: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(
            points=(torch.tensor([[[100.0, 120.0], [30.0, 40.0]]]), torch.tensor([[1, 0]])),
            boxes=None,
            masks=None,
        )
        masks, iou = sam.mask_decoder(
            image_embeddings=emb,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
    return torch.cat([masks.flatten(), iou.flatten()])


def _perturb_trainable(sam: nn.Module, seed: int = 3, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sam.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)


@pytest.fixture(scope="module")
def vit_b():
    from segment_anything import sam_model_registry

    return sam_model_registry["vit_b"]()


# ------------------------------------------------------------------------ registry/counts


def test_all_encoder_methods_registered():
    names = set(method_names())
    assert set(ENCODER_METHODS) <= names
    for name in ENCODER_METHODS:
        assert get_method(name).mergeable == (name in MERGEABLE), name
    assert get_method("freeze-encoder").encoder_mode == "frozen"
    assert get_method("cellseg1-md").encoder_mode == "frozen"
    assert get_method("late-lora").encoder_mode == "late"
    assert get_method("late-ft").encoder_mode == "late"
    assert get_method("lora").encoder_mode == "full"


@pytest.mark.parametrize("method", sorted(ENCODER_EXPECTED))
def test_exact_trainable_counts_vit_b(vit_b, method):
    sam = copy.deepcopy(vit_b)
    apply_method(sam, method)
    assert count_trainable(sam) == ENCODER_EXPECTED[method]
    del sam


def test_unknown_method_and_field():
    with pytest.raises(InvalidInput, match="unknown PEFT method"):
        apply_method(_tiny_sam(), "no-such-method")
    with pytest.raises(InvalidInput, match="unknown config field"):
        make_config("lora", {"rank": 8})
    with pytest.raises(InvalidInput, match="start_block"):
        apply_method(_tiny_sam(), "late-ft", {"start_block": 99})


def test_late_methods_only_touch_late_blocks(fresh_tiny):
    sam = fresh_tiny()
    apply_method(sam, "late-lora", {"start_block": 2})
    blocks = sam.image_encoder.blocks
    assert not any(p.requires_grad for b in blocks[:2] for p in b.parameters())
    assert all(isinstance(b.attn.qkv, LoRALinear) for b in blocks[2:])
    assert not any(p.requires_grad for p in sam.image_encoder.neck.parameters())


# ----------------------------------------------------------------------- LoRA vs HF peft


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 12)

    def forward(self, x):
        return self.fc(x)


def test_lora_linear_matches_hf_peft():
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    hf = _Small()
    ours = LoRALinear(copy.deepcopy(hf.fc), r=4, alpha=8)
    hf = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["fc"]), hf)
    x = torch.randn(5, 16)
    with torch.no_grad():
        ours.lora_A[0].copy_(hf.fc.lora_A["default"].weight)
        assert torch.allclose(ours(x), hf(x), atol=1e-6)  # B = 0: both are the base layer
        b = torch.randn(12, 4)
        hf.fc.lora_B["default"].weight.copy_(b)
        ours.lora_B[0].copy_(b)
        assert torch.allclose(ours(x), hf(x), atol=1e-5)
        assert not torch.allclose(ours(x), ours.base(x), atol=1e-3)
        # The merged layer is the same function.
        assert torch.allclose(ours.merged()(x), hf(x), atol=1e-5)


class _QKV(nn.Module):
    def __init__(self, fused: nn.Linear, dim: int):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        with torch.no_grad():
            for i, lin in enumerate((self.q, self.k, self.v)):
                lin.weight.copy_(fused.weight[i * dim : (i + 1) * dim])
                lin.bias.copy_(fused.bias[i * dim : (i + 1) * dim])

    def forward(self, x):
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def test_fused_qkv_slices_match_hf_peft_on_separate_projections():
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    dim = 8
    fused = nn.Linear(dim, 3 * dim)
    hf = inject_adapter_in_model(
        LoraConfig(r=2, lora_alpha=2, target_modules=["q", "v"]), _QKV(fused, dim)
    )
    ours = LoRALinear(fused, r=2, out_slices=[(0, dim), (2 * dim, 3 * dim)])
    with torch.no_grad():
        for i, name in enumerate(("q", "v")):
            layer = getattr(hf, name)
            layer.lora_B["default"].weight.normal_()
            ours.lora_A[i].copy_(layer.lora_A["default"].weight)
            ours.lora_B[i].copy_(layer.lora_B["default"].weight)
        x = torch.randn(2, 3, dim)
        assert torch.allclose(ours(x), hf(x), atol=1e-5)


# ------------------------------------------------------------- identity at init, gradients


@pytest.mark.parametrize(
    "method,config",
    [
        ("lora", None),
        ("late-lora", {"start_block": 1}),
        ("adaptformer", None),
        ("ssf", {"init_identity": True}),
        ("fact", None),
        ("samed", None),
    ],
)
def test_identity_at_init(fresh_tiny, image, method, config):
    base_out = _encode(fresh_tiny(), image)
    sam = fresh_tiny()
    apply_method(sam, method, config)
    sam.eval()
    assert torch.allclose(_encode(sam, image), base_out, atol=1e-5)


def test_ssf_default_init_is_not_identity(fresh_tiny):
    sam = fresh_tiny()
    apply_method(sam, "ssf")
    scale = sam.image_encoder.blocks[0].attn.qkv.ssf_scale
    assert 0.0 < scale.std().item() < 0.1 and abs(scale.mean().item() - 1.0) < 0.05


@pytest.mark.parametrize("method", ["lora", "fact", "ssf", "adaptformer", "bias-tune", "late-ft"])
def test_gradients_reach_adapter_not_frozen(fresh_tiny, image, method):
    sam = fresh_tiny()
    apply_method(sam, method, TINY_CONFIG.get(method))
    sam.train()
    sam.image_encoder(image).square().mean().backward()
    trainable = [(n, p) for n, p in sam.image_encoder.named_parameters() if p.requires_grad]
    frozen = [(n, p) for n, p in sam.image_encoder.named_parameters() if not p.requires_grad]
    assert trainable and frozen
    assert all(p.grad is not None for _, p in trainable), [
        n for n, p in trainable if p.grad is None
    ]
    assert any(p.grad.abs().sum() > 0 for _, p in trainable)
    assert all(p.grad is None for _, p in frozen)


def test_qlora_unavailable_on_cpu(fresh_tiny):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the Unavailable path is for CPU-only machines")
    with pytest.raises(Unavailable, match="qlora"):
        apply_method(fresh_tiny(), "qlora")


# ------------------------------------------------------------------------------- merging


@pytest.mark.parametrize("method", ["lora", "ssf", "late-ft", "late-lora", "cellseg1", "bias-tune"])
def test_merged_state_dict_reproduces_tuned_model(fresh_tiny, image, method):
    sam = fresh_tiny()
    apply_method(sam, method, TINY_CONFIG.get(method))
    _perturb_trainable(sam)
    sam.eval()
    emb = _encode(sam, image)
    dec = _decode(sam, emb)
    assert not torch.allclose(emb, _encode(fresh_tiny(), image), atol=1e-4) or method == "cellseg1"

    plain = _tiny_sam()
    merged = merged_state_dict(sam, method)
    assert all(
        t.is_contiguous() for t in merged.values()
    )  # a plain checkpoint, whatever the live layout
    plain.load_state_dict(merged, strict=True)
    plain.eval()
    emb2 = _encode(plain, image)
    assert torch.allclose(emb2, emb, atol=1e-4)
    assert torch.allclose(_decode(plain, emb2), dec, atol=1e-4)


@pytest.mark.parametrize("method", ["fact", "adaptformer"])
def test_non_mergeable_methods_raise(fresh_tiny, method):
    sam = fresh_tiny()
    apply_method(sam, method)
    with pytest.raises(InvalidInput):
        merged_state_dict(sam)
    with pytest.raises(InvalidInput, match="cannot be merged"):
        merged_state_dict(sam, method)


def test_merged_vit_b_loads_with_sam_model_registry(vit_b, tmp_path):
    from segment_anything import sam_model_registry

    sam = copy.deepcopy(vit_b)
    apply_method(sam, "lora")
    qkv = sam.image_encoder.blocks[0].attn.qkv
    with torch.no_grad():
        qkv.lora_B[1].normal_()  # v slice
    expected = (qkv.base.weight + qkv.delta_weight()).detach().clone()
    path = tmp_path / "merged.pth"
    torch.save(merged_state_dict(sam, "lora"), path)
    del sam
    loaded = sam_model_registry["vit_b"](checkpoint=str(path))
    w = loaded.image_encoder.blocks[0].attn.qkv.weight
    assert torch.equal(w, expected)
    assert not torch.equal(w[1536:], vit_b.image_encoder.blocks[0].attn.qkv.weight[1536:])
    assert torch.equal(w[:1536], vit_b.image_encoder.blocks[0].attn.qkv.weight[:1536])


# --------------------------------------------------------------------------- adapter files

BASE = {"name": "sam_tiny", "sha256": "a" * 64}


@pytest.mark.parametrize("method", ["lora", "ssf", "adaptformer", "fact", "late-ft", "cellseg1"])
def test_adapter_roundtrip(fresh_tiny, image, tmp_path, method):
    sam = fresh_tiny()
    config = apply_method(sam, method, TINY_CONFIG.get(method))
    _perturb_trainable(sam)
    sam.eval()
    emb = _encode(sam, image)
    out = save_adapter(sam, tmp_path / "ad", method, config, BASE)

    meta = json.loads((out / "config.json").read_text())
    assert meta["format"] == "vplab-adapter/1" and meta["method"] == method
    assert meta["base"] == BASE and meta["trainable_params"] == count_trainable(sam)
    assert sum(meta["pieces"].values()) == meta["trainable_params"]
    from safetensors.torch import load_file

    saved = load_file(str(out / "adapter.safetensors"))
    # Only the method's tensors: nothing of the frozen base beyond what trains.
    assert sum(t.numel() for t in saved.values()) <= count_trainable(sam) + 8

    loaded, cfg = load_adapter(out, fresh_tiny(), BASE["sha256"])
    loaded.eval()
    assert type(cfg) is type(config)
    assert torch.allclose(_encode(loaded, image), emb, atol=1e-5)
    assert torch.allclose(_decode(loaded, emb), _decode(sam, emb), atol=1e-5)


def test_adapter_wrong_base_sha(fresh_tiny, tmp_path):
    sam = fresh_tiny()
    config = apply_method(sam, "lora")
    out = save_adapter(sam, tmp_path / "ad", "lora", config, BASE)
    base = fresh_tiny()
    other = "b" * 64
    with pytest.raises(InvalidInput) as err:
        load_adapter(out, base, other)
    assert BASE["sha256"] in str(err.value) and other in str(err.value)
    assert not any(isinstance(m, LoRALinear) for m in base.modules())  # base untouched


def test_adapter_missing_or_corrupt_files(fresh_tiny, tmp_path):
    sam = fresh_tiny()
    config = apply_method(sam, "lora")
    out = save_adapter(sam, tmp_path / "ad", "lora", config, BASE)
    weights = (out / "adapter.safetensors").read_bytes()

    (out / "adapter.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(InvalidInput, match="corrupt"):
        load_adapter(out, fresh_tiny(), BASE["sha256"])
    os.remove(out / "adapter.safetensors")
    with pytest.raises(InvalidInput, match="missing"):
        load_adapter(out, fresh_tiny(), BASE["sha256"])
    (out / "adapter.safetensors").write_bytes(weights)
    (out / "config.json").write_text("{not json")
    with pytest.raises(InvalidInput, match=r"config\.json"):
        load_adapter(out, fresh_tiny(), BASE["sha256"])
    with pytest.raises(InvalidInput, match="missing"):
        load_adapter(tmp_path / "nowhere", fresh_tiny(), BASE["sha256"])


def test_adapter_that_does_not_fit_the_method(fresh_tiny, tmp_path):
    sam = fresh_tiny()
    config = apply_method(sam, "lora", {"r": 4})
    out = save_adapter(sam, tmp_path / "ad", "lora", config, BASE)
    meta = json.loads((out / "config.json").read_text())
    meta["method"], meta["config"] = "ssf", {}
    meta.pop("trainable_params")
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(InvalidInput, match="does not fit"):
        load_adapter(out, fresh_tiny(), BASE["sha256"])


def test_save_adapter_writes_nothing_on_error(fresh_tiny, tmp_path, monkeypatch):
    sam = fresh_tiny()
    config = apply_method(sam, "lora")
    with pytest.raises(InvalidInput):
        save_adapter(sam, tmp_path / "ad", "no-such-method", config, BASE)
    with pytest.raises(InvalidInput):
        save_adapter(sam, tmp_path / "ad", "lora", config, {"name": "x"})
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        save_adapter(sam, tmp_path / "ad", "lora", config, BASE)
    assert list(tmp_path.iterdir()) == []


def test_save_adapter_replaces_existing(fresh_tiny, image, tmp_path):
    sam = fresh_tiny()
    config = apply_method(sam, "lora")
    save_adapter(sam, tmp_path / "ad", "lora", config, BASE)
    _perturb_trainable(sam)
    sam.eval()
    save_adapter(sam, tmp_path / "ad", "lora", config, BASE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad"]
    loaded, _ = load_adapter(tmp_path / "ad", fresh_tiny(), BASE["sha256"])
    assert torch.allclose(_encode(loaded.eval(), image), _encode(sam, image), atol=1e-5)
