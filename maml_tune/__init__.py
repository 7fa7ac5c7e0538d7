"""maml-tune: automatic hyperparameter search for MAML.

The public Python API (:func:`load_learner`) is imported lazily so that ``maml-tune
--help`` does not pay for importing torch.
"""

__version__ = "0.1.0"

__all__ = ["AdaptedModel", "Learner", "MamlTuneError", "__version__", "load_learner"]

_LAZY = {
    "load_learner": "maml_tune.core.api",
    "Learner": "maml_tune.core.api",
    "AdaptedModel": "maml_tune.core.api",
    "MamlTuneError": "maml_tune.errors",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'maml_tune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
