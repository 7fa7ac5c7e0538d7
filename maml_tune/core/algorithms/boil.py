"""BOIL (Oh et al. 2021, "Body only update in inner loop"): the opposite of ANIL, only the
body adapts in the inner loop and the head stays at its meta-learned weights, so
adaptation has to move the features rather than the decision boundary."""

from collections.abc import Sequence

from maml_tune.core.algorithms._base import Algorithm


class BOIL(Algorithm):
    name = "boil"
    summary = "BOIL (Oh et al. 2021): only the body adapts in the inner loop; the head is fixed"

    def adapted(self, names: Sequence[str], head_prefix: str) -> list[str]:
        return [name for name in names if not name.startswith(head_prefix)]


ALGORITHM = BOIL()
