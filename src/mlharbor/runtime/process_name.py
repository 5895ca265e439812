"""Worker processes name themselves, so ``ps``, ``top`` and the soak benchmark can tell what each one does
(every worker's command line is multiprocessing's ``spawn_main``)."""

from __future__ import annotations

import contextlib
import ctypes

MAX_LENGTH = 15  # Linux keeps 15 bytes of a process name (/proc/<pid>/comm)


def name_process(name: str) -> None:
    """Set this process's name (Linux ``prctl(PR_SET_NAME)``); does nothing elsewhere."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(15, name.encode()[:MAX_LENGTH], 0, 0, 0)
