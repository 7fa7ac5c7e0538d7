"""Bad input, table-driven: hostile settings, specs, plugins, images, archives, checkpoints,
URLs and environments, each run as its own ``maml-tune`` process.

Every case must give exactly one ``error:`` line on stderr naming the offending value (the
timestamped progress lines of a redirected run aside), exit 2 for usage errors and 1
otherwise, no traceback, within 10 s, and leave the existing study untouched. The cases run
in forks of one process that imported everything once (:mod:`forked_cli`), through the
console script's ``main()``; the study they must not touch is made by the console script.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
from forked_cli import ForkedCli
from PIL import Image

MAML_TUNE = str(Path(sys.executable).with_name("maml-tune"))

SPEC = """
[family]
name = "sinusoid"

[space]
"algo.inner_lr" = { type = "float", low = 1e-3, high = 0.5, log = true }

[fixed]
"arch.width" = 8
"arch.depth" = 1
"train.meta_batch" = 2

[budget]
iterations = 3
val_interval = 3
val_tasks = 4
eval_tasks = 4

[study]
name = "rel"
sampler = "random"
pruner = "none"
seed = 0
n_trials = 1
inherit_space = false
"""

BROKEN_PLUGIN = "raise ImportError(\"No module named 'nonexistent_dependency'\")\n"
BAD_SHAPE_PLUGIN = """
from maml_tune.core.tasks import TaskBatch
from maml_tune.families.sinusoid import Sinusoid


class Badshape(Sinusoid):
    name = "badshape"

    def sample(self, split, n_tasks, generator, device):
        b = super().sample(split, n_tasks, generator, device)
        return TaskBatch(b.support_x[..., :0], b.support_y, b.query_x, b.query_y)
"""

# A small classification family; each hostile plugin below subclasses it and breaks one rule.
POINTS = """
from dataclasses import dataclass

import torch

from maml_tune.core.tasks import TaskBatch
from maml_tune.families import TaskFamily, option


@dataclass(frozen=True)
class Options:
    n_way: int = option(3, "classes", min=2)


class Points(TaskFamily):
    name = "points"
    description = "three classes of 2-D points"
    kind = "classification"
    Options = Options

    @property
    def input_shape(self):
        return (2,)

    @property
    def output_size(self):
        return 3

    def default_architecture(self):
        return {"kind": "mlp", "depth": 1, "width": 8}

    def literature_config(self):
        return {"train.meta_batch": 2, "train.iterations": 2, "train.val_interval": 2,
                "train.val_tasks": 2, "eval_tasks": 2}

    def sample(self, split, n_tasks, generator, device):
        x = torch.randn(n_tasks, 12, 2, generator=generator, device=device)
        y = torch.arange(3, device=device).repeat(4).expand(n_tasks, -1).clone()
        return TaskBatch(x[:, :6], y[:, :6], x[:, 6:], y[:, 6:])


class Hostile(Points):
    name = "{name}"
"""
SAMPLE = "    def sample(self, split, n_tasks, generator, device):\n"


def returns(batch: str) -> str:
    """A ``sample`` override returning ``batch``, an expression of the parent's batch ``b``."""
    return SAMPLE + f"        b = super().sample(split, n_tasks, generator, device)\n        return {batch}\n"


def prop(name: str, body: str) -> str:
    return f"    @property\n    def {name}(self):\n        {body}\n"


HOSTILE_PLUGINS = {
    "float64": returns("TaskBatch(b.support_x.double(), b.support_y, b.query_x.double(), b.query_y)"),
    "floatlabels": returns("TaskBatch(b.support_x, b.support_y.float(), b.query_x, b.query_y.float())"),
    "badlabels": returns("TaskBatch(b.support_x, b.support_y + 7, b.query_x, b.query_y)"),
    "negativelabels": returns("TaskBatch(b.support_x, b.support_y - 1, b.query_x, b.query_y - 1)"),
    "nanbatch": returns("TaskBatch(b.support_x * float('nan'), b.support_y, b.query_x, b.query_y)"),
    "fewertasks": SAMPLE + "        return super().sample(split, 1, generator, device)\n",
    "returnsnone": SAMPLE + "        return None\n",
    "raisesample": SAMPLE + "        raise RuntimeError('the data server went away')\n",
    "raisetestsample": SAMPLE
    + "        if split == 'test':\n            raise RuntimeError('the test shard is missing')\n"
    + "        return super().sample(split, n_tasks, generator, device)\n",
    "raiseprepare": "    def prepare(self, progress=None):\n        raise OSError('cannot mount /data')\n",
    "raiseshape": prop("input_shape", "raise AttributeError('shape not known yet')"),
    "hugeshape": prop("input_shape", "return (10**6, 10**6)"),
    "hugeoutput": prop("output_size", "return 10**30"),
    "zerooutput": prop("output_size", "return 0"),
    "stroutput": prop("output_size", "return 'three'"),
    "badarch": "    def default_architecture(self):\n        return {'kind': 'mlp', 'width': 'wide'}\n",
    "raiseliterature": "    def literature_config(self):\n        raise KeyError('inner_lr')\n",
}
IMPORT_KILLERS = {
    "exitimport": "import os\nos._exit(3)\n",
    "sysexitimport": "import sys\nsys.exit(0)\n",
    "syntaxerror": "def broken(:\n",
    "memoryimport": "raise MemoryError()\n",
}


def png(width: int, height: int, fill: int = 255) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), fill).save(buffer, "PNG")
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG that only declares ``width`` x ``height`` (a bomb's header: no pixels behind it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(16)))
        + chunk(b"IEND", b"")
    )


def omniglot_folder(folder: Path, odd: bytes) -> None:
    """Omniglot-shaped archives (2 alphabets x 3 characters x 20 drawings) whose first image is ``odd``."""
    folder.mkdir()
    glyph = png(105, 105)
    for part in ("background", "evaluation"):
        with zipfile.ZipFile(folder / f"images_{part}.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            for alphabet in range(2):
                for character in range(3):
                    for drawing in range(20):
                        first = part == "background" and alphabet == character == drawing == 0
                        archive.writestr(
                            f"images_{part}/Alpha{alphabet}/character{character:02d}/{drawing:02d}.png",
                            odd if first else glyph,
                        )


def image_folder(folder: Path, odd: bytes | None) -> None:
    """Three classes of five images; the first is ``odd`` (None: a sparse 40 MiB "image")."""
    for label in range(3):
        (folder / f"class{label}").mkdir(parents=True)
        for index in range(5):
            path = folder / f"class{label}" / f"{index}.png"
            if label == index == 0 and odd is None:
                with open(path, "wb") as handle:
                    handle.truncate(40 * 2**20)
            else:
                path.write_bytes(odd if label == index == 0 else png(32, 32, 40 * label))


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder with a study database (one trial), specs, plugins and checkpoints."""
    root = tmp_path_factory.mktemp("bad-input")
    storage = f"sqlite:///{root / 'studies.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAML_TUNE_")}
    env.update(
        MAML_TUNE_PLUGINS_DIR=str(root / "plugins"),
        MAML_TUNE_STORAGE=storage,
        MAML_TUNE_DEVICE="cpu",
        OMP_NUM_THREADS="1",
        COLUMNS="300",
    )
    (root / "plugins").mkdir()
    (root / "plugins" / "broken.py").write_text(BROKEN_PLUGIN)
    (root / "plugins" / "badshape.py").write_text(BAD_SHAPE_PLUGIN)
    (root / "spec.toml").write_text(SPEC)
    specs = {
        "malformed.toml": "[family\nname = 'sinusoid'\n",
        "unknown_key.toml": SPEC.replace("seed = 0", "seed = 0\nbogus_key = 1"),
        "wrong_type.toml": SPEC.replace("n_trials = 1", 'n_trials = "many"'),
        "inverted.toml": SPEC.replace("low = 1e-3, high = 0.5", "low = 0.5, high = 0.001"),
        "log_zero.toml": SPEC.replace("low = 1e-3, high = 0.5", "low = 0.0, high = 0.5"),
        "incompatible.toml": SPEC.replace("high = 0.5", "high = 0.9"),
    }
    specs.update(
        {
            "deep.toml": "x = " + "[" * 5000 + "]" * 5000 + "\n",
            "newline_name.toml": SPEC.replace('name = "rel"', 'name = "a\\nerror: fake"'),
            "zero_iterations.toml": SPEC.replace("iterations = 3", "iterations = 0"),
            "infinite_factor.toml": SPEC.replace("eval_tasks = 4", "eval_tasks = 4\ndivergence_factor = inf"),
            "many_choices.toml": SPEC.replace(
                '"algo.inner_lr" = { type = "float", low = 1e-3, high = 0.5, log = true }',
                '"arch.width" = { type = "categorical", choices = ['
                + ", ".join(map(str, range(1, 1002)))
                + "] }",
            ).replace('"arch.width" = 8\n', ""),
            "unknown_type.toml": SPEC.replace('type = "float"', 'type = "complex"'),
            "unknown_space_key.toml": SPEC.replace('"algo.inner_lr" = {', '"algo.inner_rate" = {'),
            "fixed_wrong_type.toml": SPEC.replace('"arch.width" = 8', '"arch.width" = "wide"'),
            "fixed_nan.toml": SPEC.replace('"arch.depth" = 1', '"arch.depth" = 1\n"train.meta_lr" = nan'),
            "duplicate_key.toml": SPEC.replace('"arch.depth" = 1', '"arch.depth" = 1\n"arch.depth" = 2'),
            "unknown_family.toml": SPEC.replace('name = "sinusoid"', 'name = "nosuchfamily"'),
            "empty_name.toml": SPEC.replace('name = "rel"', 'name = ""'),
            "zero_step.toml": SPEC.replace(
                '"algo.inner_lr" = { type = "float", low = 1e-3, high = 0.5, log = true }',
                '"algo.inner_steps" = { type = "int", low = 1, high = 5, step = 0 }',
            ),
        }
    )
    for name, text in specs.items():
        (root / name).write_text(text)
    (root / "latin1.toml").write_bytes(b'[study]\nname = "caf\xe9"\n')
    os.mkfifo(root / "fifo.toml")
    made = subprocess.run(
        [MAML_TUNE, "search", "spec.toml", "--checkpoints", "ckpt"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert made.returncode == 0, made.stderr
    # checkpoints: corrupt (truncated JSON), tampered (weights changed), pickled payload (hash matches)
    import torch

    from maml_tune.core.checkpoint import _meta_digest, save_checkpoint
    from maml_tune.core.trainer import build_learner
    from maml_tune.families.registry import Registry

    family = Registry(use_env=False).create("sinusoid")
    config = family.run_config({"arch.width": 8, "arch.depth": 1})
    learner = build_learner(config, family, torch.device("cpu"))
    for name in ("corrupt", "tampered", "pickled"):
        save_checkpoint(root / name, learner, config)
    meta = root / "corrupt" / "checkpoint.json"
    meta.write_text(meta.read_text()[:40])
    weights = root / "tampered" / "weights.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    pickled = root / "pickled" / "weights.safetensors"
    torch.save({"payload": Payload()}, pickled)
    meta = json.loads((root / "pickled" / "checkpoint.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(pickled.read_bytes()).hexdigest()
    meta["meta_sha256"] = _meta_digest(meta)
    (root / "pickled" / "checkpoint.json").write_text(json.dumps(meta))
    # Omniglot: a corrupt archive
    (root / "omniglot-corrupt").mkdir()
    (root / "omniglot-corrupt" / "images_background.zip").write_bytes(b"not a zip file")
    (root / "omniglot-corrupt" / "images_evaluation.zip").write_bytes(b"not a zip file")
    for name, body in HOSTILE_PLUGINS.items():
        (root / "plugins" / f"{name}.py").write_text(POINTS.replace("{name}", name) + "\n" + body)
    for name, text in IMPORT_KILLERS.items():
        (root / "plugins" / f"{name}.py").write_text(text)
    for name, odd in {
        "square-20000": png_header(20000, 20000),
        "strip-1x40000": png(1, 40000, 0),
        "zip-bomb": bytes(40 * 2**20),
        "not-an-image": b"this is no image",
    }.items():
        omniglot_folder(root / f"omniglot-{name}", odd)
    for name, odd in {
        "square-20000": png_header(20000, 20000),
        "strip-1x40000": png(1, 40000, 0),
        "over-32mib": None,
        "not-an-image": b"this is no image",
    }.items():
        image_folder(root / f"images-{name}", odd)
    # checkpoints: edited metadata, missing weights
    for name in ("edited", "noweights"):
        save_checkpoint(root / name, learner, config)
    meta = json.loads((root / "edited" / "checkpoint.json").read_text())
    meta["config"]["algo"]["test_inner_steps"] = 10**9
    (root / "edited" / "checkpoint.json").write_text(json.dumps(meta))
    (root / "noweights" / "weights.safetensors").unlink()
    (root / "deepjson").mkdir()
    (root / "deepjson" / "checkpoint.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "garbage.db").write_bytes(b"this is no SQLite database" * 100)
    trial_cmd = ["trial", "rel", "999"]
    if subprocess.run([MAML_TUNE, "trial", "--help"], env=env, capture_output=True).returncode != 0:
        trial_cmd = ["train", "--from-study", "rel", "--trial", "999"]
    return {"root": root, "env": env, "storage": storage, "trial_cmd": trial_cmd}


# (id, args, exit code, text the message must contain); "{...}" is filled from the world fixture
CASES = [
    ("unknown-family", ["train", "--family", "nosuch"], 1, "'nosuch'"),
    ("bad-family-option", ["train", "--set", "family.amplitude_min=abc"], 2, "'abc'"),
    ("malformed-toml", ["search", "malformed.toml"], 2, "malformed.toml"),
    ("spec-unknown-key", ["search", "unknown_key.toml"], 2, "bogus_key"),
    ("spec-wrong-type", ["search", "wrong_type.toml"], 2, "'many'"),
    ("spec-inverted-range", ["search", "inverted.toml"], 2, "0.5"),
    ("spec-log-range-zero", ["search", "log_zero.toml"], 2, "log"),
    ("unknown-sampler", ["search", "spec.toml", "--sampler", "bogus"], 2, "'bogus'"),
    ("unknown-pruner", ["search", "spec.toml", "--pruner", "bogus"], 2, "'bogus'"),
    ("invalid-storage-url", ["studies", "list", "--storage", "nosuchdialect://x"], 1, "nosuchdialect://x"),
    (
        "unreachable-database",
        ["studies", "list", "--storage", "postgresql://u:s3cret@127.0.0.1:1/db"],
        1,
        "127.0.0.1:1",
    ),
    ("unknown-study", ["best", "nosuch"], 1, "'nosuch'"),
    ("incompatible-spec", ["search", "incompatible.toml"], 1, "'rel'"),
    (
        "missing-omniglot",
        ["train", "--family", "omniglot", "--set", "family.data_dir={root}/nothing"],
        1,
        "nothing",
    ),
    (
        "corrupt-omniglot",
        ["train", "--family", "omniglot", "--set", "family.data_dir={root}/omniglot-corrupt"],
        1,
        "images_background.zip",
    ),
    ("plugin-import-fails", ["train", "--family", "broken"], 1, "nonexistent_dependency"),
    (
        "plugin-wrong-shapes",
        ["train", "--family", "badshape", "--iterations", "2", "--out", "{root}/bs"],
        1,
        "badshape",
    ),
    ("corrupt-checkpoint", ["evaluate", "{root}/corrupt"], 1, "corrupt"),
    ("tampered-checkpoint", ["evaluate", "{root}/tampered"], 1, "tampered"),
    ("pickled-checkpoint", ["evaluate", "{root}/pickled"], 1, "pickled"),
    ("cuda-without-cuda", ["search", "spec.toml", "--n-trials", "2", "--device", "cuda"], 1, "'cuda'"),
    ("workers-zero", ["search", "spec.toml", "--workers", "0"], 2, "got 0"),
    ("negative-trials", ["search", "spec.toml", "--n-trials", "-1"], 2, "got -1"),
    ("set-without-equals", ["search", "spec.toml", "--set", "algo.inner_lr"], 2, "'algo.inner_lr'"),
    ("no-such-trial", None, 1, "999"),
    # Hostile specs: none may hang, exhaust memory or recurse without end.
    ("spec-nested-5000-deep", ["search", "deep.toml"], 2, "nested too deeply"),
    ("spec-not-utf8", ["search", "latin1.toml"], 2, "not UTF-8"),
    ("spec-is-a-fifo", ["search", "fifo.toml"], 2, "pipe"),
    ("spec-is-dev-zero", ["search", "/dev/zero"], 2, "/dev/zero"),
    ("spec-newline-in-study-name", ["search", "newline_name.toml"], 2, "printable"),
    ("spec-zero-iterations", ["search", "zero_iterations.toml"], 2, "budget.iterations"),
    ("spec-infinite-divergence-factor", ["search", "infinite_factor.toml"], 2, "inf"),
    # Numbers that are no numbers, or out of range, anywhere a setting is read.
    ("set-nan-inner-lr", ["train", "--set", "algo.inner_lr=nan"], 2, "finite"),
    ("set-overflowing-inner-lr", ["train", "--set", "algo.inner_lr=1e999"], 2, "'1e999'"),
    ("set-huge-seed", ["train", "--set", "train.seed=1180591620717411303424"], 2, "train.seed"),
    ("search-huge-seed", ["search", "spec.toml", "--seed", "99999999999999999999"], 2, "study.seed"),
    ("search-nan-timeout", ["search", "spec.toml", "--timeout", "nan"], 2, "nan"),
    ("search-too-many-workers", ["search", "spec.toml", "--workers", "100000"], 2, "<= 64"),
    ("search-newline-study-name", ["search", "spec.toml", "--study-name", "a\nerror: fake"], 2, "printable"),
    (
        "storage-port-not-a-number",
        ["studies", "list", "--storage", "postgresql://u@127.0.0.1:abc/db"],
        1,
        "abc",
    ),
    # Settings that would hang, exhaust memory or crash deep inside training.
    ("set-seed-expression", ["train", "--set", "train.seed=2**70"], 2, "'2**70'"),
    ("set-k-shot-float-literal", ["train", "--set", "family.k_shot=1e11"], 2, "'1e11'"),
    ("set-k-shot-1e11", ["train", "--set", "family.k_shot=100000000000"], 2, "k_shot"),
    ("set-width-float-literal", ["train", "--set", "arch.width=1e9"], 2, "'1e9'"),
    ("set-width-1e9", ["train", "--set", "arch.width=1000000000"], 2, "parameters"),
    ("set-depth-100000", ["train", "--set", "arch.depth=100000"], 2, "arch.depth"),
    ("set-meta-batch-1e8", ["train", "--set", "train.meta_batch=100000000"], 2, "train.meta_batch"),
    ("set-inner-steps-1e9", ["train", "--set", "algo.inner_steps=1000000000"], 2, "algo.inner_steps"),
    (
        "set-test-inner-steps-1e9",
        ["train", "--set", "algo.test_inner_steps=1000000000"],
        2,
        "test_inner_steps",
    ),
    ("set-eval-tasks-1e9", ["train", "--set", "eval_tasks=1000000000"], 2, "eval_tasks"),
    ("set-val-tasks-1e9", ["train", "--set", "train.val_tasks=1000000000"], 2, "train.val_tasks"),
    ("set-amplitudes-inverted", ["train", "--set", "family.amplitude_min=6"], 2, "amplitude_max"),
    ("set-unknown-key", ["train", "--set", "nosuch.key=1"], 2, "'nosuch.key'"),
    ("set-unknown-family-option", ["train", "--set", "family.nosuch=1"], 2, "'nosuch'"),
    ("set-unknown-arch-kind", ["train", "--set", "arch.kind=transformer"], 2, "'transformer'"),
    ("set-zero-meta-lr", ["train", "--set", "train.meta_lr=0"], 2, "train.meta_lr"),
    ("set-unknown-precision", ["train", "--set", "train.precision=fp8"], 2, "'fp8'"),
    ("train-negative-seed", ["train", "--seed", "-1"], 2, "-1"),
    ("train-negative-iterations", ["train", "--iterations", "-1"], 2, "--iterations"),
    ("train-unknown-device", ["train", "--device", "bogus"], 1, "'bogus'"),
    ("train-absent-cuda-index", ["train", "--device", "cuda:7"], 1, "'cuda:7'"),
    (
        "omniglot-image-size-60000",
        ["train", "--family", "omniglot", "--set", "family.image_size=60000"],
        2,
        "1024",
    ),
    (
        "omniglot-image-size-3000",
        ["train", "--family", "omniglot", "--set", "family.image_size=3000"],
        2,
        "1024",
    ),
    (
        "imagefolder-image-size-60000",
        ["train", "--family", "imagefolder", "--set", "family.image_size=60000"],
        2,
        "image_size",
    ),
    ("unknown-log-format", ["--log-format", "xml", "train"], 2, "'xml'"),
    # Plugins that break the family contract in every way the engine can notice.
    *[
        (f"plugin-{name}", ["train", "--family", name, "--out", f"{{root}}/out-{name}"], 1, expected)
        for name, expected in {
            "float64": "torch.float64",
            "floatlabels": "torch.int64",
            "badlabels": "labels run from 0 to 9",
            "negativelabels": "labels run from -1",
            "nanbatch": "nan",
            "fewertasks": "fewertasks",
            "returnsnone": "NoneType",
            "raisesample": "the data server went away",
            "raisetestsample": "the test shard is missing",
            "raiseprepare": "cannot mount /data",
            "raiseshape": "shape not known yet",
            "hugeshape": "input_shape",
            "hugeoutput": "output_size",
            "zerooutput": "output_size",
            "stroutput": "'three'",
            "badarch": "'wide'",
            "raiseliterature": "inner_lr",
            "exitimport": "os._exit(3)",
            "sysexitimport": "SystemExit",
            "syntaxerror": "SyntaxError",
            "memoryimport": "MemoryError",
        }.items()
    ],
    # Images and archives: bombs, strips padded to a square, lies and junk.
    *[
        (
            f"omniglot-{name}",
            [
                "train",
                "--family",
                "omniglot",
                "--set",
                f"family.data_dir={{root}}/omniglot-{name}",
                "--set",
                "family.cache_dir={root}/cache",
            ],
            1,
            expected,
        )
        for name, expected in {
            "square-20000": "decompression-bomb",
            "strip-1x40000": "1 x 40000",
            "zip-bomb": "uncompressed",
            "not-an-image": "not an image",
        }.items()
    ],
    *[
        (
            f"imagefolder-{name}",
            [
                "train",
                "--family",
                "imagefolder",
                "--set",
                f"family.data_dir={{root}}/images-{name}",
                "--set",
                "family.cache_dir={root}/cache",
            ],
            1,
            expected,
        )
        for name, expected in {
            "square-20000": "decompression-bomb",
            "strip-1x40000": "1 x 40000",
            "over-32mib": "bytes",
            "not-an-image": "not an image",
        }.items()
    ],
    # Checkpoints and studies.
    ("checkpoint-edited-metadata", ["evaluate", "{root}/edited"], 1, "edited"),
    ("checkpoint-without-weights", ["evaluate", "{root}/noweights"], 1, "weights.safetensors"),
    ("checkpoint-json-nested-100000-deep", ["evaluate", "{root}/deepjson"], 1, "nested too deeply"),
    ("checkpoint-is-a-file", ["evaluate", "{root}/spec.toml"], 1, "spec.toml"),
    ("checkpoint-missing", ["evaluate", "{root}/nothing"], 1, "checkpoint.json"),
    ("studies-show-unknown", ["studies", "show", "nosuch"], 1, "'nosuch'"),
    ("studies-delete-unknown", ["studies", "delete", "nosuch", "--yes"], 1, "'nosuch'"),
    ("train-from-unknown-study", ["train", "--from-study", "nosuch"], 1, "'nosuch'"),
    ("train-from-study-trial-not-a-number", ["train", "--from-study", "rel", "--trial", "abc"], 2, "'abc'"),
    ("search-negative-timeout", ["search", "spec.toml", "--timeout", "-5"], 2, "-5"),
    ("search-infinite-timeout", ["search", "spec.toml", "--timeout", "1e999"], 2, "inf"),
    ("search-negative-workers", ["search", "spec.toml", "--workers", "-3"], 2, "-3"),
    ("plugins-new-bad-name", ["plugins", "new", "Bad Name!"], 2, "'Bad Name!'"),
    ("plugins-check-unknown", ["plugins", "check", "nosuch"], 1, "'nosuch'"),
    (
        "storage-password-with-unencoded-at",
        ["studies", "list", "--storage", "postgresql://u:p@ss3cret@127.0.0.1:1/db"],
        1,
        "percent-encode",
    ),
    (
        "storage-password-with-slash-and-at",
        ["studies", "list", "--storage", "mysql+pymysql://u:p@s/s3cret@127.0.0.1:1/db"],
        1,
        "percent-encode",
    ),
    (
        "storage-not-a-database",
        ["studies", "list", "--storage", "sqlite:///{root}/garbage.db"],
        1,
        "garbage.db",
    ),
    (
        "storage-in-missing-folder",
        ["studies", "list", "--storage", "sqlite:////nonexistent/dir/x.db"],
        1,
        "x.db",
    ),
    # More hostile specs.
    ("spec-1001-choices", ["search", "many_choices.toml"], 2, "1000"),
    ("spec-unknown-parameter-type", ["search", "unknown_type.toml"], 2, "'complex'"),
    ("spec-unknown-space-key", ["search", "unknown_space_key.toml"], 2, "algo.inner_rate"),
    ("spec-fixed-wrong-type", ["search", "fixed_wrong_type.toml"], 2, "'wide'"),
    ("spec-fixed-nan", ["search", "fixed_nan.toml"], 2, "finite"),
    ("spec-duplicate-key", ["search", "duplicate_key.toml"], 2, "duplicate_key.toml"),
    ("spec-unknown-family", ["search", "unknown_family.toml"], 2, "'nosuchfamily'"),
    ("spec-empty-study-name", ["search", "empty_name.toml"], 2, "study.name"),
    ("spec-zero-step", ["search", "zero_step.toml"], 2, "step"),
]

ENV_CASES = [
    ("heartbeat-not-a-number", {"MAML_TUNE_HEARTBEAT_INTERVAL": "abc"}, "MAML_TUNE_HEARTBEAT_INTERVAL"),
    ("heartbeat-fraction", {"MAML_TUNE_HEARTBEAT_INTERVAL": "0.5"}, "'0.5'"),
    ("heartbeat-zero", {"MAML_TUNE_HEARTBEAT_INTERVAL": "0"}, "'0'"),
    ("grace-negative", {"MAML_TUNE_GRACE_PERIOD": "-5"}, "MAML_TUNE_GRACE_PERIOD"),
]


def _dump(storage: str) -> list:
    import sqlite3

    path = storage[len("sqlite:///") :]
    connection = sqlite3.connect(path)
    try:
        tables = (
            "studies",
            "study_user_attributes",
            "trials",
            "trial_params",
            "trial_values",
            "trial_user_attributes",
            "trial_system_attributes",
            "trial_intermediate_values",
        )
        return [list(connection.execute(f"SELECT * FROM {t} ORDER BY 1")) for t in tables]
    finally:
        connection.close()


PROGRESS_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ")
"""The timestamped progress lines a redirected command writes while it works."""
LIMIT_S = 10


@pytest.fixture(scope="module")
def cli(world):
    with ForkedCli(world["env"], world["root"]) as forked:
        yield forked


def _one_error(done, code: int) -> str:
    """The single ``error:`` line of a command that failed as a bad input must."""
    lines = [line for line in done.stderr.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]
    assert done.code == code, (done.code, done.stderr)
    assert done.elapsed < LIMIT_S, f"took {done.elapsed:.1f} s to fail"
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def test_there_are_at_least_a_hundred_hostile_cases():
    assert len(CASES) + len(ENV_CASES) >= 100
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("case, args, code, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, cli, case, args, code, expected):
    root = world["root"]
    args = world["trial_cmd"] if args is None else [a.replace("{root}", str(root)) for a in args]
    before = _dump(world["storage"])
    done = cli.run(args, timeout=4 * LIMIT_S)
    line = _one_error(done, code)
    assert expected.replace("{root}", str(root)) in line, line
    assert "s3cret" not in done.stderr + done.stdout
    assert not (root / "pwned").exists()
    assert _dump(world["storage"]) == before  # no study changed (and none created)


@pytest.mark.slow
@pytest.mark.parametrize("case, env, expected", ENV_CASES, ids=[c[0] for c in ENV_CASES])
def test_bad_environment(world, cli, case, env, expected):
    """A bad heartbeat setting stops a search before it touches the study; reading studies
    does not need it."""
    before = _dump(world["storage"])
    done = cli.run(["search", "spec.toml", "--n-trials", "2"], env=env, timeout=4 * LIMIT_S)
    assert expected in _one_error(done, 2)
    assert _dump(world["storage"]) == before
    listed = cli.run(["studies", "list"], env=env, timeout=4 * LIMIT_S)
    assert listed.code == 0, listed.stderr


@pytest.mark.slow
def test_a_bad_input_through_the_console_script(world):
    """The console script itself (not a fork of a warm process) gives the same one line."""
    done = subprocess.run(
        [MAML_TUNE, "train", "--family", "exitimport"],
        cwd=world["root"],
        env=world["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stderr.startswith("error: ") and "os._exit(3)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.slow
def test_debug_shows_the_traceback(world):
    done = subprocess.run(
        [MAML_TUNE, "--debug", "best", "nosuch"],
        cwd=world["root"],
        env=world["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "Traceback" in done.stderr
