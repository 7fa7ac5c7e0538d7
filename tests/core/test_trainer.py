import math

import pytest
import torch

from maml_tune.core.algorithms import ALGORITHMS
from maml_tune.core.config import AlgoConfig, RunConfig
from maml_tune.core.evaluation import evaluate
from maml_tune.core.trainer import MetaTrainer, TrainerCallback, multi_step_weights
from maml_tune.errors import DivergenceError
from maml_tune.families.sinusoid import Sinusoid

CPU = torch.device("cpu")


def _config(**overrides):
    base = {"train.iterations": 30, "train.val_interval": 10, "train.val_tasks": 20,
            "arch.width": 20}
    return Sinusoid().run_config({**base, **overrides})


def test_short_sinusoid_run_halves_the_post_adaptation_loss():
    family = Sinusoid()
    config = family.run_config({"train.iterations": 1500, "train.val_interval": 500})
    result = MetaTrainer(config, family, CPU).run()
    test = evaluate(result.learner, family, split="test", tasks=600, steps=1, seed=2,
                    strategy=result.strategy, device=CPU)
    assert test.loss_after.mean < 0.5 * test.loss_before.mean, test
    assert [i for i, _ in result.validations] == [500, 1000, 1500]


def test_training_is_deterministic_for_a_seed():
    family = Sinusoid()
    runs = [MetaTrainer(_config(), family, CPU).run() for _ in range(2)]
    for a, b in zip(runs[0].learner.parameters(), runs[1].learner.parameters()):
        assert torch.equal(a, b)
    other = MetaTrainer(_config(**{"train.seed": 1}), family, CPU).run()
    assert not torch.equal(next(other.learner.parameters()), next(runs[0].learner.parameters()))


def test_callbacks_receive_every_iteration_and_validation():
    seen = {"iterations": [], "validations": []}

    class Recorder(TrainerCallback):
        def on_iteration(self, report):
            seen["iterations"].append(report.iteration)
            assert math.isfinite(report.meta_loss) and report.tasks_per_sec > 0

        def on_validation(self, iteration, result):
            seen["validations"].append((iteration, result.tasks))

    MetaTrainer(_config(), Sinusoid(), CPU, [Recorder()]).run()
    assert seen["iterations"] == list(range(1, 31))
    assert seen["validations"] == [(10, 20), (20, 20), (30, 20)]


def test_a_callback_exception_stops_training():
    class Stop(TrainerCallback):
        def on_validation(self, iteration, result):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        MetaTrainer(_config(), Sinusoid(), CPU, [Stop()]).run()


def test_divergence_stops_with_a_typed_error():
    config = _config(**{"algo.inner_lr": 1e6, "algo.inner_steps": 3})
    with pytest.raises(DivergenceError) as info:
        MetaTrainer(config, Sinusoid(), CPU).run()
    assert info.value.iteration >= 1
    assert "iteration" in str(info.value)


@pytest.mark.parametrize("algorithm", [name for name in ALGORITHMS if name != "reptile"])
def test_every_algorithm_trains_with_validation(algorithm):
    config = _config(**{"algo.algorithm": algorithm, "algo.inner_steps": 2,
                        "algo.multi_step_loss": True})
    result = MetaTrainer(config, Sinusoid(), CPU).run()
    assert result.iterations == 30 and len(result.validations) == 3


def test_train_and_test_inner_steps_may_differ():
    config = _config(**{"algo.inner_steps": 1, "algo.test_inner_steps": 5})
    assert config.algo.eval_inner_steps == 5
    trainer = MetaTrainer(config, Sinusoid(), CPU)
    assert trainer.run().validations[-1][1].steps == 5


def test_multi_step_weights_anneal_onto_the_last_step():
    algo = AlgoConfig(inner_steps=4, multi_step_loss=True, msl_anneal_iterations=100)
    start, late = multi_step_weights(algo, 0), multi_step_weights(algo, 10_000)
    assert start == pytest.approx([0.25] * 4)
    assert late[:3] == pytest.approx([0.03 / 4] * 3) and late[3] == pytest.approx(1 - 3 * 0.03 / 4)
    assert multi_step_weights(AlgoConfig(inner_steps=4), 0) is None


def test_grad_clip_and_cosine_run():
    config = _config(**{"train.grad_clip": 0.1, "train.cosine": True})
    assert MetaTrainer(config, Sinusoid(), CPU).run().iterations == 30


def test_run_config_round_trips_and_rejects_unknown_keys():
    from maml_tune.errors import ConfigError

    config = _config(**{"algo.test_inner_steps": 3})
    assert RunConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="train.bogus"):
        config.override({"train.bogus": 1})
    with pytest.raises(ConfigError, match="algo.inner_steps"):
        config.override({"inner_steps": 0})
    with pytest.raises(ConfigError, match="expected a number"):
        config.override({"algo.inner_lr": "fast"})
    assert config.override({"inner_lr": "-0.5"}).algo.inner_lr == -0.5


def _spy_on_steps(monkeypatch):
    """Records, at every optimiser step, the meta-gradient's total norm and the multi-step
    weights the meta-batch was computed with."""
    from maml_tune.core.learner import MetaLearner

    seen = {"norms": [], "weights": []}
    accumulate, step = MetaLearner.accumulate_meta_gradient, torch.optim.Adam.step

    def recording_accumulate(self, batch, strategy, step_weights=None, *args, **kwargs):
        seen["weights"].append(step_weights)
        return accumulate(self, batch, strategy, step_weights, *args, **kwargs)

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen["norms"].append(torch.nn.utils.get_total_norm(grads).item())
        return step(self, *args, **kwargs)

    monkeypatch.setattr(MetaLearner, "accumulate_meta_gradient", recording_accumulate)
    monkeypatch.setattr(torch.optim.Adam, "step", recording_step)
    return seen


def test_grad_clip_bounds_every_applied_meta_gradient(monkeypatch):
    seen = _spy_on_steps(monkeypatch)
    MetaTrainer(_config(**{"train.iterations": 5, "train.val_interval": 5}), Sinusoid(), CPU).run()
    unclipped = seen["norms"][:]
    assert min(unclipped) > 0.2, unclipped  # the clip below binds at every step
    seen["norms"].clear()
    MetaTrainer(_config(**{"train.iterations": 5, "train.val_interval": 5, "train.grad_clip": 0.1}),
                Sinusoid(), CPU).run()
    assert len(seen["norms"]) == 5 and max(seen["norms"]) <= 0.1 * (1 + 1e-5), seen["norms"]


def test_cosine_schedule_anneals_the_reported_meta_lr():
    rates = []

    class Rates(TrainerCallback):
        def on_iteration(self, report):
            rates.append(report.meta_lr)

    iterations, meta_lr = 8, 1e-3
    config = _config(**{"train.iterations": iterations, "train.val_interval": iterations,
                        "train.cosine": True, "train.meta_lr": meta_lr})
    MetaTrainer(config, Sinusoid(), CPU, [Rates()]).run()
    # The rate each iteration's step used: cosine from meta_lr towards 0 over the run.
    want = [meta_lr * (1 + math.cos(math.pi * i / iterations)) / 2 for i in range(iterations)]
    assert rates == pytest.approx(want, rel=1e-9)


def test_multi_step_weights_follow_the_iteration_they_are_used_at(monkeypatch):
    seen = _spy_on_steps(monkeypatch)
    config = _config(**{"train.iterations": 4, "train.val_interval": 4, "algo.inner_steps": 3,
                        "algo.multi_step_loss": True, "algo.msl_anneal_iterations": 2})
    MetaTrainer(config, Sinusoid(), CPU).run()
    # Iteration 1 uses the weights at 0 (uniform), and so on; they are annealed by iteration 2.
    assert seen["weights"] == [multi_step_weights(config.algo, i) for i in range(4)]
    assert seen["weights"][0] == pytest.approx([1 / 3] * 3)


@pytest.mark.parametrize(
    ("settings", "optimizer"),
    [({}, torch.optim.Adam), ({"train.optimizer": "adamw", "train.weight_decay": 0.01}, torch.optim.AdamW),
     ({"train.optimizer": "sgd", "train.momentum": 0.9, "train.nesterov": True}, torch.optim.SGD)],
)
def test_outer_optimiser_is_configuration(settings, optimizer):
    from maml_tune.core.trainer import build_optimizer

    adam_betas = {} if settings.get("train.optimizer") == "sgd" else {"train.beta1": 0.8}
    config = _config(**adam_betas, **settings)
    built = build_optimizer([torch.nn.Parameter(torch.zeros(2))], config.train)
    assert type(built) is optimizer
    group = built.param_groups[0]
    assert group["lr"] == config.train.meta_lr and group["weight_decay"] == config.train.weight_decay
    if optimizer is torch.optim.SGD:
        assert group["momentum"] == 0.9 and group["nesterov"]
    else:
        assert group["betas"] == (0.8, 0.999) and group["eps"] == 1e-8


def test_sgd_meta_step_is_minus_meta_lr_times_the_meta_gradient(monkeypatch):
    seen = _spy_on_steps(monkeypatch)
    config = _config(**{"train.iterations": 1, "train.val_interval": 1, "train.optimizer": "sgd",
                        "train.meta_lr": 0.05})
    trainer = MetaTrainer(config, Sinusoid(), CPU)
    run = trainer.start()
    before = [p.detach().clone() for p in run.learner.parameters()]
    trainer.step(run, 1)
    for p, old in zip(run.learner.parameters(), before):
        assert torch.allclose(p.detach(), old - 0.05 * p.grad, atol=1e-7)
    assert seen["weights"] == [None]


def test_optimiser_settings_it_does_not_use_are_refused():
    from maml_tune.errors import ConfigError

    with pytest.raises(ConfigError, match="train.momentum does not apply to train.optimizer adam"):
        _config(**{"train.momentum": 0.9})
    with pytest.raises(ConfigError, match="train.beta2 does not apply to train.optimizer sgd"):
        _config(**{"train.optimizer": "sgd", "train.beta2": 0.99})
    with pytest.raises(ConfigError, match="train.optimizer: expected one of adam, adamw, sgd"):
        _config(**{"train.optimizer": "lion"})
    with pytest.raises(ConfigError, match="train.beta1"):
        _config(**{"train.beta1": 1.0})


def test_bench_times_the_training_step_with_its_checks():
    from maml_tune.core.bench import measure_throughput

    config = _config(**{"algo.inner_lr": 1e6, "algo.inner_steps": 3})
    with pytest.raises(DivergenceError):
        measure_throughput(config, Sinusoid(), CPU, seconds=0.2)


def test_a_split_that_cannot_give_a_task_fails_before_any_training():
    """A 20-way run whose validation split holds 12 classes used to train to the end and fail
    at its first validation; every split is now sampled once before the first iteration."""
    from maml_tune.errors import ConfigError
    from maml_tune.families.sinusoid import Sinusoid

    class NoValidationTasks(Sinusoid):
        def sample(self, split, n_tasks, generator, device):
            if split == "val":
                raise ConfigError("split 'val' has 12 classes, fewer than n_way=20")
            return super().sample(split, n_tasks, generator, device)

    iterations = []

    class Count:
        def on_iteration(self, report):
            iterations.append(report.iteration)

        def on_validation(self, iteration, result):
            pass

    family = NoValidationTasks()
    config = family.run_config({"train.iterations": 50, "train.val_interval": 50})
    with pytest.raises(ConfigError, match="fewer than n_way"):
        MetaTrainer(config, family, torch.device("cpu"), [Count()]).run()
    assert iterations == []
