"""SAM models: the official ViT-B/L/H and a tiny seeded model of the same classes.

The official architectures come from ``segment_anything``'s own builders so our modules
are exactly the ones its checkpoints were saved from; only loading is ours (sha256 check,
``weights_only``, strict load with readable errors). ``sam_tiny`` uses the same classes
with a small encoder so tests and demos run in milliseconds; its prompt encoder and mask
decoder keep the official sizes (256-d, MLP 2048), so decoder-side PEFT parameter counts
on the tiny model equal those on the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from segment_anything.build_sam import sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from vplab.errors import InvalidInput
from vplab.models.checkpoint import load_strict, read_checkpoint

if TYPE_CHECKING:
    from vplab.storage import ArtifactStore

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamConfig:
    name: str
    img_size: int
    patch_size: int
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    window_size: int
    prompt_embed_dim: int
    decoder_mlp_dim: int
    official_checkpoint: str | None  # file name Meta publishes, for docs and errors

    @property
    def grid_size(self) -> int:
        """Embedding grid side (64 for the official models, 16 for sam_tiny)."""
        return self.img_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-res logits and of ``mask_input`` (4 x grid)."""
        return 4 * self.grid_size


_CONFIGS = {
    "vit_b": SamConfig(
        "vit_b", 1024, 16, 768, 12, 12, (2, 5, 8, 11), 14, 256, 2048, "sam_vit_b_01ec64.pth"
    ),
    "vit_l": SamConfig(
        "vit_l", 1024, 16, 1024, 24, 16, (5, 11, 17, 23), 14, 256, 2048, "sam_vit_l_0b3195.pth"
    ),
    "vit_h": SamConfig(
        "vit_h", 1024, 16, 1280, 32, 16, (7, 15, 23, 31), 14, 256, 2048, "sam_vit_h_4b8939.pth"
    ),
    # 16x16 grid with 5x5 windows: padded to 20x20, so windowed attention with padding
    # is exercised the way ViT-B's 64 -> 70 padding is.
    "sam_tiny": SamConfig("sam_tiny", 256, 16, 64, 4, 2, (1, 3), 5, 256, 2048, None),
    # The embedded default, pretrained on miniworld (vplab.miniworld.pretrain): 256 px
    # input (16x16 grid, cell = 16 px like the official models), a 6-block 128-d encoder
    # with 8x8 windows and two global blocks; the decoder keeps transformer_dim 256 (so the
    # E-PEFT / PTSAM pieces have their official shapes) but its MLP is 512 instead of 2048:
    # the 2048-wide MLPs alone would be 2.1 M parameters, about half of the 10 MB budget.
    "sam_mini": SamConfig("sam_mini", 256, 16, 128, 6, 4, (2, 5), 8, 256, 512, None),
}

SAM_NAMES: tuple[str, ...] = tuple(_CONFIGS)
SMALL_NAMES = ("sam_tiny", "sam_mini")  # our own configurations of the official classes
TINY_SEED = 0


def sam_config(name: str) -> SamConfig:
    """The architecture of one of ``SAM_NAMES``."""
    try:
        return _CONFIGS[name]
    except KeyError:
        raise InvalidInput(
            f"unknown SAM model {name!r}; expected one of {list(SAM_NAMES)}"
        ) from None


def _build_small(cfg: SamConfig) -> Sam:
    # Mirrors segment_anything.build_sam._build_sam with a small configuration.
    grid = cfg.grid_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg.encoder_depth,
            embed_dim=cfg.encoder_embed_dim,
            img_size=cfg.img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=cfg.encoder_num_heads,
            patch_size=cfg.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=cfg.encoder_global_attn_indexes,
            window_size=cfg.window_size,
            out_chans=cfg.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(cfg.img_size, cfg.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=cfg.prompt_embed_dim,
                mlp_dim=cfg.decoder_mlp_dim,
                num_heads=8,
            ),
            transformer_dim=cfg.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )


def _build_arch(cfg: SamConfig) -> Sam:
    if cfg.name in SMALL_NAMES:
        return _build_small(cfg)
    return sam_model_registry[cfg.name](checkpoint=None)


def _init_tiny_weights(sam: Sam) -> None:
    # The official init leaves pos_embed and rel-pos tables at zero; small random values
    # make the tiny model exercise those paths (tests compare against SamPredictor).
    enc = sam.image_encoder
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name == "pos_embed" or name.endswith(("rel_pos_h", "rel_pos_w")):
                p.normal_(0.0, 0.02)


def _match_decoder_layout(sam: Sam) -> Sam:
    # The mask decoder hands its two upscaling ConvTranspose2d a channels-last input (the
    # image tokens, transposed and viewed as a map); with weights in the default layout
    # oneDNN reorders on every call. Same values, same state-dict keys; ~10 % of a CPU
    # decoder training step and of a click (BENCHMARKS.md, train). Exports make tensors
    # contiguous again (peft.merge, models.base).
    sam.mask_decoder.output_upscaling.to(memory_format=torch.channels_last)
    return sam


def build_sam(
    name: str,
    checkpoint: str | Path | None = None,
    sha256: str | None = None,
    store: ArtifactStore | None = None,
    seed: int = TINY_SEED,
    cache_dir: str | Path | None = None,
    random_init: bool = False,
) -> Sam:
    """Build SAM ``name`` (one of ``SAM_NAMES``) in eval mode on the CPU.

    With ``checkpoint`` (a local path or an object-store key) the weights are verified and
    strictly loaded; the architecture is built on the meta device first, so no time or
    memory is spent on a random init that would be overwritten. Without a checkpoint the
    weights are random but deterministic given ``seed`` (tests), except for the embedded
    models (``sam_mini``), whose packaged weights are loaded and digest-checked unless
    ``random_init`` (pretraining, the random-init control).
    """
    from vplab.models.embedded import embedded_weights

    cfg = sam_config(name)
    packaged = embedded_weights(name)
    if checkpoint is None and not random_init and packaged is not None:
        checkpoint, sha256 = packaged.path, packaged.sha256
    if checkpoint is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            sam = _build_arch(cfg)
            if cfg.name in SMALL_NAMES:
                _init_tiny_weights(sam)
        return _match_decoder_layout(sam).eval()

    state, path = read_checkpoint(checkpoint, sha256=sha256, store=store, cache_dir=cache_dir)
    with torch.device("meta"):
        sam = _build_arch(cfg)
    load_strict(sam, state, name, path, assign=True)
    # pixel_mean/std are non-persistent buffers: not in any checkpoint, still on meta.
    sam.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(-1, 1, 1), False)
    sam.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(-1, 1, 1), False)
    leftover = [n for n, t in [*sam.named_parameters(), *sam.named_buffers()] if t.is_meta]
    if leftover:  # a segment_anything change added state we do not know how to fill
        raise RuntimeError(f"SAM {name}: tensors left uninitialised after loading: {leftover[:5]}")
    # The embedded weights (however their path was given; their digest was checked when
    # they were identified) carry their calibration, and it travels with the module, tuned
    # copies included: PromptSegmenter.mask_score_threshold.
    if packaged is not None and Path(path).resolve() == packaged.path.resolve():
        sam.vplab_mask_score_threshold = packaged.mask_score_threshold
    return _match_decoder_layout(sam).eval()
