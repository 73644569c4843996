"""Worker CPU per tiny job: what a real worker process spends around a job that costs nothing to score.

Starts Redis and moto's S3 on 127.0.0.1 (videoscore.worker.testing.servers), a database (SQLite by default, or
the suite's PostgreSQL with `--db postgres`), uploads a 2-frame 32×32 clip, and for each checkout given with
`--repo` starts a real worker subprocess serving the fast stand-in scorer
(`python -m videoscore.worker.testing.fleet_worker worker`, with that checkout first on PYTHONPATH and as its
working directory). Jobs go in with `videoscore.producer.Client` (a batch name, no webhook, unique prompts);
after a warm-up, each mode submits `--jobs` jobs, waits for all to finish, and reads the worker process's CPU
time (user + system, every thread; psutil) before and after:

* `dedupe`: content dedupe on (the default for a job): every job looks for earlier scores, finds none, scores;
* `force`: `force=True`, which skips the dedupe look-up.

Baselines in the same run: a raw Celery worker with the same Celery configuration (make_celery_app, threads
pool, same concurrency) running a no-op task (`noop`), and a task doing the same S3 GET and frame decode as a
job (`get+decode`). Checkouts and baselines are interleaved, `--reps` times each; the median is reported.

    .venv/bin/python bench/job_overhead.py                                   # this checkout only
    git worktree add /tmp/before b5e40ba
    .venv/bin/python bench/job_overhead.py --repo before=/tmp/before --repo after=.   [--db postgres]

The bench's own process (servers, producer, baselines) always runs this checkout's code; `--repo` decides only
what the worker subprocess imports (printed as `videoscore.__file__` from that environment, and checked).
The idle CPU of each worker (heartbeats, reaper, broker polling) over `--idle-s` seconds with no job is
printed too; the per-job figures include it for the seconds the jobs took. On a shared host CPU time per job
moves with the load, so each figure is also given as a multiple of the same run's raw GET + decode. Figures
are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from sqlalchemy import text  # noqa: E402

from videoscore.core.settings import Settings  # noqa: E402
from videoscore.db.session import Database  # noqa: E402
from videoscore.producer.client import Client  # noqa: E402
from videoscore.worker.testing.fast_scorer import build_fast_stand_in  # noqa: E402
from videoscore.worker.testing.media import make_video  # noqa: E402
from videoscore.worker.testing.servers import RedisServer, S3Server, running_postgres  # noqa: E402
from videoscore.worker.video.storage import make_s3_client  # noqa: E402

BUCKET = "overhead-bench"
KEY = "tiny.mp4"
NOOP_TASK = "bench.noop"
FETCH_TASK = "bench.get_decode"
TERMINAL = ("succeeded", "failed", "cancelled")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", action="append", default=[], metavar="LABEL=PATH",
                        help="a checkout whose worker to measure (repeatable); default: this one")
    parser.add_argument("--jobs", type=int, default=300, help="jobs per mode and repetition")
    parser.add_argument("--warmup", type=int, default=40, help="jobs each worker runs before it is measured")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--modes", default="dedupe,force", help="comma-separated: dedupe, force")
    parser.add_argument("--baselines", default="noop,get+decode", help="comma-separated: noop, get+decode; '' none")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--concurrency", type=int, default=8, help="worker threads (Celery's threads pool)")
    parser.add_argument("--idle-s", type=float, default=2.0, help="seconds of idle CPU measured per worker")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (worker logs) and say where")
    parser.add_argument("--serve-raw", action="store_true", help=argparse.SUPPRESS)  # the baseline worker itself
    return parser.parse_args(argv)


# --- the baseline worker: a bare Celery task on the project's Celery configuration -------------------------


def serve_raw(concurrency: int) -> None:
    """Run in a child process: a Celery worker whose tasks are a no-op and a plain S3 GET + frame decode."""
    from videoscore.core.queueing import make_celery_app
    from videoscore.core.variants import resolve_model
    from videoscore.worker.model.recipes import recipe_for
    from videoscore.worker.video.storage import VideoStore

    settings = Settings()
    app = make_celery_app(settings)
    store = VideoStore(settings)
    spec = resolve_model(settings.model)
    recipe = recipe_for(spec.variant.family, num_frames=spec.num_frames)

    @app.task(name=NOOP_TASK)
    def noop(job_id: str) -> None:
        return None

    @app.task(name=FETCH_TASK)
    def get_decode(uri: str) -> None:
        with store.fetch(uri) as fetched:
            recipe.sample(fetched.path, num_frames=None, max_pixels=settings.max_video_pixels)

    print("raw worker loaded", flush=True)
    app.worker_main(["worker", "--pool=threads", f"--concurrency={concurrency}", f"--queues={settings.queue}",
                     "--loglevel=INFO", "--without-gossip", "--without-mingle", "--hostname=raw@%h"])


# --- measuring ---------------------------------------------------------------------------------------------


@dataclass
class Stack:
    root: Path
    redis: RedisServer
    s3: S3Server
    model: Path
    postgres: Any = None  # a PostgresServer with --db postgres

    def database_url(self, name: str) -> str:
        if self.postgres is not None:
            return str(self.postgres.create_database())
        return f"sqlite:///{self.root / f'{name}.db'}"

    def settings(self, database_url: str, **overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            database_url=database_url, broker_url=self.redis.url, queue=f"bench-{uuid.uuid4().hex[:8]}",
            s3_endpoint_url=self.s3.url, s3_access_key_id="bench", s3_secret_access_key="bench",
            allowed_buckets=[BUCKET], model=str(self.model), model_roots=[str(self.model)], batch_size=4,
            batch_wait_ms=20, metrics_port=0, work_dir=str(self.root / "scratch"), poll_interval_s=0.1,
        )
        values.update(overrides)
        return Settings(**values)


def cpu_s(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def worker_env(settings: Settings, repo: Path) -> dict[str, str]:
    env = {**os.environ, **settings.to_env()}
    env["PYTHONPATH"] = os.pathsep.join([str(repo), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def imported_from(repo: Path) -> str:
    """Where `videoscore` comes from in a worker started for `repo` (it must be that checkout's)."""
    out = subprocess.run([sys.executable, "-c", "import videoscore; print(videoscore.__file__)"],
                         env={**os.environ, "PYTHONPATH": str(repo)}, cwd=repo, capture_output=True, text=True,
                         check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(repo.resolve()):
        raise SystemExit(f"a worker for {repo} would import videoscore from {out}, not from that checkout")
    return out


def migrate(database_url: str, repo: Path) -> None:
    """The schema as that checkout's migrations make it."""
    subprocess.run([sys.executable, "-c", "import sys; from videoscore.db.migrate import upgrade; upgrade(sys.argv[1])",
                    database_url], env={**os.environ, "PYTHONPATH": str(repo)}, cwd=repo, check=True)


class Worker:
    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path, ready: str) -> None:
        self.log_path = log_path
        self.ready = ready
        self.process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=log_path.open("ab"), stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 240.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            text_ = self.log()
            if " ready." in text_ and self.ready in text_:
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout_s}s:\n{self.log()[-4000:]}")

    def cpu_s(self) -> float:
        return cpu_s(self.process.pid)

    def idle_ms_per_s(self, seconds: float) -> float:
        before, started = self.cpu_s(), time.monotonic()
        time.sleep(seconds)
        return 1000 * (self.cpu_s() - before) / (time.monotonic() - started)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Run:
    ms_per_job: float
    seconds: float
    failed: int = 0
    deduplicated: int = 0


def wait_finished(db: Database, batch: str, n: int, worker: Worker, timeout_s: float = 600.0) -> None:
    query = text("SELECT count(*) FROM jobs WHERE batch = :b AND status IN ('succeeded', 'failed', 'cancelled')")
    deadline = time.monotonic() + timeout_s
    while True:
        with db.transaction() as session:
            if session.scalar(query, {"b": batch}) >= n:
                return
        if time.monotonic() > deadline or worker.process.poll() is not None:
            raise RuntimeError(f"{batch}: jobs unfinished after {timeout_s}s\n{worker.log()[-4000:]}")
        time.sleep(0.05)


def run_jobs(client: Client, worker: Worker, n: int, *, force: bool, tag: str) -> Run:
    batch = f"{tag}-{uuid.uuid4().hex[:8]}"
    requests = [{"video_uri": f"s3://{BUCKET}/{KEY}", "prompt": f"{batch} job {i}", "batch": batch,
                 "model": client.settings.model, "force": force} for i in range(n)]
    before, started = worker.cpu_s(), time.monotonic()
    client.submit_many(requests)
    wait_finished(client.db, batch, n, worker)
    cpu, seconds = worker.cpu_s() - before, time.monotonic() - started
    with client.db.transaction() as session:
        failed = session.execute(text("SELECT error_kind, count(*) FROM jobs WHERE batch = :b AND status <> "
                                      "'succeeded' GROUP BY error_kind"), {"b": batch}).all()
        deduplicated = session.scalar(text("SELECT count(*) FROM jobs WHERE batch = :b AND deduplicated_from IS "
                                           "NOT NULL"), {"b": batch})
    if failed:
        print(f"  ! {tag}: jobs that did not succeed, by error kind: {dict(failed)}")
    return Run(1000 * cpu / n, seconds, sum(count for _, count in failed), int(deduplicated or 0))


def measure_worker(stack: Stack, label: str, repo: Path, args: argparse.Namespace, rep: int) -> dict[str, Run]:
    database_url = stack.database_url(f"{label}-{rep}")
    migrate(database_url, repo)
    settings = stack.settings(database_url)
    argv = [sys.executable, "-m", "videoscore.worker.testing.fleet_worker", "worker", "--concurrency",
            str(args.concurrency), "--hostname", f"bench-{label}@%h", "--loglevel", "INFO"]
    worker = Worker(argv, worker_env(settings, repo), repo, stack.root / f"worker-{label}-{rep}.log", "loaded ")
    runs: dict[str, Run] = {}
    try:
        worker.wait_ready()
        with Client(settings) as client:
            run_jobs(client, worker, args.warmup, force=False, tag="warmup")
            idle = worker.idle_ms_per_s(args.idle_s)
            for mode in args.modes:
                runs[mode] = run_jobs(client, worker, args.jobs, force=mode == "force", tag=mode)
        runs["idle"] = Run(idle, 0.0)
    finally:
        worker.stop()
        if stack.postgres is None:
            for suffix in ("", "-wal", "-shm"):
                Path(database_url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
    return runs


def measure_raw(stack: Stack, args: argparse.Namespace, rep: int) -> dict[str, Run]:
    from videoscore.core.queueing import make_celery_app

    settings = stack.settings("sqlite://")
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-raw", "--concurrency", str(args.concurrency)]
    worker = Worker(argv, {**os.environ, **settings.to_env()}, ROOT, stack.root / f"raw-{rep}.log",
                    "raw worker loaded")
    app = make_celery_app(settings)
    runs: dict[str, Run] = {}
    try:
        worker.wait_ready()
        tasks = {"noop": (NOOP_TASK, "0" * 32), "get+decode": (FETCH_TASK, f"s3://{BUCKET}/{KEY}")}
        with app.connection_for_write() as connection:
            redis = connection.default_channel.client

            def send(task: str, arg: str, n: int) -> float:
                before = worker.cpu_s()
                with app.producer_or_acquire() as producer:
                    for _ in range(n):
                        app.send_task(task, args=[arg], queue=settings.queue, producer=producer)
                deadline = time.monotonic() + 600
                while redis.llen(settings.queue) or redis.hlen("unacked"):
                    if time.monotonic() > deadline or worker.process.poll() is not None:
                        raise RuntimeError(f"raw tasks unfinished\n{worker.log()[-4000:]}")
                    time.sleep(0.05)
                return worker.cpu_s() - before

            for name in args.baselines:
                send(*tasks[name], args.warmup)
                started = time.monotonic()
                runs[name] = Run(1000 * send(*tasks[name], args.jobs) / args.jobs, time.monotonic() - started)
    finally:
        worker.stop()
        app.close()
    return runs


def start_stack(exit_stack: ExitStack, args: argparse.Namespace) -> Stack:
    if args.keep:
        root = Path(tempfile.mkdtemp(prefix="videoscore-overhead-"))
        print(f"  scratch folder (kept): {root}")
    else:
        root = Path(exit_stack.enter_context(tempfile.TemporaryDirectory(prefix="videoscore-overhead-")))
    (root / "scratch").mkdir()
    redis = exit_stack.enter_context(RedisServer(root / "redis"))
    s3 = exit_stack.enter_context(S3Server(root / "s3"))
    postgres = exit_stack.enter_context(running_postgres("videoscore-bench-pg-")) if args.db == "postgres" else None
    model = build_fast_stand_in(root / "fast-stand-in")
    stack = Stack(root=root, redis=redis, s3=s3, model=model, postgres=postgres)  # type: ignore[arg-type]
    clip = make_video(root / KEY, frames=2, size=(32, 32))
    s3_client = make_s3_client(stack.settings("sqlite://"))
    s3_client.create_bucket(Bucket=BUCKET)
    s3_client.upload_file(str(clip), BUCKET, KEY)
    return stack


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_raw:
        serve_raw(args.concurrency)
        return 0
    args.modes = [m for m in args.modes.split(",") if m]
    args.baselines = [b for b in args.baselines.split(",") if b]
    repos: list[tuple[str, Path]] = []
    for spec in args.repo or [f"this={ROOT}"]:
        label, _, path = spec.rpartition("=")
        repos.append((label or Path(path).name, Path(path).resolve()))
    print(f"worker CPU per tiny job: {args.jobs} jobs per mode, {args.reps} repetitions (median), db={args.db}, "
          f"concurrency={args.concurrency}, host {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    for label, repo in repos:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        print(f"  {label}: {repo} at {commit}{' (+ uncommitted changes)' if dirty else ''}; worker imports "
              f"{imported_from(repo)}")
    figures: dict[tuple[str, str], list[Run]] = {}
    with ExitStack() as exit_stack:
        stack = start_stack(exit_stack, args)
        for rep in range(args.reps):
            for label, repo in repos:
                for mode, run in measure_worker(stack, label, repo, args, rep).items():
                    figures.setdefault((label, mode), []).append(run)
                    if run.failed:
                        print(f"  ! {label} {mode} rep {rep + 1}: {run.failed} jobs did not succeed")
            if args.baselines:
                for name, run in measure_raw(stack, args, rep).items():
                    figures.setdefault(("raw celery", name), []).append(run)
            print(f"  repetition {rep + 1}/{args.reps} done", flush=True)
    # On a shared host CPU time per job moves with the load; the raw GET + decode of the same run is a yardstick.
    yardstick = figures.get(("raw celery", "get+decode"))
    scale = statistics.median(r.ms_per_job for r in yardstick) if yardstick else None
    print(f"\n{'worker':<14} {'mode':<11} {'median ms CPU/job':>18} {'x raw get+decode':>17}   runs (ms/job)"
          f"{'':<12} jobs/s")
    for (label, mode), runs in figures.items():
        values = [r.ms_per_job for r in runs]
        median = statistics.median(values)
        ratio = f"{median / scale:.2f}" if scale and mode != "idle" else ""
        rates = [f"{args.jobs / r.seconds:.0f}" for r in runs if r.seconds]
        unit = "ms CPU/s idle" if mode == "idle" else ""
        print(f"{label:<14} {mode:<11} {median:>18.2f} {ratio:>17}   {', '.join(f'{v:.2f}' for v in values):<24} "
              f"{' '.join(rates)} {unit}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
