"""Bad input, table-driven, through the real ``maml-tune`` console script.

Every case must give exactly one line on stderr naming the offending value, exit 2 for
usage errors and 1 otherwise, no traceback, and leave the existing study untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.slow
@pytest.mark.parametrize("case, args, code, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(world, case, args, code, expected):
    root = world["root"]
    args = world["trial_cmd"] if args is None else [a.replace("{root}", str(root)) for a in args]
    before = _dump(world["storage"])
    done = subprocess.run(
        [MAML_TUNE, *args], cwd=root, env=world["env"], capture_output=True, text=True, timeout=300
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == code, (done.returncode, done.stderr)
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert expected.replace("{root}", str(root)) in lines[0], lines[0]
    assert "s3cret" not in done.stderr + done.stdout
    assert not (root / "pwned").exists()
    assert _dump(world["storage"]) == before  # no study changed (and none created)


@pytest.mark.slow
@pytest.mark.parametrize("case, env, expected", ENV_CASES, ids=[c[0] for c in ENV_CASES])
def test_bad_environment(world, case, env, expected):
    """A bad heartbeat setting stops a search before it touches the study; reading studies
    does not need it."""
    before = _dump(world["storage"])
    done = subprocess.run(
        [MAML_TUNE, "search", "spec.toml", "--n-trials", "2"],
        cwd=world["root"],
        env={**world["env"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert expected in lines[0]
    assert _dump(world["storage"]) == before
    listed = subprocess.run(
        [MAML_TUNE, "studies", "list"],
        cwd=world["root"],
        env={**world["env"], **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr


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
