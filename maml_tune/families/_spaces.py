"""Default search spaces, in the spec form used by study specs (see ``studies/*.toml``).

Each parameter is keyed by its dotted run-config setting and is one of
``{"type": "float", "low", "high", "log"?}``, ``{"type": "int", "low", "high", "log"?}``
or ``{"type": "categorical", "choices": [...]}``; ``"when": {"setting": value}`` makes it
conditional on another parameter's value.
"""

from __future__ import annotations

from typing import Any

from maml_tune.core.algorithms import ALGORITHMS

_FIRST = ("maml", "fomaml", "anil", "metasgd", "lslr")
"""These lead the choices in the order trials have always sampled them (a categorical's
choice order changes what a seeded sampler draws); every other registered one follows."""


def _searched_algorithms() -> list[str]:
    return sorted(ALGORITHMS, key=lambda name: (_FIRST.index(name) if name in _FIRST else len(_FIRST), name))


_COMMON: dict[str, dict[str, Any]] = {
    "algo.algorithm": {"type": "categorical", "choices": _searched_algorithms()},
    # Only where it is a choice: fomaml and reptile are always first order.
    "algo.first_order": {
        "type": "categorical",
        "choices": [False, True],
        "when": {
            "algo.algorithm": [
                name for name in _searched_algorithms() if not ALGORITHMS[name].always_first_order
            ]
        },
    },
    "algo.inner_lr": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
    "algo.inner_steps": {"type": "int", "low": 1, "high": 5},
    "algo.test_inner_steps": {"type": "int", "low": 1, "high": 10},
    "train.meta_lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
}

_MLP: dict[str, dict[str, Any]] = {
    "arch.depth": {"type": "int", "low": 1, "high": 4},
    "arch.width": {"type": "int", "low": 16, "high": 128, "log": True},
    "arch.activation": {"type": "categorical", "choices": ["relu", "tanh", "silu"]},
    "train.meta_batch": {"type": "int", "low": 4, "high": 32, "log": True},
}

_CONV: dict[str, dict[str, Any]] = {
    # ResNet-12's channels are its first stage's width (x1, x2.5, x5, x10 after it).
    "arch.kind": {"type": "categorical", "choices": ["conv", "resnet12"]},
    "arch.blocks": {"type": "int", "low": 2, "high": 4, "when": {"arch.kind": "conv"}},
    "arch.channels": {"type": "categorical", "choices": [16, 32, 64]},
    "train.meta_batch": {"type": "int", "low": 4, "high": 32, "log": True},
}


def default_space(arch_kind: str) -> dict[str, dict[str, Any]]:
    """The default search space for a family whose default architecture is ``arch_kind``."""
    extra = _MLP if arch_kind == "mlp" else _CONV
    return {name: dict(spec) for name, spec in {**_COMMON, **extra}.items()}
