"""Recognizer endpoints: the state table, queries, and the reconcile pass that keeps servers running."""

from __future__ import annotations

from mlharbor.context import Server


class EndpointSupervisor:
    def __init__(self, server: Server) -> None:
        self.server = server

    def reconcile(self) -> None:
        pass
