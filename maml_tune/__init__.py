"""maml-tune: automatic hyperparameter search for MAML."""

__version__ = "0.1.0"
