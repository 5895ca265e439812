"""AWS's inference-unit throughput: 100 characters and 2 documents per second per unit.

Enforced where the inference runs, in each serving worker, for its share of the endpoint's units: however
many API servers send it requests, the endpoint is held to its units (a limit kept in each API process would
allow N servers N times the rate).

Two token buckets holding one second of capacity. A request is admitted while neither bucket is in debt and
then pays its full cost (possibly going into debt): one document larger than a second's capacity still goes
through (AWS accepts a 10 KB text on one unit), and the debt then holds back the next requests until the rate
is met again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CHARACTERS_PER_UNIT = 100.0
DOCUMENTS_PER_UNIT = 2.0


class Capacity:
    def __init__(
        self, units: float, endpoint_units: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """``units``: this worker's share; ``endpoint_units``: the endpoint's, named in the message."""
        self.chars_rate, self.docs_rate = CHARACTERS_PER_UNIT * units, DOCUMENTS_PER_UNIT * units
        self.endpoint_units = endpoint_units
        self.clock = clock
        self.chars, self.docs, self.last = self.chars_rate, self.docs_rate, clock()

    def admit(self, characters: int, documents: int = 1) -> str | None:
        """None if admitted (and charged); otherwise why not."""
        now = self.clock()
        elapsed, self.last = now - self.last, now
        self.chars = min(self.chars_rate, self.chars + elapsed * self.chars_rate)
        self.docs = min(self.docs_rate, self.docs + elapsed * self.docs_rate)
        if self.chars <= 0 or self.docs < documents:
            units = self.endpoint_units
            return (
                f"The endpoint's throughput ({units} inference unit(s): {CHARACTERS_PER_UNIT * units:g} "
                f"characters/s, {DOCUMENTS_PER_UNIT * units:g} documents/s) is exceeded. Add inference units "
                "with UpdateEndpoint, or run MLHarbor with inference_unit_limits = false to serve as fast as "
                "the hardware allows."
            )
        self.chars -= characters
        self.docs -= documents
        return None
