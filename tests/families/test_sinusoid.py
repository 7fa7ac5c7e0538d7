import math

import torch

from maml_tune.core.tasks import split_generator
from maml_tune.families.sinusoid import Sinusoid
from maml_tune.families.testing import TaskFamilyConformance


class TestSinusoidConformance(TaskFamilyConformance):
    def make_family(self):
        return Sinusoid()


def test_sinusoid_matches_finn_et_al_distribution():
    family = Sinusoid({"k_shot": 5, "k_query": 45})
    batch = family.sample("train", 4000, split_generator("train", 0), torch.device("cpu"))
    assert batch.support_x.shape == (4000, 5, 1) and batch.query_x.shape == (4000, 45, 1)
    x = torch.cat([batch.support_x, batch.query_x], dim=1).double()
    y = torch.cat([batch.support_y, batch.query_y], dim=1).double()
    assert x.min() >= -5 and x.max() <= 5 and x.min() < -4.99 and x.max() > 4.99
    # y = A sin(x - phase) = a sin x + b cos x with a = A cos(phase), b = -A sin(phase):
    # recover each task's amplitude and phase by least squares.
    design = torch.cat([torch.sin(x), torch.cos(x)], dim=2)
    coef = torch.linalg.lstsq(design, y).solution.squeeze(-1)
    amplitude = coef.norm(dim=1)
    phase = torch.atan2(-coef[:, 1], coef[:, 0])
    residual = (design @ coef.unsqueeze(-1) - y).abs().max()
    assert residual < 1e-4
    assert amplitude.min() >= 0.1 - 1e-4 and amplitude.max() <= 5.0 + 1e-4
    assert phase.min() >= -1e-4 and phase.max() <= math.pi + 1e-4
    assert math.isclose(float(amplitude.mean()), 2.55, abs_tol=0.1)  # uniform on [0.1, 5]
    assert math.isclose(float(phase.mean()), math.pi / 2, abs_tol=0.1)  # uniform on [0, pi]


def test_sinusoid_is_one_batched_draw_on_the_generator():
    family = Sinusoid()
    generator = split_generator("train", 0)
    a = family.sample("train", 3, generator, torch.device("cpu"))
    b = family.sample("train", 3, generator, torch.device("cpu"))
    assert not torch.equal(a.support_x, b.support_x)
