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
    from mlharbor.runtime.leases import Leases
    from mlharbor.runtime.reconciler import Reconciler
    from mlharbor.runtime.supervisor import Supervisor
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
    # Run when shutdown begins, while the server still answers requests: stop work that is a client of this
    # server (the built-in Kinesis Video producers hold PutMedia requests open, which uvicorn's graceful
    # shutdown would otherwise wait out for its whole timeout). A hook must not raise.
    shutdown_hooks: list[Callable[[], None]] = field(default_factory=list)
    # This server's base URL (http://host:port), known once its socket is bound. Workers reach the
    # companion services here (a stream processor reads Kinesis Video through GetMedia, as Rekognition does).
    url: str | None = None
    # The one supervisor of long work, and the leases that say which server runs what (set by app.py).
    supervisor: Supervisor | None = None

    @property
    def leases(self) -> Leases:
        assert self.supervisor is not None, "the server was built without a supervisor"
        return self.supervisor.leases

    def own_endpoint(self, account_id: str) -> dict[str, str]:
        """How a worker acting for ``account_id`` calls this server (or ``worker_endpoint_url``, every server
        of the deployment): the URL and one of the account's keys."""
        url = self.settings.worker_endpoint_url or self.url
        if url is None:
            raise RuntimeError("the server's URL is not known before its socket is bound")
        for credential in self.settings.load_credentials().values():
            if credential.account_id == account_id:
                return {
                    "endpoint": url.rstrip("/"),
                    "access_key": credential.access_key_id,
                    "secret_key": credential.secret_access_key,
                }
        raise LookupError(f"no credential of account {account_id} in the credentials file")

    def start_background(self, url: str | None = None) -> None:
        """Start reconciling (kept out of construction so in-process tests can build a quiet server). The
        serving socket is bound by then, so workers started by the first pass can already reach it."""
        self.url = url or self.url
        if self.supervisor is not None:
            self.supervisor.start()
        self.reconciler.start()

    def begin_shutdown(self) -> None:
        """Run the shutdown hooks, once (``close`` runs them too if nothing did)."""
        hooks, self.shutdown_hooks = self.shutdown_hooks, []
        for hook in hooks:
            hook()

    def close(self) -> None:
        self.begin_shutdown()
        self.reconciler.stop()
        if getattr(self.executor, "outlives_server", False):
            self.executor.detach()  # type: ignore[attr-defined]  # Ray: its actors go on, to be adopted
        else:
            self.executor.shutdown(timeout=10.0)
        if self.supervisor is not None:
            self.supervisor.close()  # after the workers stopped: other servers may take their work now
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
