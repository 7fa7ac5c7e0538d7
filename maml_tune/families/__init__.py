"""Task families: the contract, the built-in families and the plugin registry."""

from maml_tune.core.tasks import TaskBatch
from maml_tune.families._contract import NoOptions, ProgressCallback, TaskFamily, option

__all__ = ["NoOptions", "ProgressCallback", "TaskBatch", "TaskFamily", "option"]
