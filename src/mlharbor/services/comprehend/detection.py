"""Entities detection jobs: the worker that runs a recognizer over S3 input, and the reconcile pass."""

from __future__ import annotations

from mlharbor.context import Server


class JobSupervisor:
    def __init__(self, server: Server) -> None:
        self.server = server

    def reconcile(self) -> None:
        pass
