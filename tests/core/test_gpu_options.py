"""GPU-facing options, tested on CPU: mixed precision, peak GPU memory, worker devices.

Mixed-precision tolerance (stated, measured on CPU with torch 2.13): the bf16 meta-gradient
of the float32 master weights is compared with the fp32 one by relative L2 error
``|g_bf16 - g_fp32| / |g_fp32|`` and cosine similarity. Sinusoid MLP 1-40-40-1, 25 tasks:
measured ≈ 0.02 / 0.9998, asserted ≤ 0.05 / ≥ 0.999. A small conv net (2 blocks of 8
channels, 14×14, 3-way): measured ≈ 0.13–0.17 / ≈ 0.99 (bf16 rounds inputs and weights
to 8 mantissa bits, and batch-statistics gradients cancel heavily), asserted ≤ 0.3 / ≥ 0.95.
"""

from __future__ import annotations

import pytest
import torch

from maml_tune.core.config import AlgoConfig, ArchConfig
from maml_tune.core.evaluation import evaluate
from maml_tune.core.learner import MetaLearner
from maml_tune.core.tasks import TaskBatch
from maml_tune.core.trainer import MetaTrainer
from maml_tune.errors import ConfigError
from maml_tune.families.sinusoid import Sinusoid

CPU = torch.device("cpu")


def _problem(kind: str):
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(0)
    if kind == "mlp":
        learner = MetaLearner(ArchConfig(), AlgoConfig(inner_lr=0.01), (1,), 1, "regression")
        sx, qx = (torch.rand(25, 10, 1, generator=g) * 10 - 5 for _ in range(2))
        amp = torch.rand(25, 1, 1, generator=g) * 4.9 + 0.1
        return learner, TaskBatch(sx, amp * torch.sin(sx), qx, amp * torch.sin(qx))
    learner = MetaLearner(
        ArchConfig(kind="conv", blocks=2, channels=8), AlgoConfig(inner_lr=0.2, inner_steps=2),
        (1, 14, 14), 3, "classification",
    )
    labels = torch.arange(3).repeat(2).expand(3, -1).clone()
    images = [torch.randn(3, 6, 1, 14, 14, generator=g) for _ in range(2)]
    return learner, TaskBatch(images[0], labels, images[1], labels)


def _meta_gradient(learner, batch, strategy, precision):
    learner.zero_grad(set_to_none=True)
    learner.accumulate_meta_gradient(batch, strategy, precision=precision)
    grads = [p.grad for p in learner.parameters()]
    assert all(g.dtype == torch.float32 for g in grads)  # float32 master weights and gradients
    return torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize(
    ("kind", "strategy", "max_rel", "min_cos"),
    [("mlp", "vmap", 0.05, 0.999), ("mlp", "batched", 0.05, 0.999),
     ("conv", "loop", 0.3, 0.95), ("conv", "batched", 0.3, 0.95)],
)
def test_bf16_meta_gradient_is_close_to_fp32(kind, strategy, max_rel, min_cos):
    learner, batch = _problem(kind)
    fp32 = _meta_gradient(learner, batch, strategy, "fp32")
    bf16 = _meta_gradient(learner, batch, strategy, "bf16")
    rel = ((bf16 - fp32).norm() / fp32.norm()).item()
    cos = torch.nn.functional.cosine_similarity(bf16, fp32, dim=0).item()
    assert rel <= max_rel and cos >= min_cos, (rel, cos)
    assert rel > 0  # autocast really ran in bf16


def test_fp32_precision_is_bitwise_the_default():
    learner, batch = _problem("mlp")
    default = _meta_gradient(learner, batch, "vmap", "fp32")
    learner.zero_grad(set_to_none=True)
    learner.accumulate_meta_gradient(batch, "vmap")
    assert torch.equal(default, torch.cat([p.grad.flatten() for p in learner.parameters()]))


def test_precision_is_validated():
    with pytest.raises(ConfigError, match="train.precision"):
        Sinusoid().run_config({"train.precision": "fp8"})


def test_short_bf16_sinusoid_training_still_learns():
    family = Sinusoid()
    # Measured (CPU): test loss after/before 0.52 in bf16, 0.53 in fp32 for this budget.
    config = family.run_config({"train.iterations": 250, "train.val_interval": 250,
                                "train.val_tasks": 50, "train.precision": "bf16",
                                "train.meta_lr": 0.003})
    result = MetaTrainer(config, family, CPU).run()
    assert result.peak_gpu_mb is None  # CPU run
    test = evaluate(result.learner, family, split="test", tasks=200, steps=1, seed=2,
                    strategy=result.strategy, device=CPU, precision="bf16")
    assert test.loss_after.mean < 0.65 * test.loss_before.mean, test


def test_fp16_training_runs_with_a_gradient_scaler():
    family = Sinusoid()
    config = family.run_config({"train.iterations": 20, "train.val_interval": 20,
                                "train.val_tasks": 10, "train.precision": "fp16",
                                "arch.width": 20})
    result = MetaTrainer(config, family, CPU).run()
    assert result.iterations == 20 and result.skipped_steps < 20
    for p in result.learner.parameters():
        assert p.dtype == torch.float32 and torch.isfinite(p).all()


def test_search_workers_get_one_gpu_each(monkeypatch):
    """``--workers N`` with several (visible) GPUs: worker i runs on cuda:(i % count)."""
    from maml_tune.search.runner import worker_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert [str(worker_device("auto", i)) for i in range(5)] == [
        "cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"
    ]
    assert str(worker_device("cuda", 4)) == "cuda:1"
    assert [str(worker_device("cuda:2", i)) for i in range(3)] == ["cuda:2"] * 3  # pinned
    assert str(worker_device("cpu", 1)) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert str(worker_device("auto", 2)) == "cpu"


def test_bench_reports_the_strategy_and_its_options():
    import json

    from typer.testing import CliRunner

    from maml_tune.cli.main import app

    args = ["bench", "--family", "sinusoid", "--device", "cpu", "--seconds", "0.2",
            "--meta-batch", "4", "--json"]
    result = CliRunner().invoke(app, args + ["--strategy", "batched", "--task-chunk", "2",
                                             "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # progress lines go to stderr
    assert data["strategy"] == "batched" and data["task_chunk"] == 2 and data["precision"] == "bf16"
    assert data["tasks_per_sec"] > 0 and data["peak_rss_mb"] > 0 and "peak_gpu_mb" not in data
    assert data["strategy_reason"].startswith("requested")
    auto = json.loads(CliRunner().invoke(app, args).stdout)
    assert auto["strategy"] == "batched" and "auto" in auto["strategy_reason"]
    table = CliRunner().invoke(app, args[:-1])
    text = " ".join(table.output.split())
    assert "(auto)" in text and "strategy: auto" in text and "--strategy" in text
