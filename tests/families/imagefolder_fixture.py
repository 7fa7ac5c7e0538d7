"""Tiny image folders in each layout the imagefolder family reads, written by the tests.

Every class has its own random prototype; its images are that prototype, shifted by a pixel
or two, with noise, so that tasks are learnable and no two images are equal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 20


def write_class(folder: Path, seed: int, images: int = 6, rgb: bool = True, suffix: str = ".png") -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    channels = 3 if rgb else 1
    prototype = rng.integers(0, 256, size=(SIZE, SIZE, channels))
    for index in range(images):
        shifted = np.roll(prototype, shift=tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        noisy = np.clip(shifted + rng.normal(0, 20, shifted.shape), 0, 255).astype(np.uint8)
        array = noisy if rgb else noisy[:, :, 0]
        Image.fromarray(array).save(folder / f"img{index:02d}{suffix}")


def write_flat(root: Path, classes: int = 20, rgb: bool = True, images: int = 6) -> Path:
    for c in range(classes):
        write_class(root / f"class{c:02d}", seed=c, images=images, rgb=rgb)
    return root


def write_split(root: Path, rgb: bool = True) -> Path:
    seed = 100
    for split, classes in (("train", 8), ("val", 3), ("test", 3)):
        for c in range(classes):
            write_class(root / split / f"{split}{c:02d}", seed=seed, rgb=rgb)
            seed += 1
    return root


def write_grouped(root: Path, groups: int = 6, per_group: int = 3, rgb: bool = True) -> Path:
    for g in range(groups):
        for c in range(per_group):
            write_class(root / f"group{g}" / f"class{c}", seed=200 + g * per_group + c, rgb=rgb)
    return root
