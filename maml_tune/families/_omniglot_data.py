"""Omniglot on disk: finding the official archives, decoding them once, the decoded-image cache.

See :mod:`maml_tune.families.omniglot` for the family and its pixel convention (strokes bright,
stored as uint8 255 on 0).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from maml_tune.errors import DataError
from maml_tune.families._contract import ProgressCallback
from maml_tune.families._images import (
    convert_user_image,
    decode_all,
    load_arrays,
    opaque,
    read_file,
    read_member,
    save_arrays,
)

BACKGROUND_ARCHIVES = (
    "images_background",
    "images_background_small1",
    "images_background_small2",
)
EVALUATION_ARCHIVES = ("images_evaluation",)
DATA_URL = "https://github.com/brendenlake/omniglot"
DATA_ENV = "MAML_TUNE_DATA"
_CACHE_FORMAT = 1
_EXPECTED = (
    "expected images_background.zip and images_evaluation.zip (or images_background_small1.zip"
    " / images_background_small2.zip, or their extracted folders); download them from "
    f"{DATA_URL} (python/ folder)"
)

ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray


@dataclass(frozen=True)
class OmniglotData:
    """The decoded data set, as :meth:`Omniglot.prepare` loads it and the cache stores it.

    Images are grouped by character: character ``c`` owns
    ``images[starts[c] : starts[c] + counts[c]]``. Characters are sorted by name.
    """

    images: torch.Tensor  # (n_images, size, size) uint8, stroke 255, background 0
    starts: torch.Tensor  # (n_characters,) int64
    counts: torch.Tensor  # (n_characters,) int64
    characters: tuple[str, ...]  # "Alphabet/characterNN"
    evaluation: tuple[bool, ...]  # per character: from images_evaluation
    files: tuple[str, ...]  # per image: "Alphabet/characterNN/drawing.png"


@dataclass(frozen=True)
class Source:
    """One archive or extracted folder, and its PNG members keyed by character."""

    name: str
    path: Path
    members: dict[str, dict[str, str]]  # character -> drawing file name -> member / path
    fingerprint: list[Any]


# --- image transform -------------------------------------------------------------------


def input_to_uint8(item: ImageInput, size: int) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return _to_uint8(_array_image(item), size)
    return convert_user_image(item, lambda image: _to_uint8(image, size))


def _array_image(array: np.ndarray) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3):
        raise DataError(f"expected an (H, W) or (H, W, channels) image array, got {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        array = np.round(np.clip(array, 0.0, 1.0) * 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise DataError(f"expected a uint8, bool or float image array, got dtype {array.dtype}")
    return Image.fromarray(array)


def _to_uint8(image: Image.Image, size: int) -> np.ndarray:
    """The single image transform shared by the data set and :func:`preprocess_images`."""
    grey = opaque(image).convert("L")
    width, height = grey.size
    if width != height:
        square = Image.new("L", (max(width, height),) * 2, 255)
        square.paste(grey, ((square.width - width) // 2, (square.height - height) // 2))
        grey = square
    grey = grey.resize((size, size), Image.Resampling.LANCZOS)
    return 255 - np.asarray(grey, dtype=np.uint8)


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32).div_(255.0)


# --- locating and decoding the archives ------------------------------------------------


def data_dirs(data_dir: str | None) -> list[Path]:
    raw = data_dir or os.environ.get(DATA_ENV)
    if not raw:
        raise DataError(
            f"omniglot: no data folder; set the family option data_dir or ${DATA_ENV}; {_EXPECTED}"
        )
    root = Path(raw).expanduser()
    # $MAML_TUNE_DATA may be a root shared by several families: accept <root>/omniglot too.
    return [root, root / "omniglot"]


def find_sources(roots: list[Path]) -> list[Source]:
    """The archives of the first folder that has any; background ones first."""
    for root in roots:
        sources = []
        for name in BACKGROUND_ARCHIVES + EVALUATION_ARCHIVES:
            archive, folder = root / f"{name}.zip", root / name
            # A zip is complete by construction; a folder may be half extracted.
            if archive.is_file():
                sources.append(_zip_source(name, archive))
            elif folder.is_dir():
                sources.append(_folder_source(name, folder))
        if sources:
            if not any(source.members for source in sources):
                found = ", ".join(s.path.name for s in sources)
                raise DataError(
                    f"omniglot: {found} in {root} hold no <Alphabet>/<character>/*.png drawings; {_EXPECTED}"
                )
            return sources
    raise DataError(f"omniglot: no Omniglot data in {roots[0]}: {_EXPECTED}")


def _zip_source(name: str, path: Path) -> Source:
    members: dict[str, dict[str, str]] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"omniglot: cannot read {path} ({exc}); download it again from {DATA_URL} (python/)"
        ) from exc
    for member in names:
        parts = member.split("/")
        # Skip directory entries and the resource forks macOS adds to zips.
        if len(parts) < 3 or parts[0] == "__MACOSX" or parts[-1].startswith("."):
            continue
        if parts[-1].lower().endswith(".png"):
            members.setdefault(f"{parts[-3]}/{parts[-2]}", {})[parts[-1]] = member
    stat = path.stat()
    return Source(name, path, members, [path.name, stat.st_size, stat.st_mtime_ns])


def _folder_source(name: str, path: Path) -> Source:
    members: dict[str, dict[str, str]] = {}
    fingerprint: list[Any] = [path.name]
    for file in sorted(path.glob("*/*/*")):
        if file.name.startswith(".") or file.suffix.lower() != ".png" or not file.is_file():
            continue
        character = f"{file.parent.parent.name}/{file.parent.name}"
        members.setdefault(character, {})[file.name] = str(file)
        stat = file.stat()
        fingerprint += [f"{character}/{file.name}", stat.st_size, stat.st_mtime_ns]
    return Source(name, path, members, fingerprint)


def decode_sources(sources: list[Source], size: int, progress: ProgressCallback | None) -> OmniglotData:
    # Sources overlap (small1 / small2 / full background share alphabets): each character
    # is read from the first source that has it, so it is never counted twice.
    owner: dict[str, int] = {}
    for index, source in enumerate(sources):
        for character in source.members:
            owner.setdefault(character, index)
    characters = sorted(owner)
    plan = [
        (character, file, owner[character], sources[owner[character]].members[character][file])
        for character in characters
        for file in sorted(sources[owner[character]].members[character])
    ]

    def fail(position: int, exc: Exception) -> DataError:
        character, file, index, _ = plan[position]
        return DataError(
            f"omniglot: cannot decode {character}/{file} in {sources[index].path} ({exc});"
            f" download it again from {DATA_URL} (python/)"
        )

    with contextlib.ExitStack() as stack:
        archives = {
            index: stack.enter_context(zipfile.ZipFile(source.path))
            for index, source in enumerate(sources)
            if source.path.suffix == ".zip"
        }

        def read(position: int) -> bytes:
            _, _, index, member = plan[position]
            return read_member(archives[index], member) if index in archives else read_file(Path(member))

        images = decode_all(
            len(plan),
            (size, size),
            read,
            lambda image: _to_uint8(image, size),
            fail,
            progress,
            "decoding Omniglot images",
        )
    counts = torch.tensor([len(sources[owner[c]].members[c]) for c in characters])
    evaluation = tuple(sources[owner[c]].name in EVALUATION_ARCHIVES for c in characters)
    return _make_data(images, counts, characters, evaluation, [f"{c}/{f}" for c, f, *_ in plan])


def _make_data(
    images: np.ndarray,
    counts: torch.Tensor,
    characters: Sequence[str],
    evaluation: Sequence[bool],
    files: Sequence[str],
) -> OmniglotData:
    starts = torch.cumsum(counts, 0) - counts
    return OmniglotData(
        torch.from_numpy(images), starts, counts, tuple(characters), tuple(evaluation), tuple(files)
    )


# --- cache -----------------------------------------------------------------------------


def cache_key(sources: list[Source], size: int) -> str:
    fingerprint = [_CACHE_FORMAT, size, [source.fingerprint for source in sources]]
    return hashlib.sha256(json.dumps(fingerprint).encode()).hexdigest()[:20]


_CACHE_ARRAYS = ("images", "counts", "characters", "evaluation", "files", "key")


def load_cache(path: Path, key: str, size: int) -> OmniglotData | None:
    """The cached data, or None when absent, stale or unreadable (it is then rebuilt)."""
    saved = load_arrays(path, _CACHE_ARRAYS)
    if saved is None:
        return None
    images, counts = saved["images"], saved["counts"]
    characters, evaluation = saved["characters"].tolist(), saved["evaluation"].tolist()
    files, stored_key = saved["files"].tolist(), str(saved["key"])
    consistent = (
        stored_key == key
        and images.dtype == np.uint8
        and images.shape == (int(counts.sum()), size, size)
        and len(characters) == len(counts) == len(evaluation)
        and len(files) == len(images)
        and bool((counts > 0).all())
    )
    if not consistent:
        return None
    return _make_data(
        images,
        torch.from_numpy(counts.astype(np.int64)),
        characters,
        [bool(e) for e in evaluation],
        files,
    )


def save_cache(path: Path, key: str, data: OmniglotData) -> None:
    arrays = {
        "images": data.images.numpy(),
        "counts": data.counts.numpy(),
        "characters": np.array(data.characters, dtype=str),
        "evaluation": np.array(data.evaluation, dtype=bool),
        "files": np.array(data.files, dtype=str),
        "key": np.array(key),
    }
    save_arrays(path, arrays, "omniglot")
