"""The executor a server runs its long work on, chosen by the ``runtime`` setting."""

from __future__ import annotations

from typing import Any

from mlharbor.runtime.executor import Executor, ExecutorError, OnFinished
from mlharbor.runtime.local import LocalExecutor


def open_executor(runtime: str, on_finished: OnFinished, *, stop_grace: float) -> Executor:
    """``local``: spawned worker processes of this server; ``ray://HOST:PORT``: detached actors on that Ray
    cluster (``pip install 'mlharbor[ray]'``), imported only then."""
    if runtime == "local":
        return LocalExecutor(on_finished=on_finished, stop_grace=stop_grace)
    if runtime.startswith("ray://"):
        try:
            from mlharbor.runtime.raycluster import RayExecutor
        except ImportError as exc:
            needs = f"--runtime {runtime} needs Ray: pip install 'mlharbor[ray]' ({exc})"
            raise ExecutorError(needs) from exc
        executor: Any = RayExecutor.connect(runtime, on_finished=on_finished, stop_grace=stop_grace)
        return executor
    raise ExecutorError(f"unknown runtime {runtime!r}: use local or ray://HOST:PORT")
