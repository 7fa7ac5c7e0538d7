import json
import pickle

import pytest
import torch

from maml_tune import load_learner
from maml_tune.core.checkpoint import WEIGHTS_FILE, _meta_digest, load_checkpoint, save_checkpoint
from maml_tune.core.run import train_and_test
from maml_tune.errors import CheckpointError
from maml_tune.families.sinusoid import Sinusoid

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained():
    family = Sinusoid()
    config = family.run_config({"train.iterations": 200, "train.val_interval": 100,
                                "algo.algorithm": "lslr", "algo.inner_steps": 2})
    config = config.override({"eval_tasks": 20})
    run = train_and_test(config, family, CPU)
    return config, run.learner, run.summary


def test_round_trip_restores_weights_rates_config_and_summary(trained, tmp_path):
    config, learner, summary = trained
    save_checkpoint(tmp_path / "ckpt", learner, config, summary)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == config and loaded.summary == summary
    assert loaded.summary.iterations == 200 and loaded.summary.test["tasks"] == 20
    assert loaded.summary.metrics["test_loss"] == summary.test["loss_after"]
    assert [v["iteration"] for v in loaded.summary.validation] == [100, 200]
    for (name, a), (_, b) in zip(learner.state_dict().items(), loaded.learner.state_dict().items()):
        assert torch.equal(a, b), name
    assert len(loaded.learner.lrs) == len(learner.lrs) > 0
    assert not list(tmp_path.glob("ckpt/.*")), "temporary files left behind"


def test_tampered_weights_are_refused(trained, tmp_path):
    config, learner, _ = trained
    directory = save_checkpoint(tmp_path / "ckpt", learner, config)
    blob = bytearray((directory / WEIGHTS_FILE).read_bytes())
    blob[-1] ^= 0xFF
    (directory / WEIGHTS_FILE).write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="corrupt or was modified"):
        load_checkpoint(directory)


def test_pickled_payload_is_refused(trained, tmp_path):
    config, learner, _ = trained
    directory = save_checkpoint(tmp_path / "ckpt", learner, config)
    payload = pickle.dumps({"state": learner.state_dict()})
    (directory / WEIGHTS_FILE).write_bytes(payload)
    meta = json.loads((directory / "checkpoint.json").read_text())
    import hashlib

    meta["weights_sha256"] = hashlib.sha256(payload).hexdigest()
    meta["meta_sha256"] = _meta_digest(meta)  # a consistent forgery of both hashes
    (directory / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="invalid"):
        load_checkpoint(directory)


def test_missing_checkpoint_names_the_expected_files(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint.json"):
        load_checkpoint(tmp_path)


def test_public_api_adapts_to_a_new_task(trained, tmp_path):
    config, learner, _ = trained
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


def test_api_predictions_do_not_depend_on_the_rest_of_the_batch(tmp_path):
    """Conv nets normalise with batch statistics; by default the API takes the adapted
    support set's, so an image scores the same alone and inside a batch of 8."""
    from maml_tune.core.config import ArchConfig, RunConfig
    from maml_tune.core.learner import MetaLearner

    config = RunConfig(family="omniglot", arch=ArchConfig(kind="conv", blocks=2, channels=8))
    torch.manual_seed(0)
    learner = MetaLearner(config.arch, config.algo, (1, 14, 14), 3, "classification")
    save_checkpoint(tmp_path / "ckpt", learner, config)
    support = torch.rand(6, 1, 14, 14)
    model = load_learner(tmp_path / "ckpt").adapt(support, torch.arange(3).repeat(2), steps=2)
    batch = torch.rand(8, 1, 14, 14)
    alone, inside = model.predict(batch[3:4]), model.predict(batch)[3:4]
    torch.testing.assert_close(alone, inside, rtol=0, atol=1e-6)
    assert torch.equal(model.predict_classes(batch[3:4]), model.predict_classes(batch)[3:4])
    transductive = model.predict(batch, query_norm="transductive")
    assert (transductive[3:4] - model.predict(batch[3:4], query_norm="transductive")).abs().max() > 1e-3
    assert (transductive - model.predict(batch)).abs().max() > 1e-3


@pytest.mark.parametrize("edit", ["kind", "test_inner_steps", "nested"])
def test_edited_metadata_is_refused(trained, tmp_path, edit):
    """checkpoint.json carries its own SHA-256: an edited kind or setting (a 1e9-step test
    adaptation would run for hours) is refused in one error, as is JSON nested to exhaust the parser."""
    config, learner, _ = trained
    directory = save_checkpoint(tmp_path / "ckpt", learner, config)
    path = directory / "checkpoint.json"
    meta = json.loads(path.read_text())
    if edit == "kind":
        meta["kind"] = "classification"
    elif edit == "test_inner_steps":
        meta["config"]["algo"]["test_inner_steps"] = 10**9
    if edit == "nested":
        path.write_text("[" * 100_000 + "]" * 100_000)
    else:
        path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="modified|nested|invalid"):
        load_checkpoint(directory)
