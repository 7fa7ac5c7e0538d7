"""MAML (Finn et al. 2017): every weight adapts at the fixed rate ``algo.inner_lr``; the
meta-loss is the query loss after adaptation, second order unless ``algo.first_order``."""

from maml_tune.core.algorithms._base import Algorithm


class MAML(Algorithm):
    name = "maml"
    summary = "MAML (Finn et al. 2017): all weights adapt; second order unless algo.first_order"


ALGORITHM = MAML()
