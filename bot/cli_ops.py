"""`knowbot migrate`, `knowbot models build` and `knowbot doctor`: running Knowbot in production."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Optional

import typer

models_app = typer.Typer(help="The embedding models Knowbot runs.", no_args_is_help=True)


def _where(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def register(app: typer.Typer, settings_loader: Any, run: Any) -> None:
    """Add `migrate`, `models build` and `doctor` to the main command."""

    @app.command()
    def migrate() -> None:
        """Apply the database migrations, then exit (run once before starting replicas)."""
        from bot.db import migrate as apply, schema_revisions

        settings = settings_loader()
        url = settings.resolved_database_url

        async def work() -> tuple[str | None, str | None, str | None]:
            before, _ = await asyncio.to_thread(schema_revisions, url)
            await asyncio.to_thread(apply, url)
            after, head = await asyncio.to_thread(schema_revisions, url)
            return before, after, head

        before, after, head = run(work())
        if before == after:
            typer.echo(f"{_where(url)}: already up to date (revision {after}).")
        else:
            typer.echo(f"{_where(url)}: migrated from {before or 'an empty database'} "
                       f"to {after} (head {head}).")

    @models_app.command("build")
    def models_build(
        directory: Optional[Path] = typer.Option(
            None, "--dir", help="Where to build it [default: KNOWBOT_MODELS_DIR or DATA_DIR/models]."),
    ) -> None:
        """Build (or download) the configured embedding model now, e.g. into a container image."""
        from bot.runtime import DEFAULT_EMBEDDING_MODEL
        from knowledge.embedder import Embedder

        settings = settings_loader()
        target = directory or settings.resolved_models_dir

        def build() -> Any:
            if settings.embedding_model == DEFAULT_EMBEDDING_MODEL:
                return Embedder.default(settings.data_dir, models_dir=target)
            return Embedder.from_name(settings.embedding_model, target)

        embedder = run(asyncio.to_thread(build))
        vector = embedder.embed_query("ready")  # it loads and answers
        typer.echo(f"{settings.embedding_model}: built in {target} ({len(vector)} dimensions).")
        # the cross-lingual model's memory-mapped table and the dictionary's SQLite file live
        # there too, so a read-only models directory has them
        from knowledge.crosslingual import load_crosslingual

        xl = load_crosslingual(settings.knowledge_crosslingual_model, settings.data_dir,
                               models_dir=target)
        if xl is not None:
            typer.echo(f"{xl.model_name}: ready in {target}.")
        if settings.knowledge_dictionary:
            from knowledge.dictionary import load_dictionary

            if load_dictionary(target) is not None:
                typer.echo(f"dictionary: ready in {target}.")

    app.add_typer(models_app, name="models")

    @app.command()
    def doctor() -> None:
        """Check the settings and everything they point at; one line per check, exit 1 on a failure."""
        from bot.config import load_settings
        from bot.doctor import Result, run_doctor
        from bot.errors import KnowbotError

        try:
            load_settings()
        except KnowbotError as exc:  # a bad setting is a finding too, on a line of its own
            typer.echo(Result("settings", "fail", str(exc), "fix that setting").line())
            raise typer.Exit(1) from None
        settings = settings_loader()
        results = run(run_doctor(settings))
        for result in results:
            typer.echo(result.line())
        failed = [r for r in results if r.status == "fail"]
        typer.echo(f"{len(results)} checks, {len(failed)} failed.")
        if failed:
            raise typer.Exit(1)
