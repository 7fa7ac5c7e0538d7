"""First-order MAML (Finn et al. 2017, section 5.2): MAML whose meta-gradient drops the
second-derivative terms, whatever ``algo.first_order`` says."""

from maml_tune.core.algorithms._base import Algorithm


class FirstOrderMAML(Algorithm):
    name = "fomaml"
    summary = "first-order MAML (Finn et al. 2017): MAML without second-derivative terms"
    always_first_order = True


ALGORITHM = FirstOrderMAML()
