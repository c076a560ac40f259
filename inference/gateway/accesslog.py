"""The data plane's access log: one JSON line per request, written in batches off the request path.

Python's logging (a handler lock, a formatter and a write per line) cost the hot path more than the rest of
the log's purpose justifies; here a request appends bytes to a list and a background task writes them every
100 ms with one system call. Lines share the usage event's serialisation: no second encoding.
``INFERENCE_ACCESS_LOG`` = ``stderr`` (default), a file path, or ``off``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys

from django.conf import settings

_FLUSH_EVERY_S = 0.1


class AccessLog:
    def __init__(self) -> None:
        target = settings.INFERENCE_ACCESS_LOG
        self.enabled = target != "off"
        self._fd: int | None = None
        self._owned = False
        if self.enabled:
            if target == "stderr":
                self._fd = sys.stderr.fileno()
            else:
                self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                self._owned = True
        self._lines: list[bytes] = []
        self._task: asyncio.Task | None = None

    def write(self, line: bytes) -> None:
        if self.enabled:
            self._lines.append(line)

    def flush(self) -> None:
        if self._lines and self._fd is not None:
            data = b"\n".join(self._lines) + b"\n"
            self._lines = []
            with contextlib.suppress(OSError):  # a full disk must not take the API down
                os.write(self._fd, data)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(_FLUSH_EVERY_S)
            self.flush()

    async def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()
        if self._owned and self._fd is not None:
            os.close(self._fd)
            self._fd = None
