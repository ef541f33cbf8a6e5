"""The `knowbot` command: serve, chat, ask, plugins."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from typing import Any, Coroutine, Optional

import typer

import bot
from bot.config import Settings, load_settings
from bot.admin_client import SERVER_HELP
from bot.errors import KnowbotError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Knowbot: a self-hosted knowledge assistant for the chat apps your team uses.",
)

log = logging.getLogger("knowbot")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"knowbot: {message}", err=True)
    raise typer.Exit(code)


def _settings(*, quiet: bool = True, **overrides: Any) -> Settings:
    """Load settings (exit 2 with one line if bad) and set up logging.

    One-shot commands log warnings only unless KNOWBOT_LOG_LEVEL asks for more; the server logs
    at the configured level.
    """
    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except KnowbotError as exc:
        _fail(str(exc))
        raise  # unreachable, keeps type checkers calm
    level = settings.log_level
    if quiet and "KNOWBOT_LOG_LEVEL" not in os.environ and "log_level" not in overrides:
        level = "WARNING"
    from bot.logs import configure

    configure(settings, level, sys.stderr)  # text or JSON lines, secrets masked
    return settings


def _run(coro: Coroutine[Any, Any, Any], *, loop_factory: Any = None) -> Any:
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(coro)
    except KnowbotError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"knowbot {bot.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Knowbot: a self-hosted knowledge assistant for the chat apps your team uses."""


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, help="Address to listen on [default: 127.0.0.1]."),
    port: Optional[int] = typer.Option(None, help="Port to listen on [default: 8080]."),
) -> None:
    """Run the HTTP server that the messaging platforms call."""
    import uvicorn

    from bot.app import create_app

    from bot.app import enabled_channels

    settings = _settings(quiet=False, host=host, port=port)
    try:
        channels = enabled_channels(settings)  # a channel's missing setting: one line, exit 2
    except KnowbotError as exc:
        _fail(str(exc))
        raise  # unreachable
    web = create_app(settings, channels=channels)
    server = uvicorn.Server(
        uvicorn.Config(
            web, host=settings.host, port=settings.port,
            log_level=settings.log_level.lower(), timeout_graceful_shutdown=30,
            proxy_headers=True, log_config=None,  # uvicorn's lines go through bot.logs too
        )
    )
    from bot.eventloop import loop_factory

    _run(_serve(settings, web, server), loop_factory=loop_factory())


async def _serve(settings: Settings, web: Any, server: Any) -> None:
    """Hold the data dir's store, tell local commands where the API is, and serve."""
    from bot.admin_api import admin_token, write_server_file
    from bot.storelock import StoreLock, tell

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock = None
    if not settings.qdrant_url:  # Qdrant Edge: one process owns ./data/qdrant
        lock = StoreLock(settings.data_dir, "serve")
        await lock.acquire(settings.store_wait_seconds, on_wait=tell)
    admin_token(settings, create=True)
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    marker = write_server_file(settings, f"http://{host}:{settings.port}")

    def cleanup() -> None:
        marker.unlink(missing_ok=True)
        if lock is not None:
            lock.release()

    # uvicorn re-raises SIGTERM once it has shut down, so clean up when the app stops
    web.state.on_stopped = [cleanup]
    from bot.heap import freeze_startup_objects

    # everything loaded by now lives as long as the process: keep the collector off it
    web.state.on_started = [freeze_startup_objects]
    try:
        await server.serve()
    finally:
        cleanup()


async def _with_runtime(settings: Settings, work: Any) -> Any:
    from bot.admin_client import local_runtime

    async with local_runtime(settings, "chat") as runtime:
        return await work(runtime)


async def _with_admin(settings: Settings, server: str | None, work: Any) -> Any:
    from bot.admin_client import open_admin

    async with open_admin(settings, server) as admin:
        return await work(admin)


@app.command()
def chat() -> None:
    """Talk to Knowbot in the terminal (or pipe lines in: one answer per line)."""
    from channels.console import ConsoleChannel

    settings = _settings()

    async def work(runtime: Any) -> None:
        console = ConsoleChannel(runtime)
        # The terminal is a channel too: reminders made here are printed here. The scheduler
        # runs here unless a `knowbot serve` on the same database holds its lease; a job for a
        # channel this process does not run waits in the outbox for the process that does.
        runtime.channels = [console]
        runtime.outbox.start()
        await runtime.start_scheduler()
        await console.run()

    _run(_with_runtime(settings, work))


@app.command()
def ask(
    question: str = typer.Argument(..., help="The question."),
    kb: Optional[str] = typer.Option(None, "--kb", help="Search only this knowledge base."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer and citations as JSON."),
    server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
) -> None:
    """Ask one question and print the answer with its sources."""
    from bot.types import Citation, Reply
    from channels.console import console_key, render_plain

    settings = _settings()
    user = console_key().user_id

    async def work(admin: Any) -> Any:
        return await admin.ask(question, kb, user)

    answer = _run(_with_admin(settings, server, work))
    if as_json:
        typer.echo(json.dumps({"answer": answer["answer"], "citations": answer["citations"]},
                              ensure_ascii=False, indent=2))
    else:
        citations = tuple(Citation(c["source"], c.get("location", ""), c.get("snippet", ""))
                          for c in answer["citations"])
        typer.echo(render_plain(Reply(answer["answer"], citations)))
    if answer.get("kind") == "error":
        raise typer.Exit(1)


plugins_app = typer.Typer(help="The tools the assistant can call.", no_args_is_help=True)
app.add_typer(plugins_app, name="plugins")


async def _tool_listing(settings: Settings) -> list[dict[str, Any]]:
    """Every tool (built-in, entry points, OpenAPI, MCP) as name, origin, description, schema."""
    from bot.runtime import load_external_tools
    from plugins import load_registry
    from plugins.policy import needs_confirmation_mark

    registry = load_registry(timeout=settings.tool_timeout, max_output=settings.tool_max_output,
                             disabled=settings.plugins_disabled)
    closers = await load_external_tools(settings, registry)
    try:
        return [
            {"name": t.name, "origin": t.origin, "description": t.description,
             "confirm": needs_confirmation_mark(t), "parameters": t.parameters}
            for t in registry
        ]
    finally:
        for close in reversed(closers):
            await close()


@plugins_app.command("list")
def plugins_list(
    as_json: bool = typer.Option(False, "--json", help="Print the tools as JSON."),
) -> None:
    """Show every tool, where it came from, and its schema."""
    settings = _settings()
    tools = _run(_tool_listing(settings))
    if as_json:
        typer.echo(json.dumps(tools, ensure_ascii=False, indent=2))
        return
    for item in tools:
        mark = "  [asks for /confirm]" if item["confirm"] else ""
        typer.echo(f"{item['name']}  ({item['origin']}){mark}")
        first = item["description"].splitlines()[0] if item["description"] else ""
        if first:
            typer.echo(f"    {first}")
        typer.echo(f"    schema: {json.dumps(item['parameters'], ensure_ascii=False)}")
    typer.echo(f"{len(tools)} tool(s)")


console_app = typer.Typer(help="The web console at /console.", no_args_is_help=True)
app.add_typer(console_app, name="console")


@console_app.command("hash-password")
def console_hash_password() -> None:
    """Print a hash of a console password for KNOWBOT_CONSOLE_PASSWORD_HASH.

    Asks for the password twice on a terminal; reads one line from a pipe.
    """
    from bot.console.auth import hash_password

    if sys.stdin.isatty():
        password = typer.prompt("Console password", hide_input=True,
                                confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        _fail("use a password of at least 8 characters")
    typer.echo(hash_password(password))


def _register_knowledge() -> None:
    from knowledge.cli import register

    register(app, _settings, _run, _with_admin)


def _register_ops() -> None:
    from bot.cli_ops import register

    register(app, _settings, _run)


_register_knowledge()
_register_ops()


def run() -> None:
    """Entry point of the console script."""
    app()


if __name__ == "__main__":
    run()
