"""The server's event loop: uvloop where it is installed, asyncio's own otherwise."""

from __future__ import annotations

import asyncio
import sys

import pytest

from bot import cli
from bot.eventloop import loop_factory


def test_the_server_loop_is_uvloop_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    factory = loop_factory()
    assert factory is uvloop.new_event_loop

    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert cli._run(which(), loop_factory=factory).startswith("uvloop")


def test_without_uvloop_asyncio_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert loop_factory() is None

    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert cli._run(which(), loop_factory=loop_factory()).startswith("asyncio")
