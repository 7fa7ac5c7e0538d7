"""The Omniglot family: data discovery, cache, splits, sampling and preprocessing.

Uses the real small background sets from ``../shared/data/omniglot`` when the checkout has
them beside it, else synthetic archives from ``omniglot_fixture.py`` in the same layout.
"""

from __future__ import annotations

import importlib.util
import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maml_tune.core.tasks import split_generator
from maml_tune.errors import ConfigError, DataError
from maml_tune.families import omniglot
from maml_tune.families._omniglot_data import to_float
from maml_tune.families.omniglot import (
    DATA_ENV,
    Omniglot,
    default_cache_dir,
    preprocess_images,
)
from maml_tune.families.testing import TaskFamilyConformance

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "omniglot"
CPU = torch.device("cpu")


def _load_fixture():
    name = "maml_tune_omniglot_fixture"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, Path(__file__).with_name("omniglot_fixture.py")
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


fixture = _load_fixture()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The real small sets when present, else a synthetic images_background.zip."""
    if (SHARED / "images_background_small1.zip").is_file():
        return SHARED
    directory = tmp_path_factory.mktemp("omniglot")
    # 56 characters: enough that meta-val (6) and meta-test (11) hold 5-way tasks.
    fixture.write_background(directory, characters=14)
    return directory


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    # One cache for the module, so the data is decoded once, not once per test.
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def make(data_dir, shared_cache):
    def build(**options) -> Omniglot:
        family = Omniglot({"data_dir": str(data_dir), "cache_dir": str(shared_cache), **options})
        family.prepare()
        return family

    return build


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("synthetic")
    fixture.write_background(directory)
    return directory


def sample(family: Omniglot, split: str, seed: int = 0, n_tasks: int = 8):
    return family.sample(split, n_tasks, split_generator(split, seed), CPU)


def rows(*tensors: torch.Tensor) -> set[bytes]:
    """Each image as bytes, to test membership."""
    return {image.numpy().tobytes() for t in tensors for image in t.flatten(0, 1)}


def test_shapes_dtypes_and_value_range(make):
    family = make(n_way=5, k_shot=2, k_query=3)
    assert family.input_shape == (1, 28, 28) and family.output_size == 5
    for split in ("train", "val", "test"):
        batch = sample(family, split, n_tasks=6)
        assert batch.support_x.shape == (6, 10, 1, 28, 28)
        assert batch.query_x.shape == (6, 15, 1, 28, 28)
        assert batch.support_y.shape == (6, 10) and batch.query_y.shape == (6, 15)
        assert batch.support_x.dtype == batch.query_x.dtype == torch.float32
        assert batch.support_y.dtype == batch.query_y.dtype == torch.int64
        x = torch.cat([batch.support_x, batch.query_x], dim=1)
        assert x.min() == 0.0 and x.max() <= 1.0 and x.max() > 0.9
        # Strokes are bright on a dark background: most pixels are background.
        assert x.mean() < 0.3


def test_labels_are_each_class_k_times(make):
    family = make(n_way=5, k_shot=2, k_query=3)
    batch = sample(family, "train", n_tasks=10)
    for labels, k in ((batch.support_y, 2), (batch.query_y, 3)):
        expected = torch.arange(5).repeat_interleave(k)
        for task_labels in labels:
            assert torch.equal(task_labels.sort().values, expected)
    # Label l of a task is one class in both sets: every image of one label is one character.
    family = make(n_way=5, k_shot=2, k_query=3, rotations=False)
    batch = sample(family, "test", n_tasks=4)
    data = family.dataset()
    owner = {
        data.images[i].numpy().tobytes(): c
        for c in range(len(data.characters))
        for i in range(int(data.starts[c]), int(data.starts[c] + data.counts[c]))
    }
    for task in range(4):
        for label in range(5):
            images = torch.cat(
                [
                    batch.support_x[task][batch.support_y[task] == label],
                    batch.query_x[task][batch.query_y[task] == label],
                ]
            )
            characters = {
                owner[(img[0] * 255).round().to(torch.uint8).numpy().tobytes()] for img in images
            }
            assert len(characters) == 1
            assert len(rows(images.unsqueeze(0))) == 5  # distinct drawings


def test_seeded_determinism(make, data_dir, shared_cache):
    family = make(n_way=5)
    first, again, other = (
        sample(family, "train", 3),
        sample(family, "train", 3),
        sample(family, "train", 4),
    )
    for a, b in zip(first.tensors(), again.tensors(), strict=True):
        assert torch.equal(a, b)
    twin = Omniglot({"data_dir": str(data_dir), "cache_dir": str(shared_cache), "n_way": 5})
    for a, b in zip(first.tensors(), sample(twin, "train", 3).tensors(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first.support_x, other.support_x)


def test_splits_are_disjoint(make):
    family = make(n_way=5)
    splits = {split: set(family.characters(split)) for split in ("train", "val", "test")}
    assert not splits["train"] & splits["val"]
    assert not splits["train"] & splits["test"]
    assert not splits["val"] & splits["test"]
    assert set().union(*splits.values()) == set(family.dataset().characters)

    plain = make(n_way=5, rotations=False)
    train = sample(plain, "train", n_tasks=32)
    seen = rows(train.support_x, train.query_x)
    for split in ("val", "test"):
        batch = sample(plain, split, n_tasks=32)
        assert not seen & rows(batch.support_x, batch.query_x)


def test_overlapping_sources_are_merged(tmp_path):
    # Like small1 / small2, which both hold Greek and Latin.
    fixture.write_archive(tmp_path, "images_background_small1", ["A", "B", "Shared"], 3)
    fixture.write_archive(tmp_path, "images_background_small2", ["Shared", "C", "D"], 3)
    family = Omniglot({"data_dir": str(tmp_path), "cache_dir": str(tmp_path / "cache")})
    data = family.dataset()
    assert len(data.characters) == len(set(data.characters)) == 15
    assert data.counts.tolist() == [20] * 15
    assert len(set(data.files)) == len(data.files) == 300


def test_extracted_folder_reads_like_the_zip(synthetic, tmp_path):
    with zipfile.ZipFile(synthetic / "images_background.zip") as archive:
        archive.extractall(tmp_path / "data")
    from_folder = Omniglot({"data_dir": str(tmp_path / "data"), "cache_dir": str(tmp_path)})
    from_zip = Omniglot({"data_dir": str(synthetic), "cache_dir": str(tmp_path)})
    assert from_folder.dataset().files == from_zip.dataset().files
    assert torch.equal(from_folder.dataset().images, from_zip.dataset().images)
    assert from_folder.characters("test") == from_zip.characters("test")


def test_auto_split_by_character_with_few_alphabets(synthetic, tmp_path):
    family = Omniglot({"data_dir": str(synthetic), "cache_dir": str(tmp_path)})
    counts = {split: len(family.characters(split)) for split in ("train", "val", "test")}
    # 4 alphabets x 8 characters: test round(0.2 * 32) = 6, val round(0.1 * 32) = 3.
    assert counts == {"train": 23, "val": 3, "test": 6}
    by_alphabet = Omniglot(
        {"data_dir": str(synthetic), "cache_dir": str(tmp_path), "split": "alphabet"}
    )
    alphabets = {
        split: {name.split("/")[0] for name in by_alphabet.characters(split)}
        for split in ("train", "val", "test")
    }
    assert [len(a) for a in alphabets.values()] == [2, 1, 1]
    assert len(set().union(*alphabets.values())) == 4


def test_evaluation_archive_is_meta_test(synthetic, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "images_background.zip").write_bytes(
        (synthetic / "images_background.zip").read_bytes()
    )
    fixture.write_archive(tmp_path / "data", "images_evaluation", ["Eval_1", "Eval_2"], 4)
    family = Omniglot({"data_dir": str(tmp_path / "data"), "cache_dir": str(tmp_path)})
    assert {name.split("/")[0] for name in family.characters("test")} == {"Eval_1", "Eval_2"}
    assert len(family.characters("test")) == 8
    assert len(family.characters("train")) + len(family.characters("val")) == 32


def test_rotations_only_in_meta_train(make):
    data = make().dataset()
    size = data.images.shape[-1]
    turned = [{img.rot90(k).numpy().tobytes(): k for img in data.images} for k in range(4)]

    def turns(batch) -> list[set[int]]:
        """Per support image: the quarter turns that map some data set image onto it."""
        found = []
        for img in batch.support_x.flatten(0, 1):
            key = (img[0] * 255).round().to(torch.uint8).reshape(size, size).numpy().tobytes()
            found.append({k for k in range(4) if key in turned[k]})
        return found

    rotated = turns(sample(make(rotations=True), "train", n_tasks=16))
    assert set().union(*rotated) == {0, 1, 2, 3} and all(rotated)
    assert any(0 not in found for found in rotated)
    for split, rotations in (("test", True), ("val", True), ("train", False)):
        assert all(0 in found for found in turns(sample(make(rotations=rotations), split)))


@pytest.mark.parametrize("rotations", [False, True])
def test_within_alphabet_tasks_draw_every_character_from_one_alphabet(make, rotations):
    family = make(within_alphabet=True, rotations=rotations, split="alphabet")
    data = family.dataset()
    upright = {image.numpy().tobytes(): i for i, image in enumerate(to_float(data.images))}
    alphabet_of_image = {}
    for c, start in enumerate(data.starts.tolist()):
        for i in range(start, start + int(data.counts[c])):
            alphabet_of_image[i] = data.characters[c].split("/")[0]
    for split in ("train", "val", "test"):
        batch = sample(family, split, n_tasks=6)
        for task in batch.support_x:
            # Undo any quarter turn to find each drawing, then its alphabet.
            found = set()
            for image in task[:, 0]:
                index = next(
                    upright[key]
                    for k in range(4)
                    if (key := torch.rot90(image, k).contiguous().numpy().tobytes()) in upright
                )
                found.add(alphabet_of_image[index])
            assert len(found) == 1, found


def test_cache_is_reused_and_a_corrupt_cache_rebuilt(synthetic, tmp_path, monkeypatch):
    options = {"data_dir": str(synthetic), "cache_dir": str(tmp_path)}
    calls = []
    Omniglot(options).prepare(progress=lambda done, total, what: calls.append((done, total)))
    assert calls[0] == (0, 640) and calls[-1] == (640, 640)
    decoded = len(calls)
    (cache,) = (tmp_path / "omniglot").iterdir()  # no temporary file left behind
    reference = Omniglot(options).dataset()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    with monkeypatch.context() as patch:
        patch.setattr(omniglot, "decode_sources", no_decoding)
        cached = Omniglot(options)
        cached.prepare(progress=lambda *a: calls.append(a))
    assert len(calls) == decoded  # only the first prepare reported decoding progress
    assert torch.equal(cached.dataset().images, reference.images)
    assert cached.dataset().characters == reference.characters

    cache.write_bytes(b"not a zip file")
    rebuilt = Omniglot(options)
    rebuilt.prepare()
    assert torch.equal(rebuilt.dataset().images, reference.images)
    assert cache.stat().st_size > 100


def test_cache_key_follows_image_size(synthetic, tmp_path):
    options = {"data_dir": str(synthetic), "cache_dir": str(tmp_path)}
    small = Omniglot({**options, "image_size": 14})
    assert small.input_shape == (1, 14, 14)
    assert sample(small, "train", n_tasks=2).query_x.shape == (2, 75, 1, 14, 14)
    Omniglot(options).prepare()
    assert len(list((tmp_path / "omniglot").glob("*.npz"))) == 2


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "maml-tune"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "maml-tune"


def test_missing_data_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    for options in ({"data_dir": str(tmp_path / "absent")}, {"data_dir": str(tmp_path)}, {}):
        with pytest.raises(DataError) as caught:
            Omniglot({**options, "cache_dir": str(tmp_path)}).prepare()
        message = str(caught.value)
        assert "images_background.zip" in message and "images_evaluation.zip" in message
        assert "github.com/brendenlake/omniglot" in message and "\n" not in message


def test_corrupt_archive_is_a_data_error(tmp_path):
    (tmp_path / "images_background.zip").write_bytes(b"truncated download")
    with pytest.raises(DataError, match="images_background.zip"):
        Omniglot({"data_dir": str(tmp_path), "cache_dir": str(tmp_path)}).prepare()


def test_data_from_environment_root(synthetic, tmp_path, monkeypatch):
    # $MAML_TUNE_DATA may be a root shared by families, with the archives in omniglot/.
    (tmp_path / "omniglot").mkdir()
    (tmp_path / "omniglot" / "images_background.zip").write_bytes(
        (synthetic / "images_background.zip").read_bytes()
    )
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    family = Omniglot({"cache_dir": str(tmp_path / "cache")})
    assert len(family.dataset().characters) == 32


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="n_way"):
        Omniglot({"n_way": 1})
    with pytest.raises(ConfigError, match="split"):
        Omniglot({"split": "drawer"})


def test_too_many_ways_or_shots_is_a_clear_error(make):
    family = make(n_way=500)
    with pytest.raises(ConfigError, match=r"split 'test' has \d+ classes, fewer than n_way=500"):
        sample(family, "test")
    with pytest.raises(ConfigError, match="k_shot \\+ k_query = 21"):
        sample(make(k_shot=6), "train")


def test_preprocess_matches_training_images(make, data_dir, tmp_path):
    family = make()
    data = family.dataset()
    archive = sorted(data_dir.glob("*.zip"))[0]
    with zipfile.ZipFile(archive) as opened:
        member = next(name for name in sorted(opened.namelist()) if name.endswith(".png"))
        raw = opened.read(member)
    png = tmp_path / "drawing.png"
    png.write_bytes(raw)
    index = data.files.index("/".join(member.split("/")[-3:]))
    expected = data.images[index].to(torch.float32).div(255.0)

    with Image.open(io.BytesIO(raw)) as image:
        pil = image.copy()
    for given in ([png], [str(png)], [pil], [np.asarray(pil)]):
        tensor = family.preprocess(given)
        assert tensor.shape == (1, 1, 28, 28) and tensor.dtype == torch.float32
        assert torch.equal(tensor[0, 0], expected)
    assert family.preprocess([]).shape == (0, 1, 28, 28)


def test_preprocess_rejects_unreadable_files(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"nope")
    with pytest.raises(DataError, match="x.png"):
        preprocess_images([bad], 28)


def test_literature_config():
    assert Omniglot().literature_config()["algo.inner_lr"] == 0.4
    assert Omniglot({"n_way": 20}).literature_config()["algo.inner_steps"] == 5
    assert Omniglot().default_architecture()["kind"] == "conv"


@pytest.mark.slow
class TestOmniglotConformance(TaskFamilyConformance):
    """The shipped conformance suite on the real small sets (or the synthetic fixture)."""

    @pytest.fixture(autouse=True)
    def _options(self, data_dir, shared_cache):
        self.options = {"data_dir": str(data_dir), "cache_dir": str(shared_cache)}

    def make_family(self) -> Omniglot:
        return Omniglot(self.options)
