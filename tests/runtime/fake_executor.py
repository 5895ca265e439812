"""An executor that runs nothing, for tests of what drives one (the supervisor, the kinds): it records what
it was asked, and the test says when work ends, beats or may be adopted."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mlharbor.runtime.executor import WorkStatus


class FakeExecutor:
    def __init__(self, adopts: bool = False) -> None:
        self.live: dict[str, WorkStatus] = {}
        self.ended: dict[str, WorkStatus] = {}
        self.submitted: list[tuple[str, str, dict[str, Any]]] = []
        self.stops: list[str] = []
        self.adopts = adopts  # whether work another server started may be adopted (Ray's actors)
        self.adopted: list[str] = []

    def submit(self, work_id: str, target: str, payload: dict[str, Any], resources: Any = None) -> None:
        self.live[work_id] = WorkStatus(work_id, "running", started_at=100.0)
        self.submitted.append((work_id, target, payload))

    def request_stop(self, work_id: str) -> bool:
        self.stops.append(work_id)
        return work_id in self.live

    def status(self, work_id: str) -> WorkStatus | None:
        return self.live.get(work_id) or self.ended.get(work_id)

    def running(self) -> list[str]:
        return list(self.live)

    def shutdown(self, timeout: float) -> None:
        pass

    def adopt(self, work_id: str) -> bool:
        if self.adopts:
            self.live[work_id] = WorkStatus(work_id, "running", started_at=100.0)
            self.adopted.append(work_id)
        return self.adopts

    def end(self, work_id: str, state: str = "crashed", *, ran: float = 1.0) -> None:
        """The work ends in ``state`` after running ``ran`` seconds."""
        status = self.live.pop(work_id)
        error = "killed" if state == "crashed" else None
        self.ended[work_id] = replace(status, state=state, error=error, started_at=100.0, ended_at=100 + ran)  # type: ignore[arg-type]

    def heartbeat(self, work_id: str, progress: dict[str, Any]) -> None:
        self.live[work_id] = replace(self.live[work_id], progress=progress)
