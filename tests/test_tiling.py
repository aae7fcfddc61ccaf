"""Large images as tiles with a halo: the grid, the cache format, prompting (an object
across a tile border comes back whole; an image that fits in one tile gives exactly the
untiled result), the served paths (cached tiled embeddings, visual prompting, prompt-free
decoding) and training on tiles - on the embedded mini SAM (256 px input)."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from vplab.errors import InvalidInput
from vplab.models import build_sam
from vplab.segmentation import PromptSegmenter
from vplab.segmentation.tiling import (
    TiledEmbedding,
    load_sam_embedding,
    needs_tiling,
    tile_grid,
)
from vplab.training.data import LabeledImage, split_train_val, tile_samples

SIZE = 448  # the mini SAM's input is 256: a 3 x 3 grid of 149-150 px cores, halo 32


@pytest.fixture(scope="module")
def seg():
    torch.manual_seed(0)
    return PromptSegmenter(build_sam("sam_mini"))


def _disc_image(cx: int = 154, cy: int = 224, r: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.normal(60, 8, (SIZE, SIZE, 3)).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
    img[disc] = (220, 180, 60)
    return img, disc


def _components(mask: np.ndarray) -> int:
    """4-connected components (a reference written out, independent of the code under test)."""
    seen = np.zeros_like(mask, bool)
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        count += 1
        queue = deque([(y, x)])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                if inside and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
    return count


@pytest.mark.parametrize(("h", "w"), [(448, 448), (1000, 300), (257, 256), (2048, 2049)])
def test_cores_partition_the_image_and_windows_fit_the_encoder(h, w):
    window, halo = 256, 32
    tiles = tile_grid(h, w, window, halo)
    cover = np.zeros((h, w), np.int32)
    for t in tiles:
        y0, x0, y1, x1 = t.core
        cover[y0:y1, x0:x1] += 1
        assert y1 - y0 <= window - 2 * halo and x1 - x0 <= window - 2 * halo
        wy0, wx0, wy1, wx1 = t.window
        assert (wy0, wx0) == (max(0, y0 - halo), max(0, x0 - halo))
        assert (wy1, wx1) == (min(h, y1 + halo), min(w, x1 + halo))
        assert wy1 - wy0 <= window and wx1 - wx0 <= window
    assert (cover == 1).all()  # every pixel answered for by exactly one tile
    assert tile_grid(200, 256, window, halo)[0].window == (0, 0, 200, 256)  # fits: one tile
    assert not needs_tiling(256, 100, window) and needs_tiling(257, 100, window)
    with pytest.raises(InvalidInput):
        tile_grid(h, w, window, 128)


def test_an_image_that_fits_in_one_tile_gives_exactly_the_untiled_result(seg):
    img, _disc = _disc_image()
    small = img[100:356, 30:286]  # 256 x 256: the encoder's input
    plain, tiled = seg.embed(small), seg.embed_tiled(small)
    assert len(tiled.tiles) == 1 and torch.equal(plain.features, tiled.features)
    point = (np.array([[124.0, 124.0], [10.0, 10.0]]), np.array([1, 0]))
    a, b = seg.decode(plain, *point), seg.decode(tiled, *point)
    assert torch.equal(a.masks, b.masks) and torch.equal(a.iou_predictions, b.iou_predictions)
    box = np.array([100.0, 100.0, 150.0, 150.0])
    assert torch.equal(seg.decode(plain, boxes=box).masks, seg.decode(tiled, boxes=box).masks)


def test_an_object_across_a_tile_border_comes_back_as_one_mask(seg):
    # Halo 64: 4 x 4 cores of 112 px, borders at x = 112, 224, 336.
    wide = PromptSegmenter(seg.sam, tile_halo=64)
    img, disc = _disc_image(cx=230, r=16)  # x 214..246, across the core border at 224
    border = 224
    tiled = wide.embed_tiled(img)
    assert len(tiled.tiles) == 16 and tiled.tiles[tiled.tile_of(230, 224)].core[1] == border
    for x in (236, 216):  # clicked right of the border, then left of it: another tile
        assert tiled.tile_of(x, 224) != tiled.tile_of(452 - x, 224)
        out = wide.decode(tiled, np.array([[x, 224.0]]), np.array([1]), multimask_output=None)
        mask = out.masks[0, out.iou_predictions[0].argmax()].numpy()
        assert mask.shape == (SIZE, SIZE)
        assert _components(mask) == 1
        # Both sides of the border: the halo let the tile see the whole object.
        for side in (slice(0, border), slice(border, SIZE)):
            assert (mask[:, side] & disc[:, side]).sum() > 0.6 * disc[:, side].sum()
        iou = (mask & disc).sum() / (mask | disc).sum()
        assert iou > 0.5, iou


def test_tiled_embeddings_round_trip_through_the_cache_format(seg):
    img, _ = _disc_image()
    tiled = seg.embed_tiled(img)
    back = load_sam_embedding(tiled.to_bytes())
    assert isinstance(back, TiledEmbedding) and back.tiles == tiled.tiles
    assert back.original_size == (SIZE, SIZE)
    assert torch.allclose(back.features, tiled.features, atol=0.02 * tiled.features.abs().max())
    plain = seg.embed(img[:200, :200])
    assert not isinstance(load_sam_embedding(plain.to_bytes()), TiledEmbedding)
    with pytest.raises(InvalidInput):
        load_sam_embedding(b"not safetensors")
    assert isinstance(seg.embed_images([img, img[:200, :200]])[0], TiledEmbedding)
    off = PromptSegmenter(seg.sam, tile_large_images=False)
    assert not isinstance(off.embed_images([img])[0], TiledEmbedding)  # shrunk, as SAM does


def test_prompts_that_pick_no_tile_are_refused(seg):
    img, _ = _disc_image()
    tiled = seg.embed_tiled(img)
    low = np.zeros((1, 1, *seg.mask_input_size), np.float32)
    with pytest.raises(InvalidInput, match="point or a box"):
        seg.decode(tiled, mask_input=low)
    with pytest.raises(InvalidInput, match="outside"):
        seg.decode(tiled, np.array([[500.0, 10.0]]), np.array([1]))


def test_large_training_images_become_tiles_on_the_same_side_of_the_split():
    img, disc = _disc_image()
    big = LabeledImage("a" * 64, img, disc)
    small = LabeledImage("b" * 64, img[:200, :200], np.zeros((200, 200), bool))
    tiles = tile_samples([big, small], 256, 32)
    kept = [t for t in tiles if t.source == "a" * 64]
    # Only tiles whose core holds a labelled pixel (the disc is in two cores).
    assert len(kept) == 2 and all(t.label.any() for t in kept)
    assert all(t.image.shape[:2] == t.label.shape and max(t.label.shape) <= 256 for t in kept)
    assert len({t.key for t in kept}) == 2 and all(len(t.key) == 64 for t in kept)
    assert tiles[-1] is small
    others = [LabeledImage(f"{i:064x}", img[:64, :64], disc[:64, :64]) for i in range(6)]
    _train, val = split_train_val(kept + others, 0.5, seed=1, min_images=2)
    sides = {t.source in {s.source for s in val} for t in kept}
    assert len(sides) == 1  # both tiles of the image in train, or both in val


# --- the served paths ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from vplab.datasets import DatasetStore
    from vplab.inference.features import FeatureEngine
    from vplab.inference.runtime import ModelRuntime
    from vplab.inference.segmentation import SegmentationEngine
    from vplab.settings import Settings
    from vplab.storage import LocalStore

    d = tmp_path_factory.mktemp("served")
    settings = Settings(demo=True, data_dir=d)
    store = LocalStore(d)
    datasets = DatasetStore(store, settings)
    engine = SegmentationEngine(FeatureEngine(ModelRuntime(settings, store)))
    return settings, store, datasets, engine


def _upload(datasets, ds: str, image: np.ndarray) -> str:
    from vplab.images import encode_png

    return datasets.add_image("t1", ds, encode_png(image))


def test_served_prompting_on_a_large_image_is_its_tiles_and_the_cache_keeps_them(served):
    from vplab.inference.features import FeatureEngine
    from vplab.inference.segmentation import Prompt
    from vplab.masks import decode_rle, encode_rle

    settings, store, datasets, engine = served
    ds = datasets.create_dataset("t1", "slides").id
    img, _disc = _disc_image()
    big = _upload(datasets, ds, img)
    emb = engine.features.sam_embedding("t1", big)
    assert isinstance(emb, TiledEmbedding) and len(emb.tiles) == 9
    # Another replica reads the tiles from the object store.
    again = FeatureEngine(engine.features.rt).sam_embedding("t1", big)
    assert isinstance(again, TiledEmbedding) and again.tiles == emb.tiles
    # The tile a click picks, served on its own (its window as an image of one tile),
    # gives the same mask in its frame.
    tile = emb.tiles[emb.tile_of(160, 224)]
    y0, x0, y1, x1 = tile.window
    alone = _upload(datasets, ds, img[y0:y1, x0:x1])
    (masks, size) = engine.segment_prompt("t1", big, Prompt([(160.0, 224.0, 1)]))
    (masks_alone, _) = engine.segment_prompt("t1", alone, Prompt([(160.0 - x0, 224.0 - y0, 1)]))
    assert size == (SIZE, SIZE)
    mask = decode_rle(masks[0][0])
    assert np.array_equal(mask[y0:y1, x0:x1], decode_rle(masks_alone[0][0]))
    assert not mask[:y0].any() and not mask[:, x1:].any()
    # A previous mask as the dense prompt: cropped to the tile's window.
    (refined, _) = engine.segment_prompt(
        "t1", big, Prompt([(160.0, 224.0, 1)], mask_input=encode_rle(mask))
    )
    assert decode_rle(refined[0][0]).shape == (SIZE, SIZE)
    # Tiling off: the cached tiles are not what the settings give, so it is embedded again.
    plain = FeatureEngine(
        type(engine.features.rt)(settings.model_copy(update={"tile_large_images": False}), store)
    ).sam_embedding("t1", big)
    assert not isinstance(plain, TiledEmbedding)


def test_visual_prompting_and_prompt_free_decoding_on_a_large_target(served):
    from vplab.inference.segmentation import TunedModel
    from vplab.masks import decode_rle, encode_rle

    _settings, _store, datasets, engine = served
    ds = datasets.create_dataset("t1", "vp").id
    img, disc = _disc_image()
    ref_img, ref_disc = img[100:356, 30:286], disc[100:356, 30:286]
    ref, big = _upload(datasets, ds, ref_img), _upload(datasets, ds, img)
    ((_, image_id, rle, _score, _points),) = list(
        engine.visual_prompt("t1", [(ref, encode_rle(ref_disc))], [big])
    )
    assert image_id == big and decode_rle(rle).shape == (SIZE, SIZE)
    # Prompt-free (a PTSAM-style model with the stock decoder: SAM's no-prompt output):
    # each pixel from the tile whose core holds it, which is that tile's window served alone.
    rt = engine.features.rt
    model = TunedModel(
        "m-000000000000", "ptsam", rt.sam, engine.features.segmenter, rt.sam_encoder_id,
        False, True, "token0",
    )  # fmt: skip
    whole, _ = engine.auto_segment("t1", big, model)
    whole_mask = decode_rle(whole)
    tiles = engine.features.sam_embedding("t1", big).tiles
    for tile in (tiles[0], tiles[4]):
        y0, x0, y1, x1 = tile.window
        alone, _ = engine.auto_segment("t1", _upload(datasets, ds, img[y0:y1, x0:x1]), model)
        cy0, cx0, cy1, cx1 = tile.core
        core = decode_rle(alone)[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        assert np.array_equal(whole_mask[cy0:cy1, cx0:cx1], core)


def test_a_job_trains_on_the_tiles_of_a_large_label_and_records_the_image(served):
    from vplab.jobs import Job, JobStore, run_job
    from vplab.masks import encode_label_map

    settings, store, datasets, engine = served
    settings = settings.model_copy(update={"train_eval_every": 2, "train_views": 1})
    ds = datasets.create_dataset("t1", "train").id
    img, disc = _disc_image()
    big = _upload(datasets, ds, img)
    datasets.put_label("t1", ds, big, encode_label_map(disc.astype(np.uint8)))
    jobs = JobStore(store)
    job = jobs.create(
        Job(
            job_id=jobs.new_id(), tenant="t1", dataset_id=ds, method="epeft", base_model="", steps=2
        )
    )
    assert run_job(settings, "t1", job.job_id) == "SUCCEEDED", jobs.get("t1", job.job_id).error
    done = jobs.get("t1", job.job_id)
    assert done.train_images == [big]  # the dataset image, not its tiles' keys
    # The tiles' embeddings were cached under their own keys, none under the image's.
    cached = store.list(f"tenants/t1/cache/{engine.features.rt.sam_encoder_id}.bank.")
    assert cached and not any(big in key for key in cached)
