"""Omniglot N-way K-shot character classification (Lake et al. 2015), as in Finn et al. 2017.

The data is the official release from https://github.com/brendenlake/omniglot (``python/``
folder): ``images_background.zip`` and ``images_evaluation.zip``, or the smaller
``images_background_small1.zip`` / ``images_background_small2.zip``, zipped or extracted.
Each holds ``<archive>/<Alphabet>/<characterNN>/<drawing>.png``: 105x105 black-on-white
drawings, 20 per character.

Pixel convention everywhere (cache, tasks, :meth:`Omniglot.preprocess`): strokes are bright
and the background is dark, i.e. the PNG is inverted — stored as uint8 (stroke 255,
background 0) and handed to models as float32 in [0, 1] (stroke 1.0, background 0.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from maml_tune.core.tasks import SPLITS, TaskBatch
from maml_tune.errors import ConfigError
from maml_tune.families._contract import ProgressCallback, TaskFamily, option
from maml_tune.families._images import (
    MAX_IMAGE_SIZE,
    ROTATIONS,
    DeviceImages,
    SplitClasses,
    TaskShape,
    default_cache_dir,
    pixel_permutations,
    resolve_cache_dir,
    sample_tasks,
    split_units,
)
from maml_tune.families._omniglot_data import (
    DATA_ENV,
    ImageInput,
    OmniglotData,
    cache_key,
    data_dirs,
    decode_sources,
    find_sources,
    input_to_uint8,
    load_cache,
    save_cache,
    to_float,
)

__all__ = [
    "DATA_ENV",
    "ImageInput",
    "Omniglot",
    "OmniglotData",
    "OmniglotOptions",
    "default_cache_dir",
    "preprocess_images",
]

_MIN_ALPHABETS_FOR_AUTO = 5


@dataclass(frozen=True)
class OmniglotOptions:
    n_way: int = option(5, "classes per task (N)", min=2)
    k_shot: int = option(1, "support images per class (K)", min=1)
    k_query: int = option(15, "query images per class", min=1)
    image_size: int = option(
        28, "images are resized to image_size x image_size pixels", min=8, max=MAX_IMAGE_SIZE
    )
    rotations: bool = option(
        True, "meta-train only: each character rotated by 0/90/180/270 degrees is its own class"
    )
    within_alphabet: bool = option(
        False, "draw all N classes of a task from one alphabet (Lake et al.'s 20-way protocol)"
    )
    split: str = option("auto", "unit of the train/val/test split", choices=("auto", "alphabet", "character"))
    val_fraction: float = option(0.1, "share of split units held out for meta-val", min=0.01, max=0.4)
    test_fraction: float = option(
        0.2, "share of split units held out for meta-test (no evaluation set)", min=0.01, max=0.4
    )
    data_dir: str | None = option(None, "folder with the Omniglot archives (default: $MAML_TUNE_DATA)")
    cache_dir: str | None = option(
        None, "decoded-image cache (default: $XDG_CACHE_HOME/maml-tune or ~/.cache/maml-tune)"
    )


@dataclass(frozen=True)
class _DeviceData:
    """What :meth:`Omniglot.sample` needs, resident on one device."""

    images: DeviceImages
    split_characters: dict[str, SplitClasses]  # grouped by alphabet


class Omniglot(TaskFamily):
    """Omniglot: each task is N characters, K support and ``k_query`` query drawings each.

    Classes are characters; with ``rotations`` on, meta-train also treats each character
    rotated by 90, 180 and 270 degrees as a class of its own (Finn et al.), so it has four
    times as many classes; meta-val and meta-test are never rotated. Within a task the N
    classes get labels 0..N-1 in random order. Characters present in several sources (the
    two small background sets share Greek and Latin) are read once, from the first source
    in the order images_background, _small1, _small2, images_evaluation.

    Split rule (deterministic, depends only on the names present):

    * When both background characters (any ``images_background*`` source) and
      ``images_evaluation`` are present, meta-test is exactly the evaluation characters and
      the background characters are split into meta-train and meta-val.
      ``test_fraction`` is unused.
    * Otherwise all characters are split into meta-train, meta-val and meta-test.

    The pool is split by *unit*: whole alphabets (``split="alphabet"``) or single
    characters (``split="character"``). ``split="auto"`` uses alphabets when the pool holds
    at least 5 alphabets, else characters. Units are ordered by the SHA-256 of their name
    (``"Greek"`` or ``"Greek/character01"``); the first ``max(1, floor(test_fraction * U +
    0.5))`` of the U units are meta-test (when split from the pool), the next
    ``max(1, floor(val_fraction * U + 0.5))`` meta-val, and the rest meta-train. No
    character is in two splits. A :class:`~maml_tune.errors.ConfigError` is raised when
    meta-train would get no unit.
    """

    name = "omniglot"
    description = "Omniglot handwritten characters, N-way K-shot (Lake 2015; Finn et al. 2017)"
    kind = "classification"
    Options = OmniglotOptions
    data = (
        "the official Omniglot release, https://github.com/brendenlake/omniglot (python/ folder):"
        " images_background.zip and images_evaluation.zip, or images_background_small1.zip /"
        " images_background_small2.zip, zipped or extracted, in data_dir (or $MAML_TUNE_DATA)"
    )

    def __init__(self, options: Any = None):
        super().__init__(options)
        self._data: OmniglotData | None = None
        self._splits: dict[str, np.ndarray] = {}
        self._devices: dict[str, _DeviceData] = {}

    @property
    def input_shape(self) -> tuple[int, ...]:
        size = self.options.image_size
        return (1, size, size)

    @property
    def output_size(self) -> int:
        return self.options.n_way

    def default_architecture(self) -> dict[str, Any]:
        return {"kind": "conv", "blocks": 4, "channels": 64, "norm": "batch", "downsample": "pool"}

    def literature_config(self) -> dict[str, Any]:
        """Finn et al. 2017, appendix A.1; 20-way settings from ``n_way >= 20``, else 5-way."""
        if self.options.n_way >= 20:
            inner_lr, inner_steps, test_steps, meta_batch = 0.1, 5, 5, 16
        else:
            inner_lr, inner_steps, test_steps, meta_batch = 0.4, 1, 3, 32
        return {
            "algo.algorithm": "maml",
            "algo.inner_lr": inner_lr,
            "algo.inner_steps": inner_steps,
            "algo.test_inner_steps": test_steps,
            "train.meta_batch": meta_batch,
            "train.meta_lr": 1e-3,
        }

    def prepare(self, progress: ProgressCallback | None = None) -> None:
        """Load the decoded images (from the cache, else by decoding the archives once).

        Called once before sampling (:meth:`sample` calls it when it was not). The first
        decode reports ``progress(done, total, what)`` and writes the cache; later runs load
        the cache in about a second. Raises :class:`~maml_tune.errors.DataError` when the
        data is missing or unreadable, :class:`~maml_tune.errors.ConfigError` when the split
        options leave meta-train empty.
        """
        if self._data is not None:
            return
        sources = find_sources(data_dirs(self.options.data_dir))
        size = self.options.image_size
        key = cache_key(sources, size)
        path = resolve_cache_dir(self.options.cache_dir) / "omniglot" / f"omniglot-{size}px-{key}.npz"
        data = load_cache(path, key, size)
        if data is None:
            data = decode_sources(sources, size, progress)
            save_cache(path, key, data)
        self._splits = _assign_splits(data, self.options)
        self._data = data

    def dataset(self) -> OmniglotData:
        """The decoded images and their names; prepares the family when needed."""
        self.prepare()
        assert self._data is not None
        return self._data

    def characters(self, split: str) -> tuple[str, ...]:
        """Names (``"Alphabet/characterNN"``) of the characters of ``split``, sorted."""
        data = self.dataset()
        return tuple(data.characters[i] for i in self._split_indices(split))

    def sample(self, split: str, n_tasks: int, generator: torch.Generator, device: torch.device) -> TaskBatch:
        """Sample ``n_tasks`` N-way tasks of ``split``; called every meta-iteration and for eval.

        One batched draw: N distinct classes per task by ranking uniform noise, then
        ``k_shot + k_query`` distinct drawings per class the same way, gathered from the
        uint8 images already resident on ``device`` (:func:`~maml_tune.families._images.sample_tasks`);
        with ``within_alphabet`` each task's classes come from one alphabet of the split.
        """
        o = self.options
        self.prepare()
        self._split_indices(split)
        state = self._on_device(torch.device(device))
        shape = TaskShape(o.n_way, o.k_shot, o.k_query, rotate=o.rotations and split == "train")
        return sample_tasks(
            "omniglot",
            split,
            state.images,
            state.split_characters[split],
            shape,
            n_tasks,
            generator,
            to_float,
            by_group=o.within_alphabet,
            hint="change split / val_fraction / test_fraction",
        )

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Turn users' own images into model input ``(B, 1, H, W)`` float32, as training sees it.

        Called by prediction code. Accepts file paths, PIL images or numpy arrays in the
        PNGs' polarity (dark strokes on white); see :func:`preprocess_images`.
        """
        return preprocess_images(images, self.options.image_size)

    def _split_indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ConfigError(f"omniglot: unknown split {split!r} (expected one of {SPLITS})")
        return self._splits[split]

    def _on_device(self, device: torch.device) -> _DeviceData:
        # One resident copy per device: moving the images every call would dominate sampling.
        key = str(device)
        if key not in self._devices:
            data = self.dataset()
            alphabet_of = [name.split("/")[0] for name in data.characters]
            alphabet_ids = {name: i for i, name in enumerate(sorted(set(alphabet_of)))}
            self._devices[key] = _DeviceData(
                images=DeviceImages(
                    data.images.to(device),
                    data.starts.to(device),
                    data.counts.to(device),
                    pixel_permutations(self.options.image_size)[:ROTATIONS].to(device),
                ),
                split_characters={
                    split: SplitClasses.of(
                        chars, data.counts, [alphabet_ids[alphabet_of[c]] for c in chars], device
                    )
                    for split, chars in self._splits.items()
                },
            )
        return self._devices[key]


def preprocess_images(images: Sequence[ImageInput], image_size: int) -> torch.Tensor:
    """Images → ``(B, 1, image_size, image_size)`` float32 in [0, 1], strokes 1.0.

    Exactly the transform training data goes through: greyscale (transparent pixels count
    as white), padded with white to a centred square, resized with Lanczos antialiasing,
    inverted, divided by 255. Numpy arrays are uint8 (0-255), bool, or float (0-1),
    shaped ``(H, W)`` or ``(H, W, channels)``.
    """
    arrays = [input_to_uint8(item, image_size) for item in images]
    if not arrays:
        return torch.zeros(0, 1, image_size, image_size)
    return to_float(torch.from_numpy(np.stack(arrays))).unsqueeze(1)


# --- splits ----------------------------------------------------------------------------


def _assign_splits(data: OmniglotData, options: OmniglotOptions) -> dict[str, np.ndarray]:
    """Character indices per split, following the rule in :class:`Omniglot`'s docstring."""
    everything = np.arange(len(data.characters))
    evaluation = np.array(data.evaluation, dtype=bool)
    if evaluation.any() and not evaluation.all():
        pool, held_out = everything[~evaluation], {"val": options.val_fraction}
        fixed = {"test": everything[evaluation]}
    else:
        pool = everything
        held_out = {"test": options.test_fraction, "val": options.val_fraction}
        fixed = {}

    names = [data.characters[i] for i in pool]
    alphabets = sorted({name.split("/")[0] for name in names})
    by_alphabet = options.split == "alphabet" or (
        options.split == "auto" and len(alphabets) >= _MIN_ALPHABETS_FOR_AUTO
    )
    units = alphabets if by_alphabet else sorted(names)
    unit_split = split_units(units, held_out)
    if unit_split is None:
        kind = "alphabets" if by_alphabet else "characters"
        raise ConfigError(
            f"omniglot: {len(units)} {kind} are too few to split into "
            f"{', '.join(['train', *held_out])}; lower val_fraction / test_fraction, use"
            " split='character', or add data"
        )

    def split_of(name: str) -> str:
        return unit_split.get(name.split("/")[0] if by_alphabet else name, "train")

    splits = {split: pool[[split_of(n) == split for n in names]] for split in ("train", *held_out)}
    return {**splits, **fixed}
