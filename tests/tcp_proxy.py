"""A TCP proxy on 127.0.0.1 in a background thread: a service that can be "stopped" in a test.

    with TcpProxy(5432) as proxy:      # forwards 127.0.0.1:<proxy.port> to 127.0.0.1:5432
        ... point Knowbot at proxy.port ...
        proxy.stop()                   # closes the listener and every connection: from now on
                                       # connecting is refused, as for a service that went down

The machine's own PostgreSQL and Redis stay up for everyone else.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any


class TcpProxy:
    """Forwards one local port to another until stopped."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port: int = sock.getsockname()[1]
        self._sock = sock
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tcp-proxy-{self.port}",
                                        daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, sock=self._sock))
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def start(self) -> "TcpProxy":
        """Start forwarding."""
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        """Refuse new connections and cut the open ones (the service is "down")."""
        if not self._loop.is_running():
            return

        async def shut() -> None:
            assert self._server is not None
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
