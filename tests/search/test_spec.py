"""Study-spec validation: every error names the file, the key path and what was expected."""

from __future__ import annotations

import pytest

from maml_tune.errors import ConfigError
from maml_tune.search.space import suggest
from maml_tune.search.spec import apply_overrides, default_spec_path, load_spec, parse_spec
from maml_tune.search.storage import make_pruner, make_sampler, mask_url


def _error(write_spec, registry, text: str) -> str:
    path = write_spec(text)
    with pytest.raises(ConfigError) as info:
        load_spec(path, registry)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


@pytest.mark.parametrize(
    ("text", "key_path", "expected"),
    [
        ("bogus = 1\n", "bogus", "expected one of"),
        ("[study]\nfoo = 1\n", "study.foo", "expected one of"),
        ("[budget]\nepochs = 3\n", "budget.epochs", "expected one of"),
        ('[budget]\niterations = "many"\n', "budget.iterations", "expected an integer"),
        (
            '[space]\n"algo.inner_lr" = { type = "float", low = 0.5, high = 0.1 }\n',
            "space.algo.inner_lr",
            "inverted range",
        ),
        (
            '[space]\n"algo.inner_steps" = { type = "int", low = 2, high = 2 }\n',
            "space.algo.inner_steps",
            "empty range",
        ),
        (
            '[space]\n"algo.inner_lr" = { type = "float", low = 0.0, high = 1.0, log = true }\n',
            "space.algo.inner_lr.low",
            "low > 0",
        ),
        (
            '[space]\n"algo.inner_lr" = { type = "float", low = -0.5, high = 1.0, log = true }\n',
            "space.algo.inner_lr.low",
            "low > 0",
        ),
        (
            '[space]\n"algo.inner_lr" = { type = "float", low = "a", high = 1.0 }\n',
            "space.algo.inner_lr.low",
            "expected a number",
        ),
        (
            '[space]\n"algo.inner_lr" = { type = "real", low = 0.1, high = 1.0 }\n',
            "space.algo.inner_lr.type",
            "expected one of float, int, categorical",
        ),
        (
            '[space]\n"algo.inner_lr" = { type = "float", low = 0.1, high = 1.0, lg = true }\n',
            "space.algo.inner_lr.lg",
            "unknown key",
        ),
        (
            '[space]\n"arch.width" = { type = "float", low = 1, high = 10 }\n',
            "space.arch.width.type",
            'type = "int"',
        ),
        (
            '[space]\n"algo.algorithm" = { type = "categorical", choices = [] }\n',
            "space.algo.algorithm.choices",
            "non-empty",
        ),
        (
            '[space]\n"algo.algorithm" = { type = "categorical", choices = ["maml", "imaml"] }\n',
            "space.algo.algorithm.choices[1]",
            "expected one of",
        ),
        (
            '[space]\n"algo.nope" = { type = "int", low = 1, high = 3 }\n',
            "space.algo.nope",
            "unknown setting",
        ),
        (
            '[space]\n"arch.channels" = { type = "int", low = 8, high = 16, when = { "arch.colour" = 1 } }\n',
            "space.arch.channels.when.arch.colour",
            "unknown setting",
        ),
        ('[study]\nsampler = "annealing"\n', "study.sampler", "expected one of tpe, random"),
        ('[study]\npruner = "patient"\n', "study.pruner", "expected one of median"),
        ("[study]\nn_trials = 0\n", "study.n_trials", "expected an integer >= 1"),
        ("[study]\nsampler_options = { warp = 3 }\n", "study.sampler_options.warp", "unknown option"),
        ('[family]\nname = "nosuchfamily"\n', "family.name", "unknown task family"),
        (
            '[family]\nname = "sinusoid"\n[family.options]\nk_shots = 3\n',
            "family.options.k_shots",
            "no option",
        ),
        (
            '[family]\nname = "sinusoid"\n[family.options]\nk_shot = 0\n',
            "family.options.k_shot",
            "expected >= 1",
        ),
        ('[fixed]\n"train.meta_lr" = -1.0\n', "fixed.train.meta_lr", "expected a number > 0"),
        ('[fixed]\n"train.iterations" = 5\n', "fixed.train.iterations", "[budget]"),
        ('[objective]\nmetrics = ["val_accuracy"]\n', "objective.metrics[0]", "classification"),
        (
            '[objective]\nmetrics = ["val_loss", "adaptation_cost"]\n[study]\npruner = "median"\n',
            "study.pruner",
            "expected none",
        ),
        (
            '[objective]\nmetrics = ["val_loss"]\ndirections = ["down"]\n',
            "objective.directions[0]",
            "minimize or maximize",
        ),
        (  # a 1 MiB spec holds 150 000 choices: minutes to check one by one
            '[space]\n"arch.width" = { type = "categorical", choices = ['
            + ", ".join(str(i) for i in range(1, 5001))
            + "] }\n",
            "space.arch.width.choices",
            "expected at most 1000 choices, got 5000",
        ),
    ],
)
def test_invalid_specs_name_file_key_and_expectation(write_spec, registry, text, key_path, expected):
    message = _error(write_spec, registry, text)
    assert f": {key_path}: " in message, message
    assert expected in message, message


def test_invalid_toml_names_the_file(write_spec, registry):
    message = _error(write_spec, registry, "[space\n")
    assert "invalid TOML" in message


def test_default_spec_is_valid_and_matches_studies_folder(registry):
    from pathlib import Path

    spec = load_spec(default_spec_path(), registry)
    assert spec.family == "sinusoid" and spec.study.baseline
    assert {
        "algo.inner_lr",
        "algo.inner_steps",
        "algo.test_inner_steps",
        "arch.depth",
        "arch.width",
        "train.meta_lr",
        "train.meta_batch",
        "algo.first_order",
        "algo.algorithm",
    } <= set(spec.space)
    repo_copy = Path(__file__).resolve().parents[2] / "studies" / "sinusoid.toml"
    assert repo_copy.read_text() == default_spec_path().read_text()


def test_omniglot_spec_is_valid_when_the_family_exists(registry):
    from pathlib import Path

    if "omniglot" not in registry.names():
        pytest.skip("the omniglot family is not registered in this checkout")
    spec = load_spec(Path(__file__).resolve().parents[2] / "studies" / "omniglot.toml", registry)
    assert spec.kind == "classification" and spec.objective.metrics == ("val_accuracy",)
    assert spec.space["arch.channels"]["when"] == {"arch.kind": ["conv"]}


def test_negative_inner_lr_linear_range_is_allowed(write_spec, registry, tiny_text):
    spec = load_spec(
        write_spec(
            tiny_text.replace(
                '"algo.inner_lr" = { type = "float", low = 1e-3, high = 0.5, log = true }',
                '"algo.inner_lr" = { type = "float", low = -0.5, high = 1.0 }',
            )
        ),
        registry,
    )
    assert spec.space["algo.inner_lr"] == {"type": "float", "low": -0.5, "high": 1.0, "log": False}


def test_inherit_space_narrow_fix_and_add(write_spec, registry):
    text = """
    [family]
    name = "sinusoid"
    [space]
    "algo.inner_lr" = { type = "float", low = 0.005, high = 0.05, log = true }
    "algo.multi_step_loss" = { type = "categorical", choices = [false, true] }
    [fixed]
    "arch.activation" = "relu"
    """
    spec = load_spec(write_spec(text), registry)
    assert spec.space["algo.inner_lr"]["low"] == 0.005  # narrowed
    assert "arch.activation" not in spec.space  # fixed
    assert "algo.multi_step_loss" in spec.space  # added
    assert "arch.depth" in spec.space  # inherited from the family default


def test_cli_overrides_fix_a_searched_setting(write_spec, registry):
    path = write_spec()
    spec = load_spec(
        path,
        registry,
        {"sets": {"algo.inner_lr": "0.05", "budget.iterations": "7"}, "n_trials": 9, "sampler": "tpe"},
    )
    assert "algo.inner_lr" not in spec.space and spec.fixed["algo.inner_lr"] == "0.05"
    assert spec.budget.iterations == 7 and spec.study.n_trials == 9 and spec.study.sampler == "tpe"
    data = apply_overrides({"family": "sinusoid"}, {"family": "sinusoid"})
    assert data["family"] == "sinusoid"


class _FakeTrial:
    def __init__(self):
        self.asked = []

    def suggest_categorical(self, name, choices):
        self.asked.append(name)
        return choices[0]

    def suggest_int(self, name, low, high, step=1, log=False):
        self.asked.append(name)
        return low

    def suggest_float(self, name, low, high, step=None, log=False):
        self.asked.append(name)
        return low


def test_conditional_parameters(write_spec, registry):
    text = """
    [family]
    name = "sinusoid"
    [space]
    "arch.kind" = { type = "categorical", choices = ["mlp", "conv"] }
    "arch.channels" = { type = "categorical", choices = [16, 32], when = { "arch.kind" = "conv" } }
    "arch.width" = { type = "int", low = 8, high = 16, when = { "arch.kind" = "mlp" } }
    "algo.first_order" = { type="categorical", choices=[false, true], when={ "algo.algorithm" = "maml" } }
    [study]
    inherit_space = false
    """
    spec = load_spec(write_spec(text), registry)
    trial = _FakeTrial()
    values = suggest(trial, spec.space, {"algo.algorithm": "maml"})
    assert values == {"arch.kind": "mlp", "arch.width": 8, "algo.first_order": False}
    assert "arch.channels" not in trial.asked
    assert "algo.first_order" not in suggest(_FakeTrial(), spec.space, {"algo.algorithm": "fomaml"})


def test_condition_cycle_is_rejected(write_spec, registry):
    text = """
    [space]
    "arch.depth" = { type = "int", low = 1, high = 3, when = { "arch.width" = 8 } }
    "arch.width" = { type = "int", low = 8, high = 9, when = { "arch.depth" = 1 } }
    [study]
    inherit_space = false
    """
    message = _error(write_spec, registry, text)
    assert "cycle" in message


def test_mask_url_hides_passwords():
    assert mask_url("postgresql+psycopg://user:s3cret@db:5432/x") == "postgresql+psycopg://user:***@db:5432/x"
    assert mask_url("postgresql://db/x?user=u&password=s3cret") == "postgresql://db/x?user=u&password=***"
    assert mask_url("sqlite:///studies/maml-tune.db") == "sqlite:///studies/maml-tune.db"


@pytest.mark.parametrize("password", ["pa/ssS3cretPW", "p@ssS3cretPW", "a:b%2F#c?d", "x@y/z:w"])
def test_mask_url_hides_passwords_with_url_characters_whole(password):
    masked = mask_url(f"postgresql://root:{password}@db.example:5432/studies?sslmode=require")
    assert masked == "postgresql://root:***@db.example:5432/studies?sslmode=require"
    assert mask_url("postgresql://root@db/x") == "postgresql://root@db/x"
    assert mask_url("sqlite:////tmp/at@sign.db") == "sqlite:////tmp/at@sign.db"


@pytest.mark.parametrize("name", ["tpe", "random", "gp", "nsga2"])
def test_samplers_construct(name):
    assert make_sampler(name, 0) is not None


@pytest.mark.parametrize("name", ["median", "hyperband", "sha", "wilcoxon", "none"])
def test_pruners_construct(name):
    assert make_pruner(name, {}, 100, 10) is not None


def test_missing_sampler_dependency_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("cmaes") is not None:
        pytest.skip("cmaes is installed")
    with pytest.raises(ConfigError, match="pip install cmaes"):
        make_sampler("cmaes", 0)


def test_parse_spec_from_data(registry):
    spec = parse_spec({"family": "sinusoid"}, "<data>", registry)
    assert spec.study.name == "sinusoid" and spec.objective.metrics == ("val_loss",)


def test_changing_the_pruner_drops_the_specs_pruner_options(write_spec, registry, tiny_text):
    text = tiny_text.replace('pruner = "none"', 'pruner = "median"')
    path = write_spec(text, extra="[study.pruner_options]\nn_startup_trials = 1\n")
    assert load_spec(path, registry).study.pruner_options == {"n_startup_trials": 1}
    spec = load_spec(path, registry, {"pruner": "hyperband"})
    assert spec.study.pruner == "hyperband" and spec.study.pruner_options == {}
