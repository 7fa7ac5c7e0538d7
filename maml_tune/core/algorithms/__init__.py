"""MAML variants: one module per algorithm, each defining ``ALGORITHM``, an instance of
:class:`Algorithm`. Modules of this package are found at import; adding a variant is one
new module (and its case in the float64 reference tests, see the README)."""

from maml_tune.core.algorithms._base import Algorithm, QueryLoss
from maml_tune.core.algorithms._registry import ALGORITHMS, algorithm

__all__ = ["ALGORITHMS", "Algorithm", "QueryLoss", "algorithm"]
