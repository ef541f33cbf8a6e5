"""The event loop the server runs on."""

from __future__ import annotations

from typing import Any, Callable


def loop_factory() -> Callable[[], Any] | None:
    """uvloop's event loop when it is installed (a dependency wherever it builds), else None
    (asyncio's own). Under load a replica's scheduling, socket reads and thread wake-ups cost
    a fraction of asyncio's on it; uvicorn parses HTTP with httptools beside it."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop

