import json
import pickle

import pytest
import torch

from maml_tune import load_learner
from maml_tune.core.checkpoint import WEIGHTS_FILE, load_checkpoint, save_checkpoint
from maml_tune.core.trainer import MetaTrainer
from maml_tune.errors import CheckpointError
from maml_tune.families.sinusoid import Sinusoid

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained():
    family = Sinusoid()
    config = family.run_config({"train.iterations": 200, "train.val_interval": 100,
                                "algo.algorithm": "lslr", "algo.inner_steps": 2})
    return config, MetaTrainer(config, family, CPU).run().learner


def test_round_trip_restores_weights_rates_and_config(trained, tmp_path):
    config, learner = trained
    save_checkpoint(tmp_path / "ckpt", learner, config, {"note": "x"})
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == config and loaded.metadata == {"note": "x"}
    for (name, a), (_, b) in zip(learner.state_dict().items(), loaded.learner.state_dict().items()):
        assert torch.equal(a, b), name
    assert len(loaded.learner.lrs) == len(learner.lrs) > 0
    assert not list(tmp_path.glob("ckpt/.*")), "temporary files left behind"


def test_tampered_weights_are_refused(trained, tmp_path):
    config, learner = trained
    directory = save_checkpoint(tmp_path / "ckpt", learner, config)
    blob = bytearray((directory / WEIGHTS_FILE).read_bytes())
    blob[-1] ^= 0xFF
    (directory / WEIGHTS_FILE).write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt or was modified"):
        load_checkpoint(directory)


def test_pickled_payload_is_refused(trained, tmp_path):
    config, learner = trained
    directory = save_checkpoint(tmp_path / "ckpt", learner, config)
    payload = pickle.dumps({"state": learner.state_dict()})
    (directory / WEIGHTS_FILE).write_bytes(payload)
    meta = json.loads((directory / "checkpoint.json").read_text())
    import hashlib

    meta["weights_sha256"] = hashlib.sha256(payload).hexdigest()
    (directory / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="invalid"):
        load_checkpoint(directory)


def test_missing_checkpoint_names_the_expected_files(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint.json"):
        load_checkpoint(tmp_path)


def test_public_api_adapts_to_a_new_task(trained, tmp_path):
    config, learner = trained
    save_checkpoint(tmp_path / "ckpt", learner, config)
    api = load_learner(tmp_path / "ckpt")
    x = torch.linspace(-5, 5, 10).unsqueeze(1)
    y = 3.0 * torch.sin(x - 1.0)
    before = ((api.adapt(x, y, steps=0).predict(x) - y) ** 2).mean()
    after = ((api.adapt(x, y, steps=5).predict(x) - y) ** 2).mean()
    assert after < before
    # The API adapts with the same inner loop as training.
    expected = learner.adapt(x, y, steps=5)
    adapted = api.adapt(x, y, steps=5)
    assert torch.allclose(adapted.predict(x), learner.functional_forward(expected, x).detach())
