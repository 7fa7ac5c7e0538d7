"""Your own labelled images, N-way K-shot: one folder per class.

Three layouts under ``data_dir`` (``layout="auto"`` tells them apart):

* **flat** ``<class>/<image>``: the classes are split into meta-train/val/test here;
* **split** ``{train,val,test}/<class>/<image>`` (or ``{train,val,test}/<group>/<class>/<image>``):
  the splits are the folders';
* **grouped** ``<group>/<class>/<image>`` (tieredImageNet's categories, Omniglot's alphabets):
  whole groups are split (``split="auto"`` when there are at least 5), and ``group_tasks``
  draws all N classes of a task from one group.

Images (png, jpg, bmp, gif, tiff, webp) are resized to ``image_size`` squared, greyscale or RGB
(``channels``: detected as greyscale when every image is), decoded once into the cache and
sampled from a uint8 tensor on the device. Inputs are normalised per channel with the mean and
standard deviation of the meta-train images.
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
from maml_tune.families._imagefolder_data import (
    BENCHMARK_LAYOUTS,
    ImageData,
    cache_arrays,
    cache_key,
    decode,
    load_cache,
    root_folder,
    scan,
    to_array,
)
from maml_tune.families._images import (
    IMAGE_SUFFIXES,
    MAX_IMAGE_SIZE,
    DeviceImages,
    SplitClasses,
    TaskShape,
    convert_user_image,
    pixel_permutations,
    resolve_cache_dir,
    sample_tasks,
    save_arrays,
    split_units,
)

LAYOUTS = ("auto", "flat", "split", "grouped", *BENCHMARK_LAYOUTS)
_MIN_GROUPS_FOR_AUTO = 5


@dataclass(frozen=True)
class ImageFolderOptions:
    data_dir: str | None = option(None, "root folder of the images (see layout)")
    layout: str = option(
        "auto",
        "flat <class>/<image>, split {train,val,test}/..., grouped <group>/<class>/<image>,"
        " mini-imagenet, cifar-fs, or auto",
        choices=LAYOUTS,
    )
    n_way: int = option(5, "classes per task (N)", min=2)
    k_shot: int = option(1, "support images per class (K)", min=1)
    k_query: int = option(15, "query images per class", min=1)
    image_size: int = option(
        84, "images are resized to image_size x image_size pixels", min=8, max=MAX_IMAGE_SIZE
    )
    channels: int = option(0, "1 (greyscale), 3 (RGB) or 0: greyscale when every image is", choices=(0, 1, 3))
    group_tasks: bool = option(False, "grouped layouts: draw all N classes of a task from one group")
    split: str = option(
        "auto", "unit of the train/val/test split when not pre-split", choices=("auto", "group", "class")
    )
    val_fraction: float = option(0.15, "share of split units held out for meta-val", min=0.01, max=0.4)
    test_fraction: float = option(0.2, "share of split units held out for meta-test", min=0.01, max=0.4)
    split_seed: int = option(0, "seed of the split when not pre-split (the same seed, the same split)")
    rotations: bool = option(False, "meta-train only: each class turned by 90/180/270 degrees is a new class")
    flips: bool = option(False, "meta-train only: images mirrored left-right at random")
    normalize: bool = option(True, "standardise each channel with the meta-train images' mean and std")
    cache_dir: str | None = option(
        None, "decoded-image cache (default: $XDG_CACHE_HOME/maml-tune or ~/.cache/maml-tune)"
    )


class ImageFolder(TaskFamily):
    """N-way K-shot classification of the images in a folder of class folders (see the module)."""

    name = "imagefolder"
    description = "your own images: <class>/<image> folders, pre-split or grouped, N-way K-shot"
    kind = "classification"
    Options = ImageFolderOptions
    data = (
        "your own images in data_dir: <class>/<image> (split here by class), {train,val,test}/<class>/<image>"
        " (split by you; a <group>/ level inside each split is allowed) or <group>/<class>/<image>"
        " (split by group); " + "/".join(s[1:] for s in IMAGE_SUFFIXES) + ", greyscale or RGB; and as"
        " distributed: " + "; ".join(BENCHMARK_LAYOUTS.values())
    )

    def __init__(self, options: Any = None):
        super().__init__(options)
        self._data: ImageData | None = None
        self._splits: dict[str, np.ndarray] = {}
        self._stats: tuple[np.ndarray, np.ndarray] | None = None
        self._device_stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._devices: dict[str, tuple[DeviceImages, dict[str, SplitClasses]]] = {}

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(channels, image_size, image_size)``; with ``channels=0`` the channels are the data's,
        so the first call decodes the images (later calls read the cache)."""
        size = self.options.image_size
        channels = self.options.channels or int(self.dataset().images.shape[1])
        return (channels, size, size)

    @property
    def output_size(self) -> int:
        return self.options.n_way

    def default_architecture(self) -> dict[str, Any]:
        # Finn et al.: 32 filters and VALID pooling at 84x84 (miniImageNet), 64 filters on small images.
        large = self.options.image_size >= 64
        return {
            "kind": "conv",
            "blocks": 4,
            "channels": 32 if large else 64,
            "norm": "batch",
            "downsample": "pool_valid" if large else "pool",
        }

    def literature_config(self) -> dict[str, Any]:
        """Finn et al. 2017's miniImageNet settings (appendix A.1)."""
        return {
            "algo.algorithm": "maml",
            "algo.inner_lr": 0.01,
            "algo.inner_steps": 5,
            "algo.test_inner_steps": 10,
            "train.meta_batch": 4,
            "train.meta_lr": 1e-3,
        }

    def prepare(self, progress: ProgressCallback | None = None) -> None:
        """Load the decoded images (from the cache, else by decoding every image once).

        Raises :class:`~maml_tune.errors.DataError` when ``data_dir`` is missing, holds no
        images in a known layout or an image cannot be read, and
        :class:`~maml_tune.errors.ConfigError` when the split leaves meta-train empty.
        """
        if self._data is not None:
            return
        o = self.options
        found = scan(root_folder(o.data_dir), o.layout)
        key = cache_key(found, o.image_size, o.channels)
        path = resolve_cache_dir(o.cache_dir) / "imagefolder" / f"imagefolder-{o.image_size}px-{key}.npz"
        data = load_cache(path, key, o.image_size)
        if data is None:
            data = decode(found, o.image_size, o.channels, progress)
            save_arrays(path, cache_arrays(data, key), "imagefolder")
        self._splits = _assign_splits(data, found.layout, o)
        self._stats = _channel_stats(data, self._splits["train"]) if o.normalize else None
        self._data = data

    def dataset(self) -> ImageData:
        """The decoded images and their names; prepares the family when needed."""
        self.prepare()
        assert self._data is not None
        return self._data

    def classes(self, split: str) -> tuple[str, ...]:
        """Names of the classes of ``split``, sorted."""
        data = self.dataset()
        return tuple(data.classes[i] for i in self._split_indices(split))

    def sample(self, split: str, n_tasks: int, generator: torch.Generator, device: torch.device) -> TaskBatch:
        """Sample ``n_tasks`` N-way tasks of ``split`` in one batched draw
        (:func:`~maml_tune.families._images.sample_tasks`)."""
        o = self.options
        self.prepare()
        self._split_indices(split)
        images, split_classes = self._on_device(torch.device(device))
        train = split == "train"
        shape = TaskShape(o.n_way, o.k_shot, o.k_query, rotate=o.rotations and train, flip=o.flips and train)
        return sample_tasks(
            "imagefolder",
            split,
            images,
            split_classes[split],
            shape,
            n_tasks,
            generator,
            lambda x: self._to_input(x, images.images.device),
            by_group=o.group_tasks,
            hint="change val_fraction / test_fraction or add classes",
        )

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """Users' own images (paths or PIL images) → model input ``(B, C, H, W)``, as training sees them."""
        channels, size, _ = self.input_shape
        arrays = []
        for item in images:
            arrays.append(convert_user_image(item, lambda image: to_array(image, size, channels)))
        if not arrays:
            return torch.zeros(0, channels, size, size)
        return self._to_input(torch.from_numpy(np.stack(arrays)), torch.device("cpu"))

    def _to_input(self, x: torch.Tensor, device: torch.device) -> torch.Tensor:
        x = x.to(torch.float32).div_(255.0)
        if self._stats is None:
            return x
        key = str(device)
        if key not in self._device_stats:  # copied once per device, not at every draw
            self._device_stats[key] = tuple(
                torch.as_tensor(v, dtype=torch.float32, device=device).view(-1, 1, 1) for v in self._stats
            )
        mean, std = self._device_stats[key]
        return x.sub_(mean).div_(std)

    def _split_indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ConfigError(f"imagefolder: unknown split {split!r} (expected one of {SPLITS})")
        return self._splits[split]

    def _on_device(self, device: torch.device):
        # One resident copy per device: moving the images every call would dominate sampling.
        key = str(device)
        if key not in self._devices:
            data = self.dataset()
            group_ids = {name: i for i, name in enumerate(sorted(set(data.groups)))}
            images = DeviceImages(
                data.images.to(device),
                data.starts.to(device),
                data.counts.to(device),
                pixel_permutations(self.options.image_size).to(device),
            )
            classes = {
                split: SplitClasses.of(rows, data.counts, [group_ids[data.groups[c]] for c in rows], device)
                for split, rows in self._splits.items()
            }
            self._devices[key] = (images, classes)
        return self._devices[key]


# --- splits and statistics -----------------------------------------------------------------------


def _assign_splits(data: ImageData, layout: str, options: ImageFolderOptions) -> dict[str, np.ndarray]:
    """Class indices per split: the folders' when pre-split, else hashed units (see :func:`split_units`)."""
    everything = np.arange(len(data.classes))
    if layout == "split":
        return {split: everything[[s == split for s in data.splits]] for split in SPLITS}
    groups = sorted(set(data.groups))
    by_group = layout == "grouped" and (
        options.split == "group" or (options.split == "auto" and len(groups) >= _MIN_GROUPS_FOR_AUTO)
    )
    if options.split == "group" and layout != "grouped":
        raise ConfigError("imagefolder: split='group' needs the grouped layout <group>/<class>/<image>")
    units = groups if by_group else list(data.classes)
    held_out = {"test": options.test_fraction, "val": options.val_fraction}
    unit_split = split_units(units, held_out, salt=f"{options.split_seed}/")
    if unit_split is None:
        kind = "groups" if by_group else "classes"
        raise ConfigError(
            f"imagefolder: {len(units)} {kind} are too few to split into train, test and val;"
            " lower val_fraction / test_fraction, or add classes"
        )
    unit_of = data.groups if by_group else data.classes
    split_of = [unit_split.get(unit, "train") for unit in unit_of]
    return {split: everything[[s == split for s in split_of]] for split in SPLITS}


def _channel_stats(data: ImageData, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the images of ``classes``, in [0, 1] units; the std is
    floored at 1/255 so that a constant channel cannot divide by zero."""
    images, starts, counts = data.images.numpy(), data.starts.numpy(), data.counts.numpy()
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    for c in classes:  # class by class: a float copy of every image at once could need gigabytes
        block = images[starts[c] : starts[c] + counts[c]].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 2, 3))
        squares += np.square(block).sum(axis=(0, 2, 3))
    n = max(1, int(counts[classes].sum())) * images.shape[2] * images.shape[3]
    mean = total / n
    return mean, np.maximum(np.sqrt(np.maximum(squares / n - mean**2, 0.0)), 1.0 / 255.0)


__all__ = ["IMAGE_SUFFIXES", "LAYOUTS", "ImageData", "ImageFolder", "ImageFolderOptions", "to_array"]
