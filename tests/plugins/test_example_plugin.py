"""The example plugin shipped in ``plugins/``, loaded the way users load it: through the registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from maml_tune.core.tasks import split_generator
from maml_tune.errors import ConfigError
from maml_tune.families.registry import Registry
from maml_tune.families.testing import TaskFamilyConformance

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def spirals(options=None):
    registry = Registry(PLUGINS, allowed={"spirals"}, use_env=False)
    plugin = registry.plugin("spirals")
    assert plugin.ok and plugin.source.kind == "local", plugin.error
    return registry.create("spirals", options)


class TestSpiralsConformance(TaskFamilyConformance):
    def make_family(self):
        return spirals()


def test_options_shape_the_tasks():
    family = spirals({"n_way": 4, "k_shot": 2, "k_query": 3})
    batch = family.sample("train", 6, split_generator("train", 0), torch.device("cpu"))
    assert batch.support_x.shape == (6, 8, 2) and batch.query_x.shape == (6, 12, 2)
    # Every class appears k_shot times in each support set, with a fresh label order per task.
    for labels in batch.support_y:
        assert sorted(labels.tolist()) == sorted([0, 1, 2, 3] * 2)
    assert len({tuple(labels.tolist()) for labels in batch.support_y}) > 1
    # Points stay within the per-task scale (radius <= 1, scale <= scale_max, small noise).
    assert batch.support_x.norm(dim=-1).max() < 2.0 * 1.3


def test_invalid_options_are_reported_with_the_family_name():
    with pytest.raises(ConfigError, match="family 'spirals' option 'n_way': expected <= 10"):
        spirals({"n_way": 11})
    with pytest.raises(ConfigError, match="family 'spirals' option 'scale_min'"):
        spirals({"scale_min": 3.0, "scale_max": 2.0})
