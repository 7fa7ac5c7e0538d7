"""Tiny image folders in each layout the imagefolder family reads, written by the tests.

Every class has its own random prototype; its images are that prototype, shifted by a pixel
or two, with noise, so that tasks are learnable and no two images are equal.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 20


def write_class(
    folder: Path, seed: int, images: int = 6, rgb: bool = True, suffix: str = ".png", prefix: str = "img"
) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    channels = 3 if rgb else 1
    prototype = rng.integers(0, 256, size=(SIZE, SIZE, channels))
    for index in range(images):
        shifted = np.roll(prototype, shift=tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        noisy = np.clip(shifted + rng.normal(0, 20, shifted.shape), 0, 255).astype(np.uint8)
        array = noisy if rgb else noisy[:, :, 0]
        Image.fromarray(array).save(folder / f"{prefix}{index:02d}{suffix}", quality=95)


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


def write_mini_imagenet(root: Path) -> Path:
    """Ravi & Larochelle's layout: every image in images/, the splits in {train,val,test}.csv."""
    images = root / "images"
    seed = 300
    for split, classes in (("train", 8), ("val", 3), ("test", 3)):
        rows = ["filename,label"]
        for _ in range(classes):
            wnid = f"n{seed:08d}"
            write_class(images, seed=seed, suffix=".jpg", prefix=f"{wnid}0000")
            rows += [f"{wnid}0000{i:02d}.jpg,{wnid}" for i in range(6)]
            seed += 1
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def write_cifar_fs(root: Path) -> Path:
    """CIFAR-FS as distributed: data/<class>/ and splits/bertinetto/{train,val,test}.txt."""
    splits = root / "splits" / "bertinetto"
    splits.mkdir(parents=True)
    seed = 400
    for split, classes in (("train", 8), ("val", 3), ("test", 3)):
        names = [f"{split}_thing{c}" for c in range(classes)]
        for name in names:
            write_class(root / "data" / name, seed=seed)
            seed += 1
        (splits / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root
