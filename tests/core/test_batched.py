"""The batched forward computes exactly the network's own function, in the fast layout."""

from __future__ import annotations

import pytest
import torch

from maml_tune.core.batched import make_batched_forward, stack_params
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


def test_conv_activations_are_channels_last_on_cpu_even_with_one_input_channel():
    # With one channel, Tensor.contiguous(memory_format=channels_last) is a no-op and the
    # convolutions fall back to the default layout, several times slower on CPU.
    net = build_network(ArchConfig(kind="conv", blocks=2, channels=8), (1, 12, 12), 5)
    seen: list[torch.Tensor] = []
    for module in net.body:
        if isinstance(module, torch.nn.MaxPool2d):
            module.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    forward = make_batched_forward(net)
    forward(stack_params(dict(net.named_parameters()), 2), torch.rand(2, 4, 1, 12, 12))
    assert len(seen) == 2
    assert all(h.stride(1) == 1 and h.is_contiguous(memory_format=torch.channels_last) for h in seen)
