"""Unit tests of the trainer's parts: data pairing, views, prompts, loss, checkpoint codec."""

import numpy as np
import pytest
import torch

from vplab.errors import InvalidInput
from vplab.training.augment import DIHEDRAL, View, views
from vplab.training.checkpoint import TrainerState, decode_state, encode_state
from vplab.training.data import LabeledImage, load_labeled_dir, split_train_val, validate_samples
from vplab.training.losses import dice_loss, segmentation_loss
from vplab.training.prompts import sample_prompt, validation_prompts


def _sample(name="a", h=20, w=30):
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    lab = np.zeros((h, w), bool)
    lab[5:10, 5:12] = True
    return LabeledImage(name, img, lab)


def test_dihedral_views_are_distinct_and_keep_label_aligned():
    s = _sample()
    img = np.zeros((20, 30, 3), np.uint8)
    img[s.label] = 255  # image and label share the object: every view must keep them aligned
    seen = set()
    for v in views(8, 0):
        im, lab = v.apply(img, s.label)
        assert np.array_equal(im[..., 0] > 0, lab)
        seen.add(lab.tobytes() + bytes(lab.shape))
    assert len(seen) == 8 and len(DIHEDRAL) == 8
    im, lab = View("gamma0.7").apply(img, s.label)
    assert im.dtype == np.uint8 and np.array_equal(lab, s.label)


def test_sample_prompt_is_the_inference_form_one_positive_then_negatives():
    label = torch.zeros(50, 60, dtype=torch.bool)
    label[10:20, 30:45] = True
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        pts, labels = sample_prompt(label, g, num_negatives=2)
        assert labels.tolist() == [1, 0, 0]  # as visual prompting sends: positive first
        for (x, y), lab in zip(pts.tolist(), labels.tolist()):
            assert bool(label[int(y), int(x)]) == (lab == 1)


def test_prompt_cells_are_distinct_and_uniform_over_the_region():
    from collections import Counter

    from vplab.training.prompts import _distinct_cells

    region = torch.zeros(40, 40, dtype=torch.bool)
    region[5:9, 10:15] = True  # 20 cells, 1.25 % of the image: the rejection path
    g = torch.Generator().manual_seed(1)
    counts = Counter()
    for _ in range(2000):
        cells = _distinct_cells(region, 3, g)
        assert len({tuple(c) for c in cells.tolist()}) == 3
        assert bool(region[cells[:, 0], cells[:, 1]].all())
        counts.update(tuple(c) for c in cells.tolist())
    assert len(counts) == 20
    assert max(counts.values()) < 1.25 * 300 and min(counts.values()) > 0.75 * 300  # 6000 / 20 each


def test_sample_prompt_tiny_empty_and_full_regions():
    from vplab.training.prompts import _distinct_cells

    g = torch.Generator().manual_seed(2)
    big = torch.zeros(1000, 1000, dtype=torch.bool)
    big[500, 500] = big[10, 990] = True  # 2 cells in a megapixel: the exact fallback
    assert sorted(map(tuple, _distinct_cells(big, 3, g).tolist())) == [(10, 990), (500, 500)]
    assert _distinct_cells(torch.zeros(8, 8, dtype=torch.bool), 2, g).shape == (0, 2)
    empty = torch.zeros(30, 30, dtype=torch.bool)
    _pts, labels = sample_prompt(empty, g)
    assert labels.tolist() == [0, 0]  # no object: background points only
    with pytest.raises(ValueError):
        sample_prompt(empty, g, num_negatives=0)
    full = torch.ones(30, 30, dtype=torch.bool)
    _pts, labels = sample_prompt(full, g)
    assert labels.tolist() == [1]  # no background to put a negative on


def test_loss_is_low_for_right_logits_and_high_for_wrong():
    target = torch.zeros(1, 8, 8)
    target[:, 2:6, 2:6] = 1
    good = target * 20 - 10
    assert segmentation_loss(good, target) < 0.05
    assert segmentation_loss(-good, target) > 0.7
    assert dice_loss(good, target) < 0.01


def test_split_is_seeded_and_five_shots_train_on_five():
    samples = [_sample(str(i)) for i in range(12)]
    tr, va = split_train_val(samples, 0.2, seed=3)
    assert len(va) == 2 and len(tr) == 10
    assert [s.name for s in va] == [s.name for s in split_train_val(samples, 0.2, seed=3)[1]]
    tr, va = split_train_val(samples[:5], 0.2, seed=0)  # a 5-shot job trains on 5 (#12)
    assert len(tr) == 5 and va == []
    tr, va = split_train_val(samples[:5], 0.2, seed=0, min_images=2)
    assert len(tr) == 4 and len(va) == 1


def test_validate_samples_errors():
    with pytest.raises(InvalidInput, match="empty"):
        validate_samples([])
    s = _sample()
    s.label = s.label[:, :10]
    with pytest.raises(InvalidInput, match="label of 'a'"):
        validate_samples([s])
    s = _sample()
    s.label[:] = False
    with pytest.raises(InvalidInput, match="every label is empty"):
        validate_samples([s])


def test_load_labeled_dir_pairs_and_rejects_orphans(tmp_path):
    from vplab.demo import write_demo_dataset

    write_demo_dataset(tmp_path, n=3, size=64)
    samples = load_labeled_dir(tmp_path / "images", tmp_path / "masks")
    assert [s.name for s in samples] == ["img_000", "img_001", "img_002"]
    assert samples[0].image.shape == (64, 64, 3) and samples[0].label.dtype == bool
    (tmp_path / "masks" / "stray.png").write_bytes(
        (tmp_path / "masks" / "img_000.png").read_bytes()
    )
    with pytest.raises(InvalidInput, match="without a matching image"):
        load_labeled_dir(tmp_path / "images", tmp_path / "masks")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="label set is empty"):
        load_labeled_dir(tmp_path / "images", tmp_path / "empty")


def test_checkpoint_codec_roundtrip():
    p = torch.nn.Parameter(torch.randn(3, 4))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.randn(3, 4)
    opt.step()
    state = TrainerState(
        step=7,
        params={"a.b": p.detach()},
        best={"a.b": p.detach() * 2},
        optimizer=opt.state_dict(),
        scheduler={"last_epoch": 7, "_step_count": 8},
        torch_rng=torch.get_rng_state(),
        sampler_rng=torch.Generator().manual_seed(5).get_state(),
        info={"best_val_iou": 0.5, "history": [{"step": 5, "val_iou": 0.5}]},
    )
    back = decode_state(encode_state(state))
    assert back.step == 7 and back.info == state.info and back.scheduler == state.scheduler
    assert torch.equal(back.params["a.b"], p.detach()) and torch.equal(
        back.best["a.b"], p.detach() * 2
    )
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3, 4))], lr=0.1)
    opt2.load_state_dict(back.optimizer)
    for k in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(opt2.state_dict()["state"][0][k], opt.state_dict()["state"][0][k])
    assert torch.equal(back.torch_rng, state.torch_rng)


def test_validation_prompts_one_positive_per_component_and_far_negatives():
    from vplab.masks.geometry import components

    label = torch.zeros(60, 80, dtype=torch.bool)
    label[5:15, 5:15] = True  # component A (100 px)
    label[30:50, 40:70] = True  # component B (600 px): first
    label[52:54, 2:4] = True  # component C (4 px)
    comps, n = components(label)
    assert n == 3 and int((comps == 1).sum()) == 100  # raster order of first pixels
    pts = validation_prompts(label, max_points=2)
    assert pts.positive.shape == (2, 2) and pts.negative.shape == (2, 2)
    (bx, by), (ax, ay) = pts.positive.tolist()
    assert 40 <= bx < 70 and 30 <= by < 50 and 5 <= ax < 15 and 5 <= ay < 15  # largest first
    for x, y in pts.negative.tolist():
        assert not label[int(y), int(x)]
    (x0, y0), (x1, y1) = pts.negative.tolist()
    assert abs(x0 - x1) + abs(y0 - y1) > 10  # spread out, not two adjacent cells
    empty = validation_prompts(torch.zeros(20, 20, dtype=torch.bool))
    assert empty.positive.shape == (0, 2) and empty.negative.shape == (2, 2)


def test_a_multi_class_label_trains_as_one_sample_per_class_split_by_image():
    from vplab.training.data import per_class_samples

    image = np.zeros((8, 8, 3), np.uint8)
    label_map = np.zeros((8, 8), np.uint8)
    label_map[:2], label_map[-2:] = 1, 3  # class 2 absent here
    one = per_class_samples("a" * 64, image, label_map > 0, 1)
    assert [(s.name, s.key) for s in one] == [("a" * 64, "a" * 64)]
    many = per_class_samples("a" * 64, image, label_map, 3)
    assert [s.name for s in many] == ["a" * 64 + ".c1", "a" * 64 + ".c3"]
    assert {s.key for s in many} == {"a" * 64}
    assert np.array_equal(many[1].label, label_map == 3)
    empty = per_class_samples("a" * 64, image, np.zeros((8, 8), np.uint8), 3)
    assert [s.name for s in empty] == ["a" * 64] and not empty[0].label.any()
    samples = [s for i in range(12) for s in per_class_samples(f"{i:064x}", image, label_map, 3)]
    train, val = split_train_val(samples, 0.2, seed=1)
    assert len({s.key for s in val}) == 2 and len(val) == 4  # two images, both classes each
    assert not {s.key for s in train} & {s.key for s in val}


def test_the_classes_of_one_image_share_its_bank_features():
    from vplab.models.sam import build_sam
    from vplab.training.augment import views as all_views
    from vplab.training.bank import build_bank
    from vplab.training.data import per_class_samples

    sam = build_sam("sam_tiny", random_init=True)
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    label_map = np.zeros((32, 32), np.uint8)
    label_map[:8], label_map[-8:] = 1, 2
    samples = per_class_samples("b" * 64, image, label_map, 2)
    bank = build_bank(sam, samples, all_views(1, 0), "frozen")
    assert [item.name for item in bank] == [s.name for s in samples]
    assert bank[0].feature is bank[1].feature  # computed once for the image
    assert not torch.equal(bank[0].label, bank[1].label)
