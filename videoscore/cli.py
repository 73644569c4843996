"""The `videoscore` command line: submit, status, wait, results, worker, demo, db, model.

Producer commands import nothing heavy; `worker`, `demo` and `model` import the worker stack when run.

It behaves in scripts: data on stdout, everything else (progress, summaries, errors) on stderr; an error is one
line and a non-zero exit, never a traceback unless `--debug` is given. Exit codes: 0 done, 1 an error, 2 a bad
command line or an unknown job, 3 jobs stored but not sent to the broker (the reaper sends them: do not resubmit).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from videoscore.core.errors import VideoScoreError
from videoscore.core.names import JobStatus
from videoscore.core.settings import Settings
from videoscore.core.variants import DEFAULT_MODEL, ModelPolicy
from videoscore.producer.client import Client, JobsNotSentError
from videoscore.producer.manifest import is_manifest
from videoscore.producer.render import aggregates_table, results_table, wait_with_progress

if TYPE_CHECKING:
    from videoscore.db.queries import JobFilter
    from videoscore.db.records import JobRecord

app = typer.Typer(help="VideoScore Queue: score AI-generated videos at fleet scale.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
model_app = typer.Typer(help="Model checkpoints.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
# Piped output (CI logs, `| less`) gets a table wide enough to read instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
EXIT_ERROR, EXIT_USAGE, EXIT_NOT_SENT = 1, 2, 3
_debug = False


# Choices as enums, so that typer refuses another value with exit 2 and lists the valid ones.
class _Priority(str, Enum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class _GroupBy(str, Enum):
    BATCH = "batch"
    MODEL = "model"


class _Format(str, Enum):
    CSV = "csv"
    PARQUET = "parquet"


def _settings() -> Settings:
    return Settings()


def _error(message: str) -> None:
    # One line, whatever the message holds: a script's log greps it, and rich must not eat `[worker]`.
    line = " ".join(message.split())
    err_console.print(f"[red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    _error(message)
    raise typer.Exit(code=code)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"videoscore {version('videoscore-queue')}")
        except PackageNotFoundError:
            typer.echo("videoscore (not installed: running from a source tree)")
        raise typer.Exit()


@app.callback()
def _global_options(
    show_version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print the version and exit")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show an error's traceback instead of one line")] = False,
) -> None:
    global _debug
    _debug = debug


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
    priority: Annotated[Optional[_Priority], typer.Option(help="high, normal or low (manifest: default)")] = None,
    force: Annotated[bool, typer.Option(help="Score even if the same content was scored before")] = False,
    skip_invalid: Annotated[bool, typer.Option(help="Manifest: submit the valid rows, report the bad ones")] = False,
    webhook: Annotated[Optional[str], typer.Option(help="URL POSTed once when --batch completes")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of {id, video_uri}")] = False,
) -> None:
    """Submit one scoring job, or every row of a manifest file; print the job ids, one a line."""
    settings = _settings()
    if is_manifest(target):
        if prompt or idempotency_key:
            _fail("--prompt and --idempotency-key are per row in a manifest")
        defaults: dict[str, object] = {"model": model, "batch": batch, "priority": priority and priority.value,
                                       "force": force or None}
        _submit_manifest(settings, Path(target), defaults, skip_invalid=skip_invalid, webhook=webhook, batch=batch,
                         as_json=as_json)
        return
    if not prompt:
        _fail("--prompt is required when submitting one video")
    fields = {"model": model or "", "batch": batch, "idempotency_key": idempotency_key,  # "": VIDEOSCORE_MODEL
              "priority": priority.value if priority else "normal", "force": force}
    try:
        with Client(settings) as client:
            if webhook:
                _set_webhook(client, batch, webhook)
            job = client.submit(target, prompt, **fields)
    except JobsNotSentError as exc:
        _print_jobs([j for j, _ in exc.jobs], as_json=as_json)
        _fail(exc.message, EXIT_NOT_SENT)
    except VideoScoreError as exc:
        _fail(exc.message)
    _print_jobs([job], as_json=as_json)


def _print_jobs(jobs: list[JobRecord], *, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps([{"id": j.id, "video_uri": j.video_uri} for j in jobs]))
    else:
        for job in jobs:
            typer.echo(job.id)


def _set_webhook(client: Client, batch: str | None, url: str) -> None:
    if not batch:
        _fail("--webhook needs --batch: the webhook fires when that batch completes")
    try:
        client.set_batch_webhook(batch, url)
    except ValueError as exc:
        _fail(str(exc))


def _submit_manifest(settings: Settings, path: Path, defaults: dict[str, object], *, skip_invalid: bool,
                     webhook: str | None, batch: str | None, as_json: bool) -> None:
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
        err_console.print(f"[red]{escape(str(path))}:{error.line}:[/] {escape(error.message)}", highlight=False)
    if len(manifest.errors) > 50:
        err_console.print(f"[red]… and {len(manifest.errors) - 50} more bad rows[/]")
    if manifest.errors and not skip_invalid:
        _fail(f"{len(manifest.errors)} of {manifest.rows} rows are invalid; nothing was submitted "
              "(fix them, or pass --skip-invalid to submit the rest)")
    if not manifest.requests:
        _fail("no valid rows to submit")
    columns = (TextColumn("submitting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Client(settings) as client:
            if webhook:
                _set_webhook(client, batch, webhook)
            with Progress(*columns, console=err_console, transient=not sys.stderr.isatty()) as progress:
                bar = progress.add_task("jobs", total=len(manifest.requests))
                results = client.submit_detailed(
                    manifest.requests, on_progress=lambda done, _total: progress.update(bar, completed=done))
    except JobsNotSentError as exc:
        _print_jobs([j for j, _ in exc.jobs], as_json=as_json)
        unsubmitted = len(manifest.requests) - len(exc.jobs)
        rest = f"; the other {unsubmitted} of {len(manifest.requests)} rows were not submitted" if unsubmitted else ""
        _fail(exc.message + rest, EXIT_NOT_SENT)
    except VideoScoreError as exc:
        _fail(exc.message)
    _print_jobs([j for j, _ in results], as_json=as_json)
    elapsed = time.perf_counter() - started
    created = sum(1 for _, new in results if new)
    err_console.print(
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
    job_ids: Annotated[Optional[list[str]], typer.Argument(help="Job ids (or --batch)")] = None,
    batch: Annotated[Optional[str], typer.Option(help="Wait for every job of this batch")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds before giving up (exit 1)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """Wait for jobs to finish, with a progress bar, then print their results; an unknown id fails at once."""
    if bool(job_ids) == bool(batch):
        _fail("give job ids or --batch, not both" if job_ids else "give job ids or --batch")
    with Client(_settings()) as client:
        ids = list(job_ids or [])
        if batch:
            from videoscore.db.queries import JobFilter

            ids = [job.id for job in client.iter_jobs(JobFilter(batch=batch))]
            if not ids:
                _fail(f"no jobs in batch {batch}")
        try:
            records = wait_with_progress(client, ids, console=err_console, timeout_s=timeout)
        except VideoScoreError as exc:
            _fail(exc.message, EXIT_USAGE if exc.kind == "unknown_job" else EXIT_ERROR)
    _print_records(records, as_json=as_json)


def _print_records(records: list[JobRecord], *, as_json: bool) -> None:
    if as_json:
        for record in records:
            typer.echo(json.dumps(record.to_dict()))
    else:
        console.print(results_table(records))


@app.command()
def results(
    batch: Annotated[Optional[str], typer.Option()] = None,
    status: Annotated[Optional[JobStatus], typer.Option("--status")] = None,
    model: Annotated[Optional[str], typer.Option()] = None,
    tag: Annotated[Optional[list[str]], typer.Option(help="key:value; repeat for several")] = None,
    since: Annotated[Optional[datetime], typer.Option(help="Created at or after (ISO 8601, UTC if no zone)")] = None,
    until: Annotated[Optional[datetime], typer.Option(help="Created before")] = None,
    min_score: Annotated[
        Optional[list[str]], typer.Option("--min", help="aspect=value, e.g. text_to_video_alignment=2.5")
    ] = None,
    max_score: Annotated[Optional[list[str]], typer.Option("--max", help="aspect=value")] = None,
    limit: Annotated[Optional[int], typer.Option(
        min=1, help="Most jobs to list (default: all with --json, 100 in a table)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """List jobs and their scores, filtered by batch, model, status, tags, time window and score bounds."""

    where = _job_filter(batch, model, status, tag, since, until, min_score, max_score)
    most = limit if limit is not None else (None if as_json else 100)
    records: list[JobRecord] = []
    cursor: str | None = None
    with Client(_settings()) as client:
        while True:  # by the keyset cursor, a page at a time, until done or `most` are read
            want = 500 if most is None else min(500, most - len(records))
            page = client.search(where, limit=want, cursor=cursor)
            records.extend(page.jobs)
            cursor = page.next_cursor
            if cursor is None or (most is not None and len(records) >= most):
                break
    _print_records(records, as_json=as_json)
    if cursor is not None:
        how = "--limit" if limit is not None else "the table's default of 100 (--limit N, or --json for all)"
        err_console.print(f"[yellow]note:[/] listed the first {len(records):,} jobs; more match, cut by {how}",
                          highlight=False, soft_wrap=True)


@app.command()
def aggregate(
    by: Annotated[_GroupBy, typer.Option("--by", help="batch or model")] = _GroupBy.BATCH,
    batch: Annotated[Optional[str], typer.Option()] = None,
    model: Annotated[Optional[str], typer.Option()] = None,
    tag: Annotated[Optional[list[str]], typer.Option(help="key:value; repeat for several")] = None,
    since: Annotated[Optional[datetime], typer.Option()] = None,
    until: Annotated[Optional[datetime], typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per group")] = False,
) -> None:
    """Per batch or model: scored jobs, and mean, p10, p50, p90 of each aspect."""
    where = _job_filter(batch, model, None, tag, since, until, None, None)
    with Client(_settings()) as client:
        groups = client.aggregate(by.value, where)  # type: ignore[arg-type]
    if as_json:
        for group in groups:
            typer.echo(json.dumps({"group": group.group, "scored": group.scored, "stand_in_model": group.stand_in,
                                   "aspects": {a: vars(s) for a, s in group.aspects.items()}}))
    else:
        console.print(aggregates_table(groups, by=by.value))


@app.command()
def export(
    out: Annotated[Path, typer.Argument(help="File to write")],
    fmt: Annotated[Optional[_Format], typer.Option(
        "--format", help="csv or parquet (default: from the file's suffix, .parquet or .pq, else csv)")] = None,
    batch: Annotated[Optional[str], typer.Option()] = None,
    status: Annotated[Optional[JobStatus], typer.Option("--status")] = None,
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
    kind = fmt.value if fmt else "parquet" if out.suffix.lower() in (".parquet", ".pq") else "csv"
    try:
        with Client(_settings()) as client:
            count = export_jobs(client.iter_jobs(where), out, fmt=kind)
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc))
    err_console.print(f"wrote {count:,} jobs ({kind}) to {escape(str(out))}", highlight=False)


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
        from videoscore.core.queueing import worker_queues

        # the default model's queues are published even when empty: 0, not "no data", to an autoscaler
        serve_queue_load(database, serve, settings.metrics_host, worker_queues(settings))
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
    err_console.print(f"cancelled {len(outcome.cancelled)} queued jobs", highlight=False)  # a summary: stderr
    if outcome.running:
        err_console.print(f"{outcome.running} matching jobs are running: they are left to finish", highlight=False)


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
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:  # not a URL sqlalchemy reads: say where without risking a password
        return url.split("://", 1)[0] + "://…"


def main() -> None:
    """Run the CLI; an uncaught error becomes one line on stderr and exit 1 (`--debug`: the traceback)."""
    # typer (0.29) vendors click: its exceptions, not the click package's, are what it raises
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ClickException as exc:  # a bad option or value: exit 2
        hint = f" (see {exc.ctx.command_path} --help)" if isinstance(exc, UsageError) and exc.ctx else ""
        _error(exc.format_message() + hint)
        sys.exit(exc.exit_code)
    except typer.Abort:
        _error("aborted")
        sys.exit(EXIT_ERROR)
    except Exception as exc:
        if _debug:
            raise
        _error(f"{_describe(exc)} (--debug shows the traceback)")
        sys.exit(EXIT_ERROR)
    sys.exit(code if isinstance(code, int) else 0)


def _describe(exc: Exception) -> str:
    """What went wrong, for a user: which service is down, not the stack that found out."""
    from pydantic import ValidationError
    from sqlalchemy.exc import DBAPIError

    def first_line(error: BaseException) -> str:
        text = str(error).strip()
        return text.splitlines()[0] if text else type(error).__name__

    if isinstance(exc, VideoScoreError):
        return exc.message
    if isinstance(exc, ValidationError):
        return "bad settings: " + "; ".join(
            f"VIDEOSCORE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
    if isinstance(exc, DBAPIError):
        return f"database error at {_redact(_settings().database_url)}: {first_line(exc.orig or exc)}"
    if _is_broker_error(exc):
        return f"broker unavailable at {_redact(_settings().broker_url)}: {first_line(exc)}"
    return f"{type(exc).__name__}: {first_line(exc)}"


def _is_broker_error(exc: Exception) -> bool:
    from kombu.exceptions import OperationalError as KombuOperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError

    return isinstance(exc, (KombuOperationalError, RedisConnectionError))


if __name__ == "__main__":
    main()
