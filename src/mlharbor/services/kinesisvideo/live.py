"""What a server's PutMedia connections are receiving right now, for the GetMedia readers on the same server.

The database and the object store are the truth: a reader anywhere finds every stored fragment there. This
is only the fast path on the server that holds the producer's connection: a reader at the live edge gets
each frame of the fragment being received as soon as it arrives, instead of the whole fragment once it is
stored, and wakes the moment a fragment is stored instead of at its next poll.

Everything here runs on the server's event loop (PutMedia and GetMedia are both handled there), so plain
dicts and ``asyncio.Event`` suffice.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlharbor.context import Server


@dataclass(eq=False)
class LiveFragment:
    number: str
    header: bytes  # EBML header .. Tracks
    producer_ts: float
    server_ts: float
    timecode: int
    frames: list[bytes] = field(default_factory=list)  # the Cluster's blocks, as received
    done: bool = False  # complete (stored or about to be)
    dropped: bool = False  # ended in an error or a disconnect: it will never be stored


def hub(server: Server) -> Live:
    """The server's hub (one per server process, made on first use)."""
    live = server.extras.get("kinesisvideo.live")
    if live is None:
        live = server.extras["kinesisvideo.live"] = Live()
    return live


class Live:
    def __init__(self) -> None:
        self._receiving: dict[str, LiveFragment] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._producers: set[str] = set()
        # Received but not stored yet: a reader must not pass over them to the fragment after.
        self._pending: dict[str, set[str]] = {}

    # --- producers ------------------------------------------------------------------------------------------
    def claim(self, stream_arn: str) -> bool:
        """One PutMedia connection per stream (AWS's limit): False if another one holds the stream here."""
        if stream_arn in self._producers:
            return False
        self._producers.add(stream_arn)
        return True

    def release(self, stream_arn: str) -> None:
        self._producers.discard(stream_arn)
        self._receiving.pop(stream_arn, None)
        self.changed(stream_arn)

    def begin(self, stream_arn: str, fragment: LiveFragment) -> None:
        self._receiving[stream_arn] = fragment
        self.changed(stream_arn)

    def frame(self, stream_arn: str, raw: bytes) -> None:
        fragment = self._receiving.get(stream_arn)
        if fragment is not None:
            fragment.frames.append(raw)
            self.changed(stream_arn)

    def end(self, stream_arn: str, *, dropped: bool = False) -> None:
        fragment = self._receiving.pop(stream_arn, None)
        if fragment is not None:
            fragment.done, fragment.dropped = True, dropped
            if not dropped:
                self._pending.setdefault(stream_arn, set()).add(fragment.number)
        self.changed(stream_arn)

    def stored(self, stream_arn: str, number: str) -> None:
        """The fragment is in the index now (or never will be): readers find it there."""
        pending = self._pending.get(stream_arn)
        if pending is not None:
            pending.discard(number)
            if not pending:
                del self._pending[stream_arn]
        self.changed(stream_arn)

    def changed(self, stream_arn: str) -> None:
        """Wake every reader of the stream (a frame arrived, a fragment ended or was stored)."""
        event = self._events.pop(stream_arn, None)
        if event is not None:
            event.set()

    # --- readers --------------------------------------------------------------------------------------------
    def receiving(self, stream_arn: str) -> LiveFragment | None:
        return self._receiving.get(stream_arn)

    def pending_after(self, stream_arn: str, number: str | None) -> bool:
        """Whether a fragment after ``number`` has been received here but is not in the index yet."""
        pending = self._pending.get(stream_arn, ())
        return any(number is None or p > number for p in pending)

    async def wait(self, stream_arn: str, timeout: float) -> None:
        """Until the stream changes on this server, or ``timeout`` (then the reader polls the database)."""
        event = self._events.get(stream_arn)
        if event is None:
            event = self._events[stream_arn] = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
