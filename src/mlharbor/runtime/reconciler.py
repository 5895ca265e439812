"""One background thread that brings actual state in line with desired state.

Services register passes (a function each). A pass runs every ``interval`` seconds and at once when
someone calls ``wake()`` (a request that changed desired state, a worker that finished). Passes read
the database, so they also repair what a crash left behind: after a restart the first pass sees
every resource that was mid-flight.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Reconciler:
    def __init__(self, interval: float = 1.0) -> None:
        self._interval = interval
        self._passes: list[tuple[str, Callable[[], None]]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def register(self, name: str, run: Callable[[], None]) -> None:
        self._passes.append((name, run))

    def wake(self) -> None:
        self._wake.set()

    def run_once(self) -> None:
        for name, run in self._passes:
            try:
                run()
            except Exception:  # one broken pass must not stop the others, nor the thread
                log.exception("reconcile pass %s failed", name)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mlharbor-reconciler", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self.run_once()
            self._wake.wait(self._interval)
