"""PTSAM: decoder prompts and deep encoder prompts (METHODS.md section 4).

Counts on SAM ViT-B (built once, never run); forward checks on a tiny SAM whose encoder
has 5x5 windows on a 16x16 grid (padded to 20x20) and global blocks 1 and 3.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

from vplab.errors import InvalidInput
from vplab.peft import apply_method, count_trainable, get_method, trainable_by_piece
from vplab.peft.ptsam import PromptedBlock, PTSAMMaskDecoder, inject_encoder_prompts
from vplab.segmentation.prompt_free import prompt_free_decode


def tiny_sam() -> Sam:
    """The project's seeded tiny SAM; by hand (same architecture) if it is not there."""
    from vplab.models import build_sam

    return build_sam("sam_tiny")


@pytest.fixture(scope="module")
def tiny() -> Sam:
    return tiny_sam()


@pytest.fixture(scope="module")
def vit_b() -> Sam:
    from segment_anything import sam_model_registry

    return sam_model_registry["vit_b"]()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randn(2, 3, 256, 256, generator=g)


def decoder_only_copy(sam: Sam) -> Sam:
    """Shares ``sam``'s image encoder (ptsam-md leaves it alone), copies the decoder."""
    return Sam(
        image_encoder=sam.image_encoder,
        prompt_encoder=copy.deepcopy(sam.prompt_encoder),
        mask_decoder=copy.deepcopy(sam.mask_decoder),
    )


# --- registry and counts on ViT-B ---------------------------------------------------------


def test_registered_as_prompt_free():
    md, full = get_method("ptsam-md"), get_method("ptsam")
    assert md.prompt_free and full.prompt_free
    assert md.encoder_mode == "frozen" and full.encoder_mode == "full"


def test_trainable_counts_vit_b(vit_b):
    md = decoder_only_copy(vit_b)
    apply_method(md, "ptsam-md")
    assert dict(trainable_by_piece(md)) == {"decoder_prompts": 2_048}
    assert isinstance(md.mask_decoder, PTSAMMaskDecoder)

    full = copy.deepcopy(vit_b)
    apply_method(full, "ptsam")
    assert dict(trainable_by_piece(full)) == {"encoder_prompts": 73_728, "decoder_prompts": 2_048}
    assert count_trainable(full) == 75_776
    assert all(isinstance(b, PromptedBlock) for b in full.image_encoder.blocks)
    # Frozen weights keep their state_dict keys; only the prompts are new.
    new = set(full.state_dict()) - set(vit_b.state_dict())
    assert new == {f"image_encoder.blocks.{i}.prompt.weight" for i in range(12)} | {
        "mask_decoder.prompts.weight"
    }
    assert set(vit_b.state_dict()) <= set(full.state_dict())


def test_prompt_free_decode_vit_b_shapes(vit_b):
    sam = decoder_only_copy(vit_b)
    apply_method(sam, "ptsam-md")
    with torch.no_grad():
        logits = prompt_free_decode(sam, torch.randn(2, 256, 64, 64))
    assert logits.shape == (2, 1, 256, 256)


# --- deep prompts: the batched block against a plain per-window reference -------------------


def reference_attention(attn, win: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """One window (h, w, C) with n normed prompts (n, C): full (n+N)^2 softmax attention,
    rel-pos bias on patch-patch via segment_anything's add_decomposed_rel_pos, zero bias
    elsewhere; prompt outputs dropped."""
    h, w, c = win.shape
    n, N, nh = prompts.shape[0], h * w, attn.num_heads
    seq = torch.cat([prompts, win.reshape(N, c)], 0)  # (n+N, C)
    q, k, v = attn.qkv(seq).reshape(n + N, 3, nh, c // nh).permute(1, 2, 0, 3)  # (nh, n+N, hd)
    logits = (q * attn.scale) @ k.transpose(-2, -1)  # (nh, n+N, n+N)
    bias = torch.zeros_like(logits)
    if attn.use_rel_pos:
        bias[:, n:, n:] = add_decomposed_rel_pos(
            torch.zeros(nh, N, N), q[:, n:], attn.rel_pos_h, attn.rel_pos_w, (h, w), (h, w)
        )
    out = (logits + bias).softmax(-1) @ v  # (nh, n+N, hd)
    out = out[:, n:].permute(1, 0, 2).reshape(h, w, c)  # drop the prompts' outputs
    return attn.proj(out)


def reference_block(blk, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    B, H, W, _ = x.shape
    xn, pn = blk.norm1(x), blk.norm1(prompts)
    ws = blk.window_size
    if ws > 0:
        ph, pw = (ws - H % ws) % ws, (ws - W % ws) % ws
        xp = F.pad(xn, (0, 0, 0, pw, 0, ph))  # zero padding after norm1, as SAM does
        out = torch.zeros_like(xp)
        for b in range(B):
            for i in range(0, H + ph, ws):
                for j in range(0, W + pw, ws):  # the same prompts in every window
                    out[b, i : i + ws, j : j + ws] = reference_attention(
                        blk.attn, xp[b, i : i + ws, j : j + ws], pn
                    )
        out = out[:, :H, :W]
    else:  # global: prompts once per image
        out = torch.stack([reference_attention(blk.attn, xn[b], pn) for b in range(B)])
    x = x + out
    return x + blk.mlp(blk.norm2(x))


def reference_encoder(enc, img: torch.Tensor) -> torch.Tensor:
    x = enc.patch_embed(img)
    if enc.pos_embed is not None:
        x = x + enc.pos_embed
    for blk in enc.blocks:
        x = reference_block(blk, x, blk.prompt.weight)
    return enc.neck(x.permute(0, 3, 1, 2))


def test_tiny_encoder_exercises_padding_and_global_blocks(tiny):
    enc = tiny.image_encoder
    grid = enc.img_size // enc.patch_embed.proj.kernel_size[0]  # 16
    windows = [b.window_size for b in enc.blocks]
    assert 0 in windows and any(w and grid % w for w in windows)
    assert all(b.attn.rel_pos_h.abs().sum() > 0 for b in enc.blocks)  # rel-pos bias matters


def test_deep_prompts_match_per_window_reference(tiny, images):
    enc = copy.deepcopy(tiny.image_encoder)
    inject_encoder_prompts(enc, 3)
    torch.manual_seed(0)
    with torch.no_grad():
        for blk in enc.blocks:  # nonzero, clearly non-trivial prompts
            blk.prompt.weight.normal_()
        out = enc(images)
        ref = reference_encoder(enc, images)
        stock = tiny.image_encoder(images)
    assert out.shape == (2, 256, 16, 16)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert (out - stock).abs().max() > 1e-2  # the prompts do change the output


def test_zero_encoder_prompts_is_identity(tiny, images):
    # (Zero-VALUED prompts are not identity: they still take attention mass.)
    enc = copy.deepcopy(tiny.image_encoder)
    inject_encoder_prompts(enc, 0)
    with torch.no_grad():
        torch.testing.assert_close(enc(images), tiny.image_encoder(images), rtol=0, atol=1e-6)


def test_encoder_prompts_twice_is_an_error(tiny):
    enc = copy.deepcopy(tiny.image_encoder)
    inject_encoder_prompts(enc, 2)
    with pytest.raises(InvalidInput, match="already modified"):
        inject_encoder_prompts(enc, 2)


# --- prompt-free decoding ----------------------------------------------------------------------


def test_prompt_free_decode_batch_of_two(tiny):
    sam = decoder_only_copy(tiny)
    apply_method(sam, "ptsam-md", {"md_init_std": 1.0})
    emb = torch.randn(2, 256, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = prompt_free_decode(sam, emb)
        singles = torch.cat([prompt_free_decode(sam, emb[i : i + 1]) for i in range(2)])
        # Same thing spelled with the stock decoder: the learned prompts as sparse
        # embeddings after the output tokens, no-mask dense input, mask token 0.
        pe = tiny.prompt_encoder
        sparse, dense = pe(points=None, boxes=None, masks=None)
        prompts = sam.mask_decoder.prompts.weight[None]
        ref = torch.cat(
            [
                tiny.mask_decoder(
                    emb[i : i + 1], pe.get_dense_pe(), torch.cat([sparse, prompts], 1), dense, False
                )[0]
                for i in range(2)
            ]
        )
        stock = prompt_free_decode(tiny, emb)  # stock SAM with no prompt at all
    assert logits.shape == (2, 1, 64, 64)  # 4 x grid: (2, 1, 256, 256) for ViT-B
    torch.testing.assert_close(logits, singles, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5)
    assert not torch.allclose(logits, stock, atol=1e-3)


def test_prompt_free_decode_rejects_wrong_shapes(tiny):
    with pytest.raises(InvalidInput):
        prompt_free_decode(tiny, torch.randn(2, 256, 8, 8))
    with pytest.raises(InvalidInput):
        prompt_free_decode(tiny, torch.randn(256, 16, 16))


def test_gradients_reach_only_the_prompts(tiny, images):
    sam = copy.deepcopy(tiny)
    apply_method(sam, "ptsam")
    logits = prompt_free_decode(sam, sam.image_encoder(images[:1]))
    logits.sigmoid().mean().backward()
    pieces = {}
    for name, p in sam.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
        if p.requires_grad:
            assert name.endswith("prompt.weight") or name == "mask_decoder.prompts.weight", name
            assert p.grad.abs().sum() > 0, name
            pieces[name] = p.numel()
    assert len(pieces) == len(sam.image_encoder.blocks) + 1
    assert sum(pieces.values()) == dict(trainable_by_piece(sam))["encoder_prompts"] + 2048


def test_reproducible_with_seed(tiny, images):
    def build(seed: int) -> Sam:
        sam = copy.deepcopy(tiny)
        torch.manual_seed(seed)
        apply_method(sam, "ptsam", {"n_ie": 2})
        return sam

    a, b, c = build(7), build(7), build(8)
    sa, sb, sc = (m.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["mask_decoder.prompts.weight"], sc["mask_decoder.prompts.weight"])
    with torch.no_grad():
        out_a = prompt_free_decode(a, a.image_encoder(images[:1]))
        out_b = prompt_free_decode(b, b.image_encoder(images[:1]))
    assert torch.equal(out_a, out_b)


def test_config_errors(tiny):
    with pytest.raises(InvalidInput, match="unknown config field"):
        apply_method(decoder_only_copy(tiny), "ptsam-md", {"n_ie": 8})
    with pytest.raises(InvalidInput, match="n_md"):
        apply_method(decoder_only_copy(tiny), "ptsam-md", {"n_md": 0})
    sam = decoder_only_copy(tiny)
    apply_method(sam, "ptsam-md")
    with pytest.raises(InvalidInput, match="stock MaskDecoder"):
        apply_method(sam, "ptsam-md")


def test_ptsam_segment_end_to_end(tiny):
    import numpy as np

    sam = decoder_only_copy(tiny)
    apply_method(sam, "ptsam-md")
    image = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    from vplab.segmentation.prompt_free import prompt_free_segment

    mask = prompt_free_segment(sam, image)
    assert mask.shape == (40, 70) and mask.dtype == bool
    with pytest.raises(InvalidInput):
        prompt_free_segment(sam, image[..., 0])
