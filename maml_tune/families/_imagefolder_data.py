"""Image folders on disk: finding the class folders of each layout, decoding the images once,
the decoded-image cache. See :mod:`maml_tune.families.imagefolder` for the family."""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from maml_tune.core.tasks import SPLITS
from maml_tune.errors import DataError
from maml_tune.families._contract import ProgressCallback
from maml_tune.families._images import (
    IMAGE_SUFFIXES,
    decode_all,
    load_arrays,
    opaque,
    read_file,
)

_CACHE_FORMAT = 1
_CACHE_ARRAYS = ("images", "counts", "classes", "groups", "splits", "files", "key")
_EXPECTED = (
    "expected <class>/<image>, {train,val,test}/<class>/<image> or <group>/<class>/<image>"
    " folders of " + "/".join(s[1:] for s in IMAGE_SUFFIXES) + " images"
)


@dataclass(frozen=True)
class ImageData:
    """The decoded images grouped by class: class ``c`` owns ``images[starts[c] : starts[c] + counts[c]]``."""

    images: torch.Tensor  # (n_images, channels, size, size) uint8
    starts: torch.Tensor  # (n_classes,) int64
    counts: torch.Tensor  # (n_classes,) int64
    classes: tuple[str, ...]  # "class", "group/class" or "train/class", sorted
    groups: tuple[str, ...]  # per class: its group ("" without one)
    splits: tuple[str, ...]  # per class: its folder's split ("" unless pre-split)
    files: tuple[str, ...]  # per image: its path below data_dir


@dataclass(frozen=True)
class Found:
    """The scanned folder: per class, its group, split and image files."""

    layout: str
    classes: dict[str, tuple[str, str, list[Path]]]  # name -> (group, split, files)
    fingerprint: list[Any]


def to_array(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """``(channels, size, size)`` uint8: the one transform of training images and users' images
    (transparent pixels count as white; resized with Lanczos antialiasing)."""
    converted = opaque(image).convert("L" if channels == 1 else "RGB")
    array = np.asarray(converted.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


# --- finding and decoding the images -------------------------------------------------------------


def root_folder(data_dir: str | None) -> Path:
    if not data_dir:
        raise DataError(f"imagefolder: no data folder; set the family option data_dir; {_EXPECTED}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"imagefolder: data_dir {root} is not a folder; {_EXPECTED}")
    return root


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(path: Path) -> list[Path]:
    return sorted(
        p
        for p in path.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def _class_tree(root: Path, where: str) -> tuple[str, dict[str, tuple[str, list[Path]]]]:
    """``("flat" | "grouped", {name: (group, files)})`` for the class folders below ``root``."""
    children = _subdirs(root)
    flat = {child.name: ("", _images_in(child)) for child in children}
    if children and all(files for _, files in flat.values()):
        return "flat", flat
    grouped: dict[str, tuple[str, list[Path]]] = {}
    for group in children:
        for child in _subdirs(group):
            grouped[f"{group.name}/{child.name}"] = (group.name, _images_in(child))
    if (
        grouped
        and all(files for _, files in grouped.values())
        and not any(files for _, files in flat.values())
    ):
        return "grouped", grouped
    seen = ", ".join(c.name + "/" for c in children[:5]) + (" …" if len(children) > 5 else "") or "nothing"
    empty = [name for name, (_, files) in {**flat, **grouped}.items() if not files]
    detail = f"; {empty[0]}/ holds no images" if empty and (flat or grouped) else ""
    raise DataError(f"imagefolder: found {seen} in {where}{detail}; {_EXPECTED}")


BENCHMARK_LAYOUTS = {
    "mini-imagenet": "Ravi & Larochelle's miniImageNet: images/<file> beside train.csv, val.csv and test.csv"
    " (filename,label rows)",
    "cifar-fs": "CIFAR-FS (Bertinetto et al.): data/<class>/<image> with"
    " splits/bertinetto/{train,val,test}.txt (one class per line)",
}
"""The standard few-shot benchmark layouts read as they are distributed (their splits are theirs)."""


def _benchmark_layout(root: Path) -> str | None:
    if (root / "images").is_dir() and all((root / f"{split}.csv").is_file() for split in SPLITS):
        return "mini-imagenet"
    if (root / "data").is_dir() and (root / "splits" / "bertinetto").is_dir():
        return "cifar-fs"
    return None


def _mini_imagenet(root: Path) -> dict[str, tuple[str, str, list[Path]]]:
    classes: dict[str, tuple[str, str, list[Path]]] = {}
    for split in SPLITS:
        table = root / f"{split}.csv"
        try:
            with table.open(newline="") as handle:
                rows = [row for row in csv.reader(handle) if row]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"imagefolder: cannot read {table} ({exc})") from exc
        if rows and [cell.strip().lower() for cell in rows[0]] == ["filename", "label"]:
            rows = rows[1:]
        files: dict[str, list[Path]] = {}
        for number, row in enumerate(rows, start=2):
            if len(row) != 2:
                raise DataError(f"imagefolder: {table} line {number}: expected filename,label, got {row!r}")
            files.setdefault(row[1].strip(), []).append(root / "images" / row[0].strip())
        missing = [f for paths in files.values() for f in paths if not f.is_file()]
        if missing:
            raise DataError(
                f"imagefolder: {len(missing)} images listed in {table.name} are not in {root / 'images'}"
                f" (first: {missing[0].name})"
            )
        classes.update((f"{split}/{label}", ("", split, sorted(paths))) for label, paths in files.items())
    return classes


def _cifar_fs(root: Path) -> dict[str, tuple[str, str, list[Path]]]:
    classes: dict[str, tuple[str, str, list[Path]]] = {}
    for split in SPLITS:
        listing = root / "splits" / "bertinetto" / f"{split}.txt"
        if not listing.is_file():
            raise DataError(
                f"imagefolder: cifar-fs layout without {listing}; {BENCHMARK_LAYOUTS['cifar-fs']}"
            )
        for name in (line.strip() for line in listing.read_text().splitlines()):
            if not name:
                continue
            folder = root / "data" / name
            files = _images_in(folder) if folder.is_dir() else []
            if not files:
                raise DataError(f"imagefolder: class {name!r} of {listing.name} has no images in {folder}")
            classes[f"{split}/{name}"] = ("", split, files)
    return classes


def scan(root: Path, layout: str) -> Found:
    benchmark = _benchmark_layout(root) if layout in ("auto", *BENCHMARK_LAYOUTS) else None
    if layout in BENCHMARK_LAYOUTS and benchmark != layout:
        raise DataError(
            f"imagefolder: layout {layout!r} needs {BENCHMARK_LAYOUTS[layout]}; not found in {root}"
        )
    if benchmark is not None:
        classes = _mini_imagenet(root) if benchmark == "mini-imagenet" else _cifar_fs(root)
        return Found("split", classes, _fingerprint(benchmark, classes, root))
    names = {child.name for child in _subdirs(root)}
    presplit = set(SPLITS) <= names
    if layout == "split" and not presplit:
        missing = ", ".join(sorted(set(SPLITS) - names))
        raise DataError(
            f"imagefolder: layout 'split' needs train/, val/ and test/ in {root} (missing: {missing})"
        )
    classes: dict[str, tuple[str, str, list[Path]]] = {}
    if layout == "split" or (layout == "auto" and presplit):
        kind = "split"
        for split in SPLITS:
            _, tree = _class_tree(root / split, str(root / split))
            classes.update(
                (f"{split}/{name}", (group, split, files)) for name, (group, files) in tree.items()
            )
    else:
        kind, tree = _class_tree(root, str(root))
        if layout not in ("auto", kind):
            raise DataError(
                f"imagefolder: layout {layout!r} requested but {root} is laid out {kind}; {_EXPECTED}"
            )
        classes = {name: (group, "", files) for name, (group, files) in tree.items()}
    return Found(kind, classes, _fingerprint(kind, classes, root))


def _fingerprint(layout: str, classes: dict[str, tuple[str, str, list[Path]]], root: Path) -> list[Any]:
    fingerprint: list[Any] = [layout]
    for name in sorted(classes):
        fingerprint.append(name)
        for file in classes[name][2]:
            stat = file.stat()
            fingerprint += [str(file.relative_to(root)), stat.st_size, stat.st_mtime_ns]
    return fingerprint


def decode(found: Found, size: int, channels: int, progress: ProgressCallback | None) -> ImageData:
    names = sorted(found.classes)
    plan = [file for name in names for file in found.classes[name][2]]

    def fail(position: int, exc: Exception) -> DataError:
        return DataError(f"imagefolder: cannot read {plan[position]} ({exc})")

    decoded_channels = channels or 3
    images = decode_all(
        len(plan),
        (decoded_channels, size, size),
        lambda position: read_file(plan[position]),
        lambda image: to_array(image, size, decoded_channels),
        fail,
        progress,
        "decoding images",
    )
    if channels == 0 and (images[:, 0] == images[:, 1]).all() and (images[:, 0] == images[:, 2]).all():
        images = np.ascontiguousarray(images[:, :1])  # every image is grey: one channel
    counts = torch.tensor([len(found.classes[name][2]) for name in names], dtype=torch.int64)
    root = _common_root(plan)
    return ImageData(
        torch.from_numpy(images),
        torch.cumsum(counts, 0) - counts,
        counts,
        tuple(names),
        tuple(found.classes[name][0] for name in names),
        tuple(found.classes[name][1] for name in names),
        tuple(os.path.relpath(file, root) for file in plan),
    )


def _common_root(files: list[Path]) -> str:
    return os.path.commonpath([str(f) for f in files]) if len(files) > 1 else str(files[0].parent)


def cache_arrays(data: ImageData, key: str) -> dict[str, np.ndarray]:
    return {
        "images": data.images.numpy(),
        "counts": data.counts.numpy(),
        "classes": np.array(data.classes, dtype=str),
        "groups": np.array(data.groups, dtype=str),
        "splits": np.array(data.splits, dtype=str),
        "files": np.array(data.files, dtype=str),
        "key": np.array(key),
    }


def load_cache(path: Path, key: str, size: int) -> ImageData | None:
    saved = load_arrays(path, _CACHE_ARRAYS)
    if saved is None or str(saved["key"]) != key:
        return None
    images, counts = saved["images"], saved["counts"].astype(np.int64)
    classes, groups, splits = (tuple(saved[name].tolist()) for name in ("classes", "groups", "splits"))
    files = tuple(saved["files"].tolist())
    consistent = (
        images.dtype == np.uint8
        and images.ndim == 4
        and images.shape[0] == int(counts.sum()) == len(files)
        and images.shape[2:] == (size, size)
        and len(classes) == len(groups) == len(splits) == len(counts)
        and bool((counts > 0).all())
    )
    if not consistent:
        return None
    counts_t = torch.from_numpy(counts)
    return ImageData(
        torch.from_numpy(images),
        torch.cumsum(counts_t, 0) - counts_t,
        counts_t,
        classes,
        groups,
        splits,
        files,
    )


def cache_key(found: Found, size: int, channels: int) -> str:
    return hashlib.sha256(
        json.dumps([_CACHE_FORMAT, size, channels, found.fingerprint]).encode()
    ).hexdigest()[:20]
