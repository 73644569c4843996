"""The `videoscore` command line: submit, status, wait, results, worker, demo, db, model.

Producer commands import nothing heavy; `worker`, `demo` and `model` import the worker stack when run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from core.errors import VideoScoreError
from core.settings import Settings
from core.variants import DEFAULT_MODEL
from producer.client import Client
from producer.render import results_table, wait_with_progress

app = typer.Typer(help="VideoScore Queue: score AI-generated videos at fleet scale.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
model_app = typer.Typer(help="Model checkpoints.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
# Piped output (CI logs, `| less`) gets a table wide enough to read instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)


def _settings() -> Settings:
    return Settings()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(code=2)


@app.command()
def submit(
    video_uri: Annotated[str, typer.Argument(help="s3://bucket/key or file:///path")],
    prompt: Annotated[str, typer.Option(help="The text the video was generated from")],
    model: Annotated[str, typer.Option(help="Hub id or local checkpoint folder")] = DEFAULT_MODEL,
    batch: Annotated[Optional[str], typer.Option(help="Batch name, for grouping and queries")] = None,
    idempotency_key: Annotated[Optional[str], typer.Option(help="Same key, same job")] = None,
) -> None:
    """Submit one scoring job and print its id."""

    try:
        with Client(_settings()) as client:
            job = client.submit(video_uri, prompt, model=model, batch=batch, idempotency_key=idempotency_key)
    except VideoScoreError as exc:
        _fail(exc.message)
    typer.echo(job.id)


@app.command()
def status(job_id: str) -> None:
    """Print one job as JSON."""

    with Client(_settings()) as client:
        job = client.get(job_id)
    if job is None:
        _fail(f"no job {job_id}")
    typer.echo(json.dumps(job.to_dict(), indent=2))


@app.command()
def wait(
    job_ids: list[str],
    timeout: Annotated[Optional[float], typer.Option(help="Seconds before giving up")] = None,
) -> None:
    """Wait for jobs to finish, with a progress bar, then print their results."""

    with Client(_settings()) as client:
        records = wait_with_progress(client, job_ids, console=console, timeout_s=timeout)
    console.print(results_table(records))


@app.command()
def results(
    batch: Annotated[Optional[str], typer.Option()] = None,
    status: Annotated[Optional[str], typer.Option("--status")] = None,
    model: Annotated[Optional[str], typer.Option()] = None,
    limit: Annotated[int, typer.Option()] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """List jobs and their scores."""

    with Client(_settings()) as client:
        records = client.results(batch=batch, status=status, model=model, limit=limit)
    if as_json:
        for record in records:
            typer.echo(json.dumps(record.to_dict()))
    else:
        console.print(results_table(records))


@app.command()
def worker(
    concurrency: Annotated[Optional[int], typer.Option(help="Download/decode threads")] = None,
    preload: Annotated[bool, typer.Option(help="Load the default model before taking jobs")] = True,
    loglevel: Annotated[str, typer.Option()] = "INFO",
    hostname: Annotated[Optional[str], typer.Option(help="Celery node name")] = None,
) -> None:
    """Run a GPU worker (needs the worker extra installed)."""
    from worker.main import run_worker

    run_worker(_settings(), concurrency=concurrency, preload=preload, loglevel=loglevel, hostname=hostname)


@app.command()
def demo(
    videos: Annotated[int, typer.Option(help="How many sample videos to score")] = 4,
    workdir: Annotated[Optional[Path], typer.Option(help="Keep the demo's files here")] = None,
) -> None:
    """Run the whole job on one machine: sample videos → local S3 → Redis → worker → SQLite → results."""
    from worker.demo import run_demo

    sys.exit(run_demo(console, videos=videos, workdir=workdir))


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema to the newest revision (SQLite or PostgreSQL)."""
    from db.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    console.print(f"database at head: {_redact(settings.database_url)}")


@db_app.command("init")
def db_init() -> None:
    """Create the schema in a new database (same as upgrade)."""
    db_upgrade()


@model_app.command("build-stand-in")
def build_stand_in(
    out: Path,
    variant: Annotated[str, typer.Option()] = DEFAULT_MODEL,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Build a tiny, randomly initialised checkpoint of a variant's architecture (scores are meaningless)."""
    from worker.stand_in import build_stand_in_checkpoint

    path = build_stand_in_checkpoint(out, variant=variant, seed=seed)
    console.print(f"untrained stand-in of {variant} written to {path}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
