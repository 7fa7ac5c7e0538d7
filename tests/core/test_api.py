"""The Python API a user meets first: what it exposes, how it describes itself, its errors."""

from __future__ import annotations

import pytest
import torch

import maml_tune
from maml_tune.core.checkpoint import save_checkpoint
from maml_tune.core.trainer import MetaTrainer
from maml_tune.errors import ConfigError
from maml_tune.families.sinusoid import Sinusoid


@pytest.fixture(scope="module")
def sinusoid_checkpoint(tmp_path_factory):
    family = Sinusoid()
    config = family.run_config({"train.iterations": 2, "train.val_interval": 2, "train.val_tasks": 2})
    learner = MetaTrainer(config, family, torch.device("cpu")).run().learner
    return save_checkpoint(tmp_path_factory.mktemp("api") / "ckpt", learner, config)


def test_the_package_lists_its_api():
    names = dir(maml_tune)
    assert {"load_learner", "Learner", "AdaptedModel", "MamlTuneError"} <= set(names)
    assert maml_tune.Learner.__name__ == "Learner" and issubclass(maml_tune.MamlTuneError, Exception)


def test_a_learner_and_an_adapted_model_say_what_they_are(sinusoid_checkpoint):
    learner = maml_tune.load_learner(sinusoid_checkpoint)
    text = repr(learner)
    assert "sinusoid" in text and "regression" in text and "(1,)" in text and "maml" in text
    model = learner.adapt(torch.zeros(5, 1), torch.zeros(5, 1))
    assert repr(model) == "<AdaptedModel of sinusoid: 5 support examples, 1 outputs>"


def test_mismatched_support_shapes_are_a_clear_error(sinusoid_checkpoint):
    learner = maml_tune.load_learner(sinusoid_checkpoint)
    with pytest.raises(ConfigError, match=r"1 value\(s\) per input, got shape \(7, 1\)"):
        learner.adapt(torch.zeros(10, 1), torch.zeros(7, 1))
    with pytest.raises(ConfigError, match=r"inputs must have shape \(batch, 1\)"):
        learner.adapt(torch.zeros(10, 2), torch.zeros(10, 1))
