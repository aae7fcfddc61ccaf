"""The precomputed augmentation bank: fixed views of each training image.

Frozen-encoder methods never run the encoder in the training loop, so augmentation
cannot happen on the fly; instead each image contributes a fixed set of views (the 8
dihedral flips/rotations plus a few photometric variants) whose embeddings are computed
once and cached like any embedding (METHODS.md section 6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIHEDRAL = [f"rot{k * 90}{'-flip' if f else ''}" for f in (False, True) for k in range(4)]
PHOTOMETRIC = ["gamma0.7", "gamma1.4", "contrast0.7"]


@dataclass(frozen=True)
class View:
    name: str  # e.g. "rot90-flip", "gamma0.7"

    def apply(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.name.startswith("rot"):
            k = int(self.name[3:].split("-")[0]) // 90
            if self.name.endswith("-flip"):
                image, label = image[:, ::-1], label[:, ::-1]
            return np.ascontiguousarray(np.rot90(image, k)), np.ascontiguousarray(
                np.rot90(label, k)
            )
        x = image.astype(np.float32) / 255.0
        if self.name.startswith("gamma"):
            x = x ** float(self.name[5:])
        elif self.name.startswith("contrast"):
            c = float(self.name[8:])
            x = (x - x.mean()) * c + x.mean()
        else:
            raise ValueError(f"unknown view {self.name!r}")
        return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8), label


def views(n_dihedral: int = 8, n_photometric: int = 2) -> list[View]:
    """The bank's views; the identity view always comes first."""
    if not 1 <= n_dihedral <= 8 or not 0 <= n_photometric <= len(PHOTOMETRIC):
        raise ValueError("n_dihedral must be 1..8 and n_photometric 0..3")
    return [View(n) for n in DIHEDRAL[:n_dihedral] + PHOTOMETRIC[:n_photometric]]
