"""ANIL (Raghu et al. 2020, "Rapid learning or feature reuse?"): only the head adapts in
the inner loop; the body is meta-learned but fixed during adaptation."""

from collections.abc import Sequence

from maml_tune.core.algorithms._base import Algorithm


class ANIL(Algorithm):
    name = "anil"
    summary = "ANIL (Raghu et al. 2020): only the head adapts in the inner loop"

    def adapted(self, names: Sequence[str], head_prefix: str) -> list[str]:
        return [name for name in names if name.startswith(head_prefix)]


ALGORITHM = ANIL()
