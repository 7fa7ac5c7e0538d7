"""What the image families share: decoding once, the decoded-image cache, hashed splits and
batched N-way K-shot sampling from images resident on a device.

A decoded data set is a uint8 tensor of images grouped by class: class ``c`` owns
``images[starts[c] : starts[c] + counts[c]]``. Omniglot (:mod:`.omniglot`) and image folders
(:mod:`.imagefolder`) both decode into that shape, cache it here and sample through
:func:`sample_tasks`, so a task of either is drawn by the same code.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from maml_tune.core.tasks import TaskBatch
from maml_tune.errors import ConfigError, DataError
from maml_tune.families._contract import ProgressCallback

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
"""The image files the image families and ``predict`` read."""
DECODE_CHUNK = 512
DECODE_CHUNK_BYTES = 64 * 2**20
"""A chunk of encoded images read before decoding holds at most this many bytes (and
:data:`DECODE_CHUNK` images)."""
ROTATIONS = 4

MAX_IMAGE_SIZE = 1024
"""The largest ``image_size`` an image family accepts (its option's ``max``): images are decoded
and kept resident at ``image_size`` x ``image_size`` pixels, ~1 MiB a channel at this size."""
MAX_IMAGE_PIXELS = 40_000_000
"""An image file may hold at most this many pixels (width x height) ..."""
MAX_SQUARE_SIDE = 8_000
"""... and neither side may exceed this: an image is padded or resized as a square of its longer
side, so a 1 x 40000 image would otherwise cost as much as a 40000 x 40000 one."""
MAX_FILE_BYTES = 32 * 2**20
"""An image file (or zip member, uncompressed) may hold at most this many bytes."""
MAX_ZIP_RATIO = 200
"""A zip member larger than 1 MiB uncompressed may be at most this many times its compressed size
(PNG and JPEG data hardly compresses; far higher ratios are zip bombs)."""


class RefusedImage(ValueError):
    """An image or archive member that is unreadable or over the limits above; its message says
    what is allowed."""


def check_dimensions(width: int, height: int) -> None:
    """Raise :class:`RefusedImage` for an image whose pixels or padded square exceed the limits."""
    if width * height > MAX_IMAGE_PIXELS or max(width, height) > MAX_SQUARE_SIDE:
        raise RefusedImage(
            f"image is {width} x {height} pixels; at most {MAX_IMAGE_PIXELS} pixels and"
            f" {MAX_SQUARE_SIDE} pixels a side are allowed"
        )


def check_member(info: zipfile.ZipInfo) -> None:
    """Raise :class:`RefusedImage` for a zip member that declares too many bytes or too high a ratio."""
    if info.file_size > MAX_FILE_BYTES:
        raise RefusedImage(
            f"member declares {info.file_size} bytes uncompressed; at most {MAX_FILE_BYTES} are allowed"
        )
    if info.file_size > 2**20 and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
        raise RefusedImage(
            f"member compresses {info.file_size / max(info.compress_size, 1):.0f}:1;"
            f" at most {MAX_ZIP_RATIO}:1 is allowed for members over 1 MiB"
        )


def read_member(archive: zipfile.ZipFile, member: str) -> bytes:
    """The bytes of ``member``, checked with :func:`check_member` and read at most
    :data:`MAX_FILE_BYTES` + 1 at a time (the header's sizes are not trusted alone)."""
    info = archive.getinfo(member)
    check_member(info)
    with archive.open(info) as handle:
        raw = handle.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise RefusedImage(
            f"member holds more than {MAX_FILE_BYTES} bytes uncompressed, the limit for an image"
        )
    return raw


def read_file(path: Path) -> bytes:
    """The bytes of the image file ``path``, at most :data:`MAX_FILE_BYTES` (else :class:`RefusedImage`)."""
    with open(path, "rb") as handle:
        raw = handle.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise RefusedImage(f"file holds more than {MAX_FILE_BYTES} bytes, the limit for an image")
    return raw


def open_checked(raw: bytes) -> Image.Image:
    """``Image.open`` of ``raw`` (the header only) with its size checked by :func:`check_dimensions`;
    PIL's own decompression-bomb warning is an error here (it would be a second line on stderr)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(raw))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise RefusedImage(
                f"image declares more than {Image.MAX_IMAGE_PIXELS} pixels (Pillow's decompression-bomb"
                f" limit); at most {MAX_IMAGE_PIXELS} pixels and {MAX_SQUARE_SIDE} pixels a side are allowed"
            ) from exc
        except UnidentifiedImageError as exc:
            raise RefusedImage(f"not an image file Pillow can read ({', '.join(IMAGE_SUFFIXES)})") from exc
    try:
        check_dimensions(*image.size)
    except RefusedImage:
        image.close()
        raise
    return image


def convert_user_image(
    item: str | os.PathLike | Image.Image, convert: Callable[[Image.Image], np.ndarray]
) -> np.ndarray:
    """``convert`` of a user's own image (a path or a PIL image: ``predict``, the Python API),
    size-checked as data set images are; any failure is one :class:`DataError` naming it."""
    try:
        if isinstance(item, Image.Image):
            check_dimensions(*item.size)
            return convert(item)
        with open_checked(read_file(Path(item))) as image:
            return convert(image)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image {item}: {exc}") from exc


def physical_memory() -> int:
    """Bytes of RAM on this machine (a decoded data set must fit well inside it)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/maml-tune`` if that is an absolute path, else ``~/.cache/maml-tune``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "maml-tune"


def resolve_cache_dir(option_value: str | None) -> Path:
    return Path(option_value).expanduser() if option_value else default_cache_dir()


# --- decoding ----------------------------------------------------------------------------


def opaque(image: Image.Image) -> Image.Image:
    """``image`` with transparent pixels composited onto white (they would turn black, and
    read as ink or as dark content, when converted straight to "L" or "RGB")."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    return image


def decode_all(
    count: int,
    shape: tuple[int, ...],
    read: Callable[[int], bytes],
    convert: Callable[[Image.Image], np.ndarray],
    fail: Callable[[int, Exception], DataError],
    progress: ProgressCallback | None,
    what: str,
) -> np.ndarray:
    """``count`` images of ``shape`` (uint8): ``convert(Image.open(read(i)))`` for each ``i``.

    ``read`` runs on the calling thread (zip files are not shared across threads), and so does
    opening each image's header, whose size is checked (:func:`open_checked`) before anything
    is decoded; decoding and resizing release the GIL, so they run on a thread pool. Images are
    read in chunks of at most :data:`DECODE_CHUNK` images and :data:`DECODE_CHUNK_BYTES` bytes.
    A read (file, zip member, :class:`RefusedImage`) or decode error is raised as
    ``fail(position, exc)``. Reports
    ``progress(done, count, what)`` per chunk.
    """
    needed, memory = count * math.prod(shape), physical_memory()
    if needed > memory // 2:
        raise ConfigError(
            f"{what}: {count} images of {' x '.join(map(str, shape))} pixels need {needed / 2**30:.1f} GiB,"
            f" more than half of this machine's {memory / 2**30:.1f} GiB; lower image_size"
        )
    images = np.empty((count, *shape), dtype=np.uint8)

    def opened(position: int) -> tuple[Image.Image, int]:
        try:
            raw = read(position)
            return open_checked(raw), len(raw)
        except (OSError, UnidentifiedImageError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
            raise fail(position, exc) from exc

    def decode(position: int, image: Image.Image) -> None:
        try:
            with image:
                images[position] = convert(image)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise fail(position, exc) from exc

    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        position = 0
        while position < count:
            if progress is not None:
                progress(position, count, what)
            chunk: list[tuple[int, Image.Image]] = []
            size = 0
            try:
                while position < count and len(chunk) < DECODE_CHUNK and size < DECODE_CHUNK_BYTES:
                    image, nbytes = opened(position)
                    chunk.append((position, image))
                    size += nbytes
                    position += 1
                list(pool.map(decode, *zip(*chunk)))
            finally:
                for _, image in chunk:
                    image.close()
    if progress is not None:
        progress(count, count, what)
    return images


# --- cache -------------------------------------------------------------------------------


def load_arrays(path: Path, names: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The arrays ``names`` of the cache file ``path``, or None when it is absent or damaged."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {name: saved[name] for name in names}
    except Exception:  # any damage to the file just means: rebuild it
        return None


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray], family: str) -> None:
    """Write the cache file ``path``; a failure is a warning (the data is decoded again next run).

    Written to a temporary file and renamed, so a crash or a concurrent run never leaves a
    half-written cache under the real name.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{family}-", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez_compressed(file, **arrays)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as exc:
        message = f"{family}: could not write the cache {path} ({exc}); decoding again next run"
        warnings.warn(message, stacklevel=3)


# --- splits ------------------------------------------------------------------------------


def split_units(units: Sequence[str], held_out: Mapping[str, float], salt: str = "") -> dict[str, str] | None:
    """The held-out split of each held-out unit (the others are ``"train"``); None when no unit
    is left for ``"train"``.

    Units are ordered by the SHA-256 of ``salt + name``; for each held-out split in order,
    the next ``max(1, floor(fraction * U + 0.5))`` of the U units go to it. The order depends
    only on the names (and the salt), so adding a unit moves few others.
    """
    ordered = sorted(units, key=lambda unit: (hashlib.sha256((salt + unit).encode()).hexdigest(), unit))
    unit_split: dict[str, str] = {}
    taken = 0
    for split, fraction in held_out.items():
        count = max(1, math.floor(fraction * len(ordered) + 0.5))
        unit_split.update((unit, split) for unit in ordered[taken : taken + count])
        taken += count
    return None if taken >= len(ordered) else unit_split


# --- sampling ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceImages:
    """Decoded images and their class ranges, resident on one device."""

    images: torch.Tensor  # (n_images, C, H, W) or (n_images, H, W) uint8
    starts: torch.Tensor  # (n_classes,) int64
    counts: torch.Tensor  # (n_classes,) int64
    pixels: torch.Tensor  # (4 or 8, H*W): source pixel of each output pixel (turns, then flipped)


def pixel_permutations(size: int) -> torch.Tensor:
    """``(8, size*size)``: for quarter turns 0-3 and then the same after a horizontal flip, the
    source pixel of each output pixel. Rotations and flips are gathers with these rows."""
    grid = torch.arange(size * size).view(size, size)
    turns = [grid.rot90(turn) for turn in range(ROTATIONS)]
    return torch.stack([t.reshape(-1) for t in turns + [t.flip(-1) for t in turns]])


@dataclass(frozen=True)
class SplitClasses:
    """The classes of one split: their indices and groups on the device, and the image counts
    :func:`sample_tasks` checks, kept on the host so that checking them never waits on a GPU."""

    index: torch.Tensor  # (n,) class indices into DeviceImages
    groups: torch.Tensor  # (n,) group id of each class
    fewest: int  # images of the split's class with the fewest
    most: int  # ... and with the most

    @classmethod
    def of(
        cls, index: np.ndarray, counts: torch.Tensor, groups: Sequence[int], device: torch.device
    ) -> SplitClasses:
        """``index`` (class indices), with ``counts`` the host image counts of every class."""
        chosen = counts[torch.from_numpy(index)]
        return cls(
            torch.from_numpy(index).to(device),
            torch.tensor(list(groups), dtype=torch.int64, device=device),
            int(chosen.min()) if len(chosen) else 0,
            int(chosen.max()) if len(chosen) else 0,
        )


@dataclass(frozen=True)
class TaskShape:
    """How :func:`sample_tasks` draws: N-way, K support and Q query images per class."""

    n_way: int
    k_shot: int
    k_query: int
    rotate: bool = False  # each class turned by 0/90/180/270 degrees is a class of its own
    flip: bool = False  # each image mirrored left-right with probability 1/2


def sample_tasks(
    family: str,
    split: str,
    data: DeviceImages,
    classes: SplitClasses,
    shape: TaskShape,
    n_tasks: int,
    generator: torch.Generator,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    *,
    by_group: bool = False,
    hint: str = "",
) -> TaskBatch:
    """``n_tasks`` tasks whose classes are drawn from ``classes``.

    One batched draw: N distinct classes per task by ranking uniform noise, then
    ``k_shot + k_query`` distinct images per class the same way. With ``by_group`` every
    task first draws one group, among those with at least N classes, and its N classes from
    that group. ``to_input`` turns the gathered uint8 images ``(..., C, H, W)`` into the
    model's float32 input.
    """
    device = data.images.device
    n_classes = len(classes.index) * (ROTATIONS if shape.rotate else 1)
    per_class = shape.k_shot + shape.k_query
    if shape.n_way > n_classes:
        raise ConfigError(
            f"{family}: split {split!r} has {n_classes} classes, fewer than n_way={shape.n_way}; lower n_way"
            + (f" or {hint}" if hint else "")
        )
    if classes.fewest < per_class:
        raise ConfigError(
            f"{family}: k_shot + k_query = {per_class} but some classes of split {split!r}"
            f" have only {classes.fewest} images; lower k_shot or k_query"
        )
    most = classes.most

    noise = torch.rand(n_tasks, n_classes, generator=generator, device=device)
    if by_group:
        noise = _within_one_group(family, split, noise, classes.groups, shape, generator)
    picked = noise.topk(shape.n_way, dim=1).indices  # (T, N) distinct, in random order
    class_index = classes.index[picked // ROTATIONS if shape.rotate else picked]
    starts, counts = data.starts[class_index], data.counts[class_index]

    # Rank noise over every slot a class could have; slots past its count can never win, so
    # the picks are distinct images of that class.
    slots = torch.arange(most, device=device)
    noise = torch.rand(n_tasks, shape.n_way, most, generator=generator, device=device)
    noise = noise.masked_fill(slots >= counts.unsqueeze(-1), 2.0)
    image_index = starts.unsqueeze(-1) + noise.topk(per_class, dim=-1, largest=False).indices

    # Per class (T, N) when only rotating, per image (T, N, K+Q) when flipping: an index into data.pixels.
    view = picked % ROTATIONS if shape.rotate else None
    if shape.flip:
        flipped = torch.rand(n_tasks, shape.n_way, per_class, generator=generator, device=device) < 0.5
        view = ROTATIONS * flipped + (0 if view is None else view.unsqueeze(-1))
    support, query = image_index.split([shape.k_shot, shape.k_query], dim=-1)
    if view is not None and view.dim() == 3:
        support_view, query_view = view.split([shape.k_shot, shape.k_query], dim=-1)
    else:
        support_view = query_view = view
    labels = torch.arange(shape.n_way, device=device)
    return TaskBatch(
        _gather(data, support, support_view, to_input),
        labels.repeat_interleave(shape.k_shot).repeat(n_tasks, 1),
        _gather(data, query, query_view, to_input),
        labels.repeat_interleave(shape.k_query).repeat(n_tasks, 1),
    )


def _within_one_group(
    family: str, split: str, noise: torch.Tensor, groups: torch.Tensor, shape: TaskShape, generator
) -> torch.Tensor:
    """``noise`` with every class outside each task's drawn group pushed below all inside it."""
    per_class_group = groups.repeat_interleave(ROTATIONS) if shape.rotate else groups
    sizes = torch.bincount(per_class_group)
    eligible = (sizes >= shape.n_way).nonzero().squeeze(-1)
    if len(eligible) == 0:
        raise ConfigError(
            f"{family}: no group of split {split!r} has n_way={shape.n_way} classes"
            f" (largest: {int(sizes.max())}); lower n_way or draw tasks across groups"
        )
    pick = torch.randint(len(eligible), (noise.shape[0],), generator=generator, device=noise.device)
    chosen = eligible[pick]
    return noise.masked_fill(per_class_group.unsqueeze(0) != chosen.unsqueeze(1), -1.0)


def _gather(data: DeviceImages, index: torch.Tensor, view: torch.Tensor | None, to_input) -> torch.Tensor:
    """Images ``index`` (T, N, M), turned/flipped per ``view`` ((T, N) or (T, N, M)) → (T, N*M, C, H, W)."""
    n_tasks, n_way, per_class = index.shape
    *channels, height, width = data.images.shape[1:]
    n_channels = channels[0] if channels else 1
    # index_select on the flat index is far faster than advanced indexing here.
    x = data.images.index_select(0, index.reshape(-1)).view(n_tasks, n_way, per_class, n_channels, -1)
    if view is not None:
        # A rotation or flip is a fixed permutation of the pixels: one gather for every image.
        pixels = data.pixels[view]
        if view.dim() == 2:
            pixels = pixels.unsqueeze(2)
        x = x.gather(-1, pixels.unsqueeze(3).expand(n_tasks, n_way, per_class, n_channels, -1))
    return to_input(x.view(n_tasks, n_way * per_class, n_channels, height, width))
