"""Running long work (training jobs, stream processors, endpoints, batch jobs) outside the API process.

``Executor`` is the narrow interface the services use; ``LocalExecutor`` implements it with one
spawned process per work item. A Ray back end is meant to implement the same interface.
"""

from .executor import (
    FINAL_STATES,
    Executor,
    ExecutorClosed,
    ExecutorError,
    OnFinished,
    WorkAlreadyRunning,
    WorkContext,
    WorkFunction,
    WorkState,
    WorkStatus,
    check_target,
    load_target,
)
from .local import LocalExecutor

__all__ = [
    "FINAL_STATES",
    "Executor",
    "ExecutorClosed",
    "ExecutorError",
    "LocalExecutor",
    "OnFinished",
    "WorkAlreadyRunning",
    "WorkContext",
    "WorkFunction",
    "WorkState",
    "WorkStatus",
    "check_target",
    "load_target",
]
