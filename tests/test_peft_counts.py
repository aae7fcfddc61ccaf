"""Trainable parameter counts of every PEFT method on SAM ViT-B (METHODS.md sections 3-5).

Uses ``describe`` (architecture built on the meta device: no weights, ~0.05 s), i.e. the
same path as ``vplab peft describe``. ``test_peft_encoder.py`` checks the encoder methods
on a real ViT-B build too.
"""

import pytest

from vplab.peft.describe import describe, describe_lines

EXPECTED_VIT_B = {
    # METHODS.md section 5 reference table (must match exactly).
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
    "cellseg1-pf": 171_008,
    "cellseg1-md-pf": 23_552,
    "samed": 4_212_016,
    # Encoder methods without a reference row, derived from the architecture:
    "qlora": 5_244_208,  # same adapter as lora
    "ssf": 4_267_312,  # 12 x 2 x (2304 + 768 + 3072 + 768 + 768 + 768) + 4,064,560
    "adaptformer": 5_254_204,  # 12 x (768*64+64 + 64*768+768 + 1) + 4,064,560
    "attn-tune": 32_505_648,  # 12 x (qkv + proj) + rel-pos tables + 4,064,560
    # Decoder methods (sections 3 and 4).
    "ptsam-md": 2_048,
    "ptsam": 75_776,
    "epeft-adapter": 33_088,
    "epeft-ia3": 6_400,
}


@pytest.mark.parametrize("method", sorted(EXPECTED_VIT_B))
def test_trainable_count_vit_b(method):
    pieces, total = describe(method, "vit_b")
    assert total == EXPECTED_VIT_B[method]
    assert sum(pieces.values()) == total


def test_describe_lines_format():
    lines = describe_lines("lora", "sam_vit_b")
    assert lines[-1] == "trainable_params: 5244208"
    assert lines[0] == "recipes: vplab, micro-sam"
    assert (
        "recipe.micro-sam.lr: 1e-05" in lines and "recipe.micro-sam.corrective_rounds: 7" in lines
    )
    assert "lora: 1179648" in lines
    assert all(": " in line for line in lines)
