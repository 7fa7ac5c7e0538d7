"""The batched forward computes exactly the network's own function, in the fast layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maml_tune.core.batched import channels_last, make_batched_forward, stack_params
from maml_tune.core.config import ArchConfig
from maml_tune.core.nets import build_network


@pytest.mark.parametrize(
    "arch",
    [
        ArchConfig(kind="conv", blocks=3, channels=5, activation="relu"),
        ArchConfig(kind="conv", blocks=3, channels=5, activation="leaky_relu"),
        ArchConfig(kind="conv", blocks=2, channels=5, activation="tanh"),
        ArchConfig(kind="conv", blocks=2, channels=5, downsample="stride"),
        ArchConfig(kind="mlp", depth=2, width=7, activation="gelu"),
    ],
    ids=["relu-pool", "leaky-relu-pool", "tanh-pool", "stride", "mlp"],
)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_batched_forward_equals_the_module(arch, in_channels):
    torch.manual_seed(0)
    shape = (in_channels, 11, 11) if arch.kind == "conv" else (4,)
    net = build_network(arch, shape, 6).double()
    params = dict(net.named_parameters())
    x = torch.randn(3, 7, *shape, dtype=torch.float64)
    out = make_batched_forward(net)(stack_params(params, 3), x)
    expected = torch.stack([net(task) for task in x])
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_channels_last_copy_makes_the_conv_output_channels_last_even_with_one_channel():
    # With one channel, Tensor.contiguous(memory_format=channels_last) is a no-op and the
    # convolutions fall back to the default layout, several times slower on CPU.
    x, filters = torch.rand(4, 1, 12, 12), torch.rand(8, 1, 3, 3)
    assert F.conv2d(x.contiguous(memory_format=torch.channels_last), filters).stride(1) != 1
    out = F.conv2d(channels_last(x), filters)
    assert out.stride(1) == 1 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(channels_last(x), x)


def test_the_batched_conv_forward_runs_channels_last_on_cpu(monkeypatch):
    convolve, outputs = F.conv2d, []

    def recording(*args, **kwargs):
        out = convolve(*args, **kwargs)
        outputs.append(out)
        return out

    net = build_network(ArchConfig(kind="conv", blocks=2, channels=8), (1, 12, 12), 5)
    forward = make_batched_forward(net)
    monkeypatch.setattr(F, "conv2d", recording)
    for n_tasks in (1, 2):  # the first block's patch route and the general one
        forward(stack_params(dict(net.named_parameters()), n_tasks), torch.rand(n_tasks, 4, 1, 12, 12))
    assert len(outputs) == 4
    assert all(h.stride(1) == 1 and h.is_contiguous(memory_format=torch.channels_last) for h in outputs)
