"""The `videoscore` command line: submit, status, wait, results, worker, demo, db, model.

Producer commands import nothing heavy; `worker`, `demo` and `model` import the worker stack when run.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer
from rich.console import Console

from videoscore.core.errors import VideoScoreError
from videoscore.core.settings import Settings
from videoscore.core.variants import DEFAULT_MODEL, ModelPolicy
from videoscore.producer.client import Client
from videoscore.producer.manifest import is_manifest
from videoscore.producer.render import aggregates_table, results_table, wait_with_progress

if TYPE_CHECKING:
    from videoscore.db.queries import JobFilter

app = typer.Typer(help="VideoScore Queue: score AI-generated videos at fleet scale.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
model_app = typer.Typer(help="Model checkpoints.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
# Piped output (CI logs, `| less`) gets a table wide enough to read instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)


def _settings() -> Settings:
    return Settings()


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(code=2)


@app.command()
def submit(
    target: Annotated[str, typer.Argument(
        help="s3://bucket/key or file:///path of one video, or a manifest of many (.jsonl, .ndjson or .csv)")],
    prompt: Annotated[Optional[str], typer.Option(help="The text the video was generated from (one video)")] = None,
    model: Annotated[Optional[str], typer.Option(help="Hub id or local checkpoint folder (manifest: default)")] = None,
    batch: Annotated[
        Optional[str], typer.Option(help="Batch name, for grouping and queries (manifest: default)")
    ] = None,
    idempotency_key: Annotated[Optional[str], typer.Option(help="Same key, same job")] = None,
    priority: Annotated[Optional[str], typer.Option(help="high, normal or low (manifest: default)")] = None,
    force: Annotated[bool, typer.Option(help="Score even if the same content was scored before")] = False,
    skip_invalid: Annotated[bool, typer.Option(help="Manifest: submit the valid rows, report the bad ones")] = False,
    webhook: Annotated[Optional[str], typer.Option(help="URL POSTed once when --batch completes")] = None,
) -> None:
    """Submit one scoring job and print its id, or every row of a manifest file with a progress bar."""
    settings = _settings()
    if is_manifest(target):
        if prompt or idempotency_key:
            _fail("--prompt and --idempotency-key are per row in a manifest")
        defaults: dict[str, object] = {"model": model, "batch": batch, "priority": priority, "force": force or None}
        _submit_manifest(settings, Path(target), defaults, skip_invalid=skip_invalid, webhook=webhook, batch=batch)
        return
    if not prompt:
        _fail("--prompt is required when submitting one video")
    fields = {"model": model or "", "batch": batch, "idempotency_key": idempotency_key,  # "": VIDEOSCORE_MODEL
              "priority": priority or "normal", "force": force}
    try:
        with Client(settings) as client:
            if webhook:
                _set_webhook(client, batch, webhook)
            job = client.submit(target, prompt, **fields)
    except VideoScoreError as exc:
        _fail(exc.message)
    typer.echo(job.id)


def _set_webhook(client: Client, batch: str | None, url: str) -> None:
    if not batch:
        _fail("--webhook needs --batch: the webhook fires when that batch completes")
    try:
        client.set_batch_webhook(batch, url)
    except ValueError as exc:
        _fail(str(exc))


def _submit_manifest(settings: Settings, path: Path, defaults: dict[str, object], *, skip_invalid: bool,
                     webhook: str | None, batch: str | None) -> None:
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from videoscore.producer.manifest import read_manifest

    started = time.perf_counter()
    try:
        manifest = read_manifest(path, max_prompt_chars=settings.max_prompt_chars, defaults=defaults,
                                 models=ModelPolicy.of(settings))
    except VideoScoreError as exc:
        _fail(exc.message)
    for error in manifest.errors[:50]:
        console.print(f"[red]{path}:{error.line}:[/] {error.message}", highlight=False)
    if len(manifest.errors) > 50:
        console.print(f"[red]… and {len(manifest.errors) - 50} more bad rows[/]")
    if manifest.errors and not skip_invalid:
        _fail(f"{len(manifest.errors)} of {manifest.rows} rows are invalid; nothing was submitted "
              "(fix them, or pass --skip-invalid to submit the rest)")
    if not manifest.requests:
        _fail("no valid rows to submit")
    columns = (TextColumn("submitting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Client(settings) as client:
        if webhook:
            _set_webhook(client, batch, webhook)
        with Progress(*columns, console=console, transient=not sys.stdout.isatty()) as progress:
            bar = progress.add_task("jobs", total=len(manifest.requests))
            results = client.submit_detailed(
                manifest.requests, on_progress=lambda done, _total: progress.update(bar, completed=done))
    elapsed = time.perf_counter() - started
    created = sum(1 for _, new in results if new)
    console.print(
        f"submitted {len(results):,} jobs from {path} ({created:,} new, {len(results) - created:,} already known "
        f"by idempotency key; {len(manifest.errors):,} bad rows skipped) in {elapsed:.1f}s "
        f"({len(results) / elapsed:,.0f} jobs/s)", highlight=False)


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
    tag: Annotated[Optional[list[str]], typer.Option(help="key:value; repeat for several")] = None,
    since: Annotated[Optional[datetime], typer.Option(help="Created at or after (ISO 8601, UTC if no zone)")] = None,
    until: Annotated[Optional[datetime], typer.Option(help="Created before")] = None,
    min_score: Annotated[
        Optional[list[str]], typer.Option("--min", help="aspect=value, e.g. text_to_video_alignment=2.5")
    ] = None,
    max_score: Annotated[Optional[list[str]], typer.Option("--max", help="aspect=value")] = None,
    limit: Annotated[int, typer.Option()] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """List jobs and their scores, filtered by batch, model, status, tags, time window and score bounds."""

    where = _job_filter(batch, model, status, tag, since, until, min_score, max_score)
    with Client(_settings()) as client:
        records = client.search(where, limit=limit).jobs
    if as_json:
        for record in records:
            typer.echo(json.dumps(record.to_dict()))
    else:
        console.print(results_table(records))


@app.command()
def aggregate(
    by: Annotated[str, typer.Option("--by", help="batch or model")] = "batch",
    batch: Annotated[Optional[str], typer.Option()] = None,
    model: Annotated[Optional[str], typer.Option()] = None,
    tag: Annotated[Optional[list[str]], typer.Option(help="key:value; repeat for several")] = None,
    since: Annotated[Optional[datetime], typer.Option()] = None,
    until: Annotated[Optional[datetime], typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per group")] = False,
) -> None:
    """Per batch or model: scored jobs, and mean, p10, p50, p90 of each aspect."""
    if by not in ("batch", "model"):
        _fail("--by is batch or model")
    where = _job_filter(batch, model, None, tag, since, until, None, None)
    with Client(_settings()) as client:
        groups = client.aggregate(by, where)  # type: ignore[arg-type]
    if as_json:
        for group in groups:
            typer.echo(json.dumps({"group": group.group, "scored": group.scored, "stand_in_model": group.stand_in,
                                   "aspects": {a: vars(s) for a, s in group.aspects.items()}}))
    else:
        console.print(aggregates_table(groups, by=by))


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="File to write")],
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet")] = "csv",
    batch: Annotated[Optional[str], typer.Option()] = None,
    status: Annotated[Optional[str], typer.Option("--status")] = None,
    model: Annotated[Optional[str], typer.Option()] = None,
    tag: Annotated[Optional[list[str]], typer.Option(help="key:value; repeat for several")] = None,
    since: Annotated[Optional[datetime], typer.Option()] = None,
    until: Annotated[Optional[datetime], typer.Option()] = None,
    min_score: Annotated[Optional[list[str]], typer.Option("--min", help="aspect=value")] = None,
    max_score: Annotated[Optional[list[str]], typer.Option("--max", help="aspect=value")] = None,
) -> None:
    """Write every matching job (scores and provenance) to CSV or Parquet."""
    from videoscore.producer.export import export_jobs

    where = _job_filter(batch, model, status, tag, since, until, min_score, max_score)
    try:
        with Client(_settings()) as client:
            count = export_jobs(client.iter_jobs(where), out, fmt=fmt)
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
    console.print(f"wrote {count:,} jobs to {out}", highlight=False)


@app.command()
def report(
    batch: Annotated[str, typer.Option(help="The batch to report on")],
    out: Annotated[Path, typer.Option(help="Folder for index.html and its PNGs")] = Path("report"),
    compare_batch: Annotated[Optional[list[str]], typer.Option(help="Batch(es) to compare with")] = None,
    compare_model: Annotated[Optional[list[str]], typer.Option(help="Model(s) to compare, within the batch")] = None,
    worst: Annotated[int, typer.Option(help="How many lowest-scoring videos to show")] = 8,
    thumbnails: Annotated[bool, typer.Option(help="Fetch videos for frame strips (needs the worker extra)")] = True,
) -> None:
    """Write an HTML report with score distributions, a comparison and the worst videos with their frames."""
    from videoscore.report import build_report

    settings = _settings()
    with Client(settings) as client:
        try:
            index = build_report(client, batch=batch, out=out, compare_batches=compare_batch or [],
                                 compare_models=compare_model or [], worst=worst, thumbnails=thumbnails)
        except ValueError as exc:
            _fail(str(exc))
    console.print(f"report written to {index}", highlight=False)


def _job_filter(batch: str | None, model: str | None, status: str | None, tags: list[str] | None,
                since: datetime | None, until: datetime | None, minimum: list[str] | None,
                maximum: list[str] | None) -> JobFilter:
    from videoscore.db.queries import JobFilter

    def pairs(items: list[str] | None, sep: str, what: str) -> dict[str, str]:
        out = {}
        for item in items or []:
            key, found, value = item.partition(sep)
            if not found or not key:
                _fail(f"{what} {item!r}: expected key{sep}value")
            out[key.strip()] = value.strip()
        return out

    def bounds(items: list[str] | None, what: str) -> dict[str, float]:
        try:
            return {aspect: float(value) for aspect, value in pairs(items, "=", what).items()}
        except ValueError as exc:
            _fail(f"{what}: {exc}")
            raise

    try:
        return JobFilter(batch=batch, model=model, status=status, tags=pairs(tags, ":", "--tag"),
                         since=_utc(since), until=_utc(until), min_scores=bounds(minimum, "--min"),
                         max_scores=bounds(maximum, "--max"))
    except ValueError as exc:
        _fail(str(exc))
        raise


def _utc(moment: datetime | None) -> datetime | None:
    from datetime import timezone

    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@app.command()
def worker(
    concurrency: Annotated[Optional[int], typer.Option(help="Download/decode threads")] = None,
    preload: Annotated[bool, typer.Option(help="Load the default model before taking jobs")] = True,
    loglevel: Annotated[str, typer.Option()] = "INFO",
    hostname: Annotated[Optional[str], typer.Option(help="Celery node name")] = None,
    gpus: Annotated[Optional[str], typer.Option(help="Start one worker process per GPU, e.g. 0,1,2,3 or all")] = None,
    queues: Annotated[Optional[str], typer.Option(
        help="Queues to read, most urgent first, e.g. videoscore.high,videoscore (default: all three of "
             "the default model's)")] = None,
    events: Annotated[bool, typer.Option("--events", help="Send Celery task events (-E), for Flower and "
                                         "`celery events`")] = False,
) -> None:
    """Run a GPU worker (needs the worker extra installed); with --gpus, one child process per GPU."""
    if queues:  # through the environment, so that --gpus children read the same queues
        os.environ["VIDEOSCORE_WORKER_QUEUES"] = json.dumps([q.strip() for q in queues.split(",") if q.strip()])
    if gpus:
        from videoscore.worker.service.main import parse_gpus, run_gpu_workers

        sys.exit(run_gpu_workers(_settings(), parse_gpus(gpus), concurrency=concurrency, preload=preload,
                                 loglevel=loglevel, hostname=hostname, events=events))
    from videoscore.worker.service.main import run_worker

    run_worker(_settings(), concurrency=concurrency, preload=preload, loglevel=loglevel, hostname=hostname,
               events=events)


@app.command()
def fleet(
    serve: Annotated[Optional[int], typer.Option(help="Serve videoscore_queue_load on this port instead")] = None,
    resend_queued_after: Annotated[Optional[float], typer.Option(
        help="Re-send jobs queued (message sent) longer than this many seconds ago, e.g. after Redis lost data; "
             "duplicates are harmless")] = None,
) -> None:
    """The fleet at a glance from the database: jobs by queue and status, workers, throughput, failures."""
    from videoscore.core.fleet import print_fleet, resend_long_queued, serve_queue_load
    from videoscore.db.session import Database

    settings = _settings()
    database = Database(settings.database_url)
    if serve:
        import logging

        logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        serve_queue_load(database, serve, settings.metrics_host)
    if resend_queued_after is not None:
        sent = resend_long_queued(database, settings, sent_before_s=resend_queued_after)
        console.print(f"re-sent {sent} jobs queued for more than {resend_queued_after:.0f}s")
        return
    print_fleet(database, console)


@app.command()
def demo(
    videos: Annotated[int, typer.Option(help="How many sample videos to score")] = 4,
    workdir: Annotated[Optional[Path], typer.Option(help="Keep the demo's files here")] = None,
) -> None:
    """Run the whole job on one machine: sample videos → local S3 → Redis → worker → SQLite → results."""
    from videoscore.demo import run_demo

    sys.exit(run_demo(console, videos=videos, workdir=workdir))


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind")] = 8000,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Serve the REST API with uvicorn (needs the api extra); OpenAPI at /openapi.json."""
    import uvicorn

    from videoscore.api import create_app

    settings = _settings()
    if not settings.api_tokens:
        console.print("[yellow]warning:[/] VIDEOSCORE_API_TOKENS is empty: every call but /healthz and /readyz "
                      "is refused (401)")
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)


@app.command()
def cancel(
    job_id: Annotated[Optional[str], typer.Argument(help="One job's id")] = None,
    batch: Annotated[Optional[str], typer.Option(help="Every queued job of this batch")] = None,
    tag: Annotated[Optional[list[str]], typer.Option(help="key:value; repeat for several (all must match)")] = None,
) -> None:
    """Cancel queued jobs: one by id, or by --batch and/or --tag. Running jobs are left to finish.

    This, not `celery purge`, is how to stop jobs: a purge empties Redis but leaves the jobs queued in the
    database, and the reconciler sends their messages again.
    """
    from videoscore.core.webhooks import fire_if_batch_complete
    from videoscore.db import jobs as job_queries

    if job_id is None and batch is None and not tag:
        _fail("cancel what? give a job id, --batch or --tag")
    tags = _job_filter(None, None, None, tag, None, None, None, None).tags
    settings = _settings()
    with Client(settings) as client:
        with client.db.transaction() as session:
            outcome = job_queries.cancel_queued(session, job_ids=[job_id] if job_id else [], batch=batch, tags=tags)
        for name in sorted({b for b in outcome.cancelled.values() if b is not None}):
            fire_if_batch_complete(client.db, settings, name)
    console.print(f"cancelled {len(outcome.cancelled)} queued jobs", highlight=False)
    if outcome.running:
        console.print(f"{outcome.running} matching jobs are running: they are left to finish", highlight=False)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema to the newest revision (SQLite or PostgreSQL)."""
    from videoscore.db.migrate import upgrade

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
    fast: Annotated[bool, typer.Option(help="A fast stand-in: pseudo-scores in microseconds, no model")] = False,
) -> None:
    """Build a tiny, randomly initialised checkpoint of a variant's architecture (scores are meaningless)."""
    if fast:
        from videoscore.worker.testing.fast_scorer import build_fast_stand_in

        written = build_fast_stand_in(out, variant=variant)
        console.print(f"fast stand-in (not a model) of {variant} written to {written}")
        return
    from videoscore.worker.testing.stand_in import build_stand_in_checkpoint

    path = build_stand_in_checkpoint(out, variant=variant, seed=seed)
    console.print(f"untrained stand-in of {variant} written to {path}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
