"""What an operation handler gets: the caller's identity and the server's shared parts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlharbor.api.pagination import Pager
    from mlharbor.blobs.store import BlobStore
    from mlharbor.config import Settings
    from mlharbor.runtime import Executor
    from mlharbor.runtime.reconciler import Reconciler
    from mlharbor.store.db import Store


@dataclass
class Server:
    """Shared, long-lived parts, built once in app.py."""

    settings: Settings
    store: Store
    pager: Pager
    blobs: BlobStore
    executor: Executor
    reconciler: Reconciler
    extras: dict[str, Any] = field(default_factory=dict)
    # Run at a clean shutdown, before the store closes (e.g. writing in-memory state worth keeping).
    close_hooks: list[Callable[[], None]] = field(default_factory=list)

    def start_background(self) -> None:
        """Start reconciling (kept out of construction so in-process tests can build a quiet server)."""
        self.reconciler.start()

    def close(self) -> None:
        self.reconciler.stop()
        self.executor.shutdown(timeout=10.0)
        for hook in self.close_hooks:
            hook()
        self.store.dispose()


@dataclass(frozen=True, slots=True)
class Call:
    """One API call: who is asking, where, and with which request id."""

    server: Server
    service: str
    operation: str
    account_id: str
    region: str
    request_id: str
    endpoint: str = ""  # the base URL the client reached this server at (http://host:port)

    @property
    def store(self) -> Store:
        return self.server.store

    def page_scope(self) -> tuple[str, ...]:
        return (self.account_id, self.region, self.service, self.operation)
