"""One process at a time on a data directory's embedded vector store (Qdrant Edge locks its WAL).

`knowbot serve` and the `knowbot` commands that open the store take this lock first. A command
that finds it held waits (bounded), saying who holds it; when the wait runs out it says what
holds the store and what to do, instead of failing deep inside the store. With a server running
on the data directory the commands go through its admin API and need no lock at all.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

from bot.errors import KnowbotError

LOCK_FILE = ".knowbot.lock"


class StoreBusy(KnowbotError):
    """Another process holds the data directory's embedded store."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.user_message = message


class StoreLock:
    """An exclusive, advisory lock on a data directory (released when the process dies)."""

    def __init__(self, data_dir: Path, what: str) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self.what = what
        self._handle: TextIO | None = None

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it ("" if unknown)."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def _try(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} (knowbot {self.what})")
        handle.flush()
        self._handle = handle
        return True

    async def acquire(self, wait: float = 60.0,
                      on_wait: Callable[[str], None] | None = None) -> None:
        """Take the lock, waiting up to `wait` seconds; StoreBusy says who holds it if not."""
        deadline = time.monotonic() + wait
        told = False
        while not self._try():
            holder = self.holder() or "another Knowbot process"
            if time.monotonic() >= deadline:
                raise StoreBusy(
                    f"The knowledge store in {self.path.parent} is in use by {holder}. Wait for "
                    "it to finish or stop it; or keep `knowbot serve` running, and `knowbot` "
                    "commands go through it; or use a Qdrant server (KNOWBOT_QDRANT_URL), "
                    "which any number of processes share.")
            if not told and on_wait is not None:
                on_wait(f"waiting for {holder} to finish with {self.path.parent} ...")
                told = True
            await asyncio.sleep(0.2)

    def release(self) -> None:
        """Let the next process in."""
        if self._handle is not None:
            self._handle.seek(0)
            self._handle.truncate()
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def tell(message: str, stream: TextIO = sys.stderr) -> None:
    """Print a waiting notice on stderr."""
    print(f"knowbot: {message}", file=stream, flush=True)
