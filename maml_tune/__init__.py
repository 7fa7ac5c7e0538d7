"""maml-tune: automatic hyperparameter search for MAML.

The public Python API (:func:`load_learner`) is imported lazily so that ``maml-tune
--help`` does not pay for importing torch.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_learner"]


def __getattr__(name: str):
    if name == "load_learner":
        from maml_tune.core.api import load_learner

        return load_learner
    raise AttributeError(f"module 'maml_tune' has no attribute {name!r}")
