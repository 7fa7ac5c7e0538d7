import math

import pytest
import torch

from maml_tune.core.evaluation import Estimate


def test_estimate_is_the_mean_with_a_normal_95_percent_interval():
    values = torch.tensor([1.0, 2.0, 4.0, 7.0])
    estimate = Estimate.of(values)
    sample_std = math.sqrt(sum((v - 3.5) ** 2 for v in (1.0, 2.0, 4.0, 7.0)) / 3)
    assert estimate.mean == pytest.approx(3.5)
    assert estimate.ci95 == pytest.approx(1.96 * sample_std / 2, rel=1e-12)
    assert Estimate.of(torch.tensor([5.0])) == Estimate(5.0, 0.0)
