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


def random_view(image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A fresh random augmentation of one training image (``Recipe.augmentation="online"``):
    the PTSAM paper's list - rotation, crop, elastic deformation, flips, Gaussian noise,
    gamma, brightness and contrast - each applied at random, for methods whose encoder
    runs in the loop anyway (so augmenting per step costs nothing extra).

    torchvision's v2 transforms move the label with the image (nearest neighbour for the
    mask); randomness comes from torch's global generator, which the trainer seeds and
    checkpoints, so a resumed run draws the same views.
    """
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    h, w = label.shape
    geometric = v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomApply([v2.RandomRotation(180.0)], p=0.5),
            v2.RandomApply([v2.RandomResizedCrop((h, w), scale=(0.5, 1.0), antialias=True)], p=0.5),
            v2.RandomApply([v2.ElasticTransform(alpha=30.0, sigma=5.0)], p=0.2),
        ]
    )
    img = tv_tensors.Image(torch.as_tensor(np.ascontiguousarray(image)).permute(2, 0, 1))
    mask = tv_tensors.Mask(torch.as_tensor(np.ascontiguousarray(label)))
    img, mask = geometric(img, mask)
    x = v2.functional.to_dtype(img, torch.float32, scale=True)
    x = v2.RandomApply([v2.ColorJitter(brightness=0.25, contrast=0.25)], p=0.5)(x)
    if float(torch.rand(())) < 0.3:
        x = x.clamp(0, 1) ** float(torch.empty(()).uniform_(0.7, 1.5))
    if float(torch.rand(())) < 0.3:
        x = v2.GaussianNoise(sigma=float(torch.empty(()).uniform_(0.0, 0.05)))(x)
    out = (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return np.ascontiguousarray(out), mask.numpy().astype(bool)
