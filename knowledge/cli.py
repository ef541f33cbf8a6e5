"""`knowbot ingest` and `knowbot kb ...`: the knowledge base from the command line."""

from __future__ import annotations

import json
import mimetypes
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bot.admin import CONSOLE_TENANT
from bot.admin_client import SERVER_HELP
from bot.errors import IngestError, KnowbotError
from bot.storelock import StoreBusy

DEFAULT_KB = "default"


kb_app = typer.Typer(help="List, search and delete knowledge bases and their sources.",
                     no_args_is_help=True)
err = Console(stderr=True)
out = Console()


def _expand(targets: list[str]) -> tuple[list[str], list[str]]:
    """Files (folders walked recursively, hidden files skipped) and URLs; missing paths reported."""
    items: list[str] = []
    missing: list[str] = []
    for target in targets:
        if target.lower().startswith(("http://", "https://")):
            items.append(target)
            continue
        path = Path(target)
        if path.is_dir():
            items += [str(p) for p in sorted(path.rglob("*"))
                      if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)]
        elif path.is_file():
            items.append(str(path))
        else:
            missing.append(target)
    return items, missing


async def _ingest(admin: Any, items: list[str], tenant: str, kb: str, show: bool,
                  limit: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    chunks_done = 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=err,
                  disable=not show, transient=False) as progress:
        files_task = progress.add_task("files", total=len(items), rate="")
        chunk_task = progress.add_task("chunks", total=None, rate="")
        for item in items:
            progress.update(files_task, description=f"files  {Path(item).name[:40]}")
            base = chunks_done

            def report(done: int, total: int) -> None:
                elapsed = max(time.monotonic() - started, 1e-6)
                progress.update(chunk_task, completed=base + done, total=base + total,
                                rate=f"{(base + done) / elapsed:.1f} chunks/s")

            try:
                if item.lower().startswith(("http://", "https://")):
                    receipt = await admin.ingest_url(tenant, kb, item, progress=report)
                else:
                    path = Path(item)
                    if path.stat().st_size > limit:
                        raise IngestError(
                            f"{path.name} is {path.stat().st_size / 2**20:.1f} MB, over the "
                            f"{limit / 2**20:.0f} MB limit (KNOWBOT_INGEST_MAX_BYTES).")
                    data = path.read_bytes()
                    receipt = await admin.ingest_file(
                        tenant, kb, data, path.name, mimetypes.guess_type(path.name)[0] or "",
                        str(path.resolve()), progress=report)
                chunks_done += receipt["chunks"] if receipt["status"] != "unchanged" else 0
                results.append({"item": item, "ok": True, **receipt})
            except StoreBusy:
                raise  # nothing else can be ingested either: say so once
            except KnowbotError as exc:
                message = exc.user_message if isinstance(exc, IngestError) else str(exc)
                results.append({"item": item, "ok": False, "message": message})
            except OSError as exc:
                results.append({"item": item, "ok": False,
                                "message": f"could not read {item}: {exc.strerror}"})
            progress.advance(files_task)
    return results


def register(app: typer.Typer, settings_loader: Any, run: Any, with_admin: Any) -> None:
    """Add `ingest` and `kb` to the main command."""

    @app.command()
    def ingest(
        targets: list[str] = typer.Argument(..., help="Files, folders (recursively) or URLs."),
        kb: str = typer.Option(DEFAULT_KB, "--kb", help="Knowledge base to add to."),
        tenant: str = typer.Option(CONSOLE_TENANT, "--tenant",
                                   help="Tenant, as CHANNEL:WORKSPACE (e.g. slack:T0123)."),
        as_json: bool = typer.Option(False, "--json", help="Print the receipts as JSON."),
        server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP),
    ) -> None:
        """Add documents and web pages to a knowledge base, with a progress bar."""
        settings = settings_loader()
        items, missing = _expand(targets)
        for path in missing:
            err.print(f"knowbot: no such file or folder: {path}")
        if not items:
            raise typer.Exit(1 if missing else 0)

        async def work(admin: Any) -> list[dict[str, Any]]:
            return await _ingest(admin, items, tenant, kb, not as_json, settings.ingest_max_bytes)

        results = run(with_admin(settings, server, work))
        if as_json:
            out.print_json(json.dumps(results, default=str, ensure_ascii=False))
        else:
            for r in results:
                mark = "[green]✓[/]" if r["ok"] else "[red]✗[/]"
                out.print(f"{mark} {r['item']}: {r['message']}", highlight=False)
            ok = sum(r["ok"] for r in results)
            chunks = sum(r.get("chunks", 0) for r in results if r.get("status") != "unchanged")
            out.print(f"{ok} of {len(results)} ingested into {tenant}/{kb}, {chunks} new chunks.")
        if missing or not all(r["ok"] for r in results):
            raise typer.Exit(1)

    @kb_app.command("list")
    def kb_list(tenant: Optional[str] = typer.Option(None, "--tenant", help="Only this tenant."),
                server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP)) -> None:
        """List knowledge bases and how many sources each holds."""
        settings = settings_loader()

        async def work(admin: Any) -> Any:
            return await admin.list_kbs(tenant)

        rows = run(with_admin(settings, server, work))
        table = Table("tenant", "knowledge base", "shared", "sources")
        for row in rows:
            table.add_row(row["tenant"], row["name"], "yes" if row["shared"] else "no",
                          str(row["sources"]))
        out.print(table if rows else "No knowledge bases yet. Add documents with `knowbot ingest PATH`.")

    @kb_app.command("sources")
    def kb_sources(name: str = typer.Argument(DEFAULT_KB, help="Knowledge base."),
                   tenant: str = typer.Option(CONSOLE_TENANT, "--tenant"),
                   server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP)) -> None:
        """List the sources of a knowledge base."""
        settings = settings_loader()

        async def work(admin: Any) -> Any:
            return await admin.sources(tenant, name)

        rows = run(with_admin(settings, server, work))
        table = Table("id", "title", "kind", "pages", "chunks", "added", "origin")
        for s in rows:
            table.add_row(s["id"][:12], s["title"], s["kind"], str(s["pages"] or ""),
                          str(s["chunks"]), s["added_at"][:16].replace("T", " "), s["origin"])
        out.print(table if rows else f"The knowledge base {name!r} has no sources.")

    @kb_app.command("delete")
    def kb_delete(name: str = typer.Argument(..., help="Knowledge base."),
                  source: Optional[str] = typer.Argument(None, help="A source's id, title or origin; "
                                                                     "without it, the whole knowledge base."),
                  tenant: str = typer.Option(CONSOLE_TENANT, "--tenant"),
                  yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
                  server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP)) -> None:
        """Delete a source, or a whole knowledge base."""
        settings = settings_loader()
        what = f"source {source!r} of {name!r}" if source else f"the whole knowledge base {name!r}"
        if not yes and not typer.confirm(f"Delete {what}?"):
            raise typer.Exit(1)

        async def work(admin: Any) -> str:
            if source:
                found = await admin.delete_source(tenant, name, source)
                return f"Deleted “{found['title']}” from {name}."
            count = (await admin.delete_kb(tenant, name))["sources"]
            return f"Deleted the knowledge base {name} ({count} sources)."

        out.print(run(with_admin(settings, server, work)))

    @kb_app.command("search")
    def kb_search(query: str = typer.Argument(..., help="What to look for."),
                  kb: Optional[str] = typer.Option(None, "--kb", help="Only this knowledge base."),
                  tenant: str = typer.Option(CONSOLE_TENANT, "--tenant"),
                  top_k: int = typer.Option(5, "--top-k", min=1, max=50),
                  as_json: bool = typer.Option(False, "--json"),
                  server: Optional[str] = typer.Option(None, "--server", help=SERVER_HELP)) -> None:
        """Search the knowledge bases and show the matching passages."""
        settings = settings_loader()

        async def work(admin: Any) -> Any:
            return await admin.search(tenant, kb, query, top_k)

        passages = run(with_admin(settings, server, work))
        if as_json:
            out.print_json(json.dumps(passages, ensure_ascii=False))
            return
        if not passages:
            out.print("Nothing relevant found.")
        for n, p in enumerate(passages, 1):
            where = f", {p['location']}" if p["location"] else ""
            out.print(f"[bold][{n}] {p['source']}{where}[/] (score {p['score']:.3f})",
                      highlight=False)
            text = p["text"]
            out.print(text if len(text) <= 600 else text[:600] + "…", highlight=False)
            out.print()

    @kb_app.command("reindex")
    def kb_reindex() -> None:
        """Give every stored chunk its cross-lingual vector (resumable; no re-upload needed)."""
        from bot.admin_client import local_runtime, running_server

        settings = settings_loader()
        server = running_server(settings)
        if server is not None:
            out.print(f"`knowbot serve` runs on this data directory ({server}) and fills the "
                      "cross-lingual vectors itself, in the background, since it started; "
                      "nothing to do here.")
            return

        async def with_runtime(settings: Any, work: Any) -> Any:
            async with local_runtime(settings, "kb reindex") as runtime:
                return await work(runtime)

        async def work(runtime: Any) -> tuple[int, bool]:
            service = runtime.knowledge
            if await service.crosslingual() is None:
                return 0, False
            with Progress(TextColumn("cross-lingual vectors"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), console=err) as bar:
                task = bar.add_task("reindex", total=None)

                def report(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                return await service.reindex(report), True

        filled, enabled = run(with_runtime(settings, work))
        if not enabled:
            out.print("The cross-lingual model is off (KNOWBOT_KNOWLEDGE_CROSSLINGUAL_MODEL): "
                      "nothing to reindex.")
        elif filled:
            out.print(f"Filled the cross-lingual vector of {filled} chunks.")
        else:
            out.print("Every chunk already has its cross-lingual vector.")

    app.add_typer(kb_app, name="kb")

