"""Bulk-submit throughput: a manifest of N rows into the database and the queue, on SQLite and PostgreSQL.

Starts a real Redis and a real PostgreSQL on 127.0.0.1 the way the tests do (videoscore.worker.testing.servers,
worker/embedded.py), writes a JSON Lines manifest, and times `videoscore submit manifest.jsonl`'s two halves:
reading + validating every row, then inserting (multi-row INSERT … ON CONFLICT, 5,000 rows a transaction)
and sending (Celery messages LPUSHed 5,000 per round trip) with `enqueued_at` marked. Prints jobs/s; asserts
nothing about speed (a benchmark, not a test), only that every job reached the database and the queue.

    .venv/bin/python bench/submit.py [--rows 10000 50000] [--backends sqlite postgres]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from videoscore.core.settings import Settings  # noqa: E402
from videoscore.db.migrate import upgrade  # noqa: E402
from videoscore.db.models import Job  # noqa: E402
from videoscore.producer.client import Client  # noqa: E402
from videoscore.producer.manifest import read_manifest  # noqa: E402
from videoscore.worker.testing.servers import (
    PostgresServer,  # noqa: E402
    RedisServer,  # noqa: E402
)


def write_manifest(path: Path, rows: int) -> Path:
    with path.open("w") as out:
        for i in range(rows):
            out.write(json.dumps({"video_uri": f"s3://gen-videos/run/{i:07d}.mp4",
                                  "prompt": f"a synthetic prompt number {i} about a cat surfing a wave",
                                  "batch": "bench", "tags": {"shard": str(i % 16)},
                                  "idempotency_key": f"bench/{uuid.uuid4().hex}"}) + "\n")
    return path


def run_once(database_url: str, broker_url: str, manifest: Path, rows: int) -> dict[str, float]:
    upgrade(database_url)
    settings = Settings(database_url=database_url, broker_url=broker_url, queue=f"bench-{uuid.uuid4().hex[:6]}")
    started = time.perf_counter()
    parsed = read_manifest(manifest, max_prompt_chars=settings.max_prompt_chars)
    validated = time.perf_counter()
    with Client(settings) as client:
        results = client.submit_detailed(parsed.requests)
        submitted = time.perf_counter()
        with client.db.transaction() as session:
            in_db = session.scalar(select(func.count()).select_from(Job).where(Job.enqueued_at.is_not(None)))
    in_queue = redis.Redis.from_url(broker_url).llen(settings.queue)
    assert parsed.errors == [] and len(results) == rows and in_db == rows and in_queue == rows, (in_db, in_queue)
    return {"validate_s": validated - started, "submit_s": submitted - validated, "total_s": submitted - started}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="videoscore-bench-submit-"))
    redis_server = RedisServer(work / "redis").start()
    postgres = PostgresServer(Path(tempfile.mkdtemp(prefix="videoscore-bench-pg-"))).start() \
        if "postgres" in args.backends else None
    print(f"{'backend':<10} {'rows':>7} {'validate':>10} {'insert+send':>12} {'total':>8}"
          "   jobs/s (insert+send / end to end)")
    try:
        for rows in args.rows:
            manifest = write_manifest(work / f"manifest-{rows}.jsonl", rows)
            for backend in args.backends:
                if backend == "sqlite":
                    url = f"sqlite:///{work / f'{backend}-{rows}.db'}"
                else:
                    url = postgres.create_database()  # type: ignore[union-attr]
                t = run_once(url, redis_server.url, manifest, rows)
                print(f"{backend:<10} {rows:>7} {t['validate_s']:>9.2f}s {t['submit_s']:>11.2f}s {t['total_s']:>7.2f}s"
                      f"   {rows / t['submit_s']:>8,.0f} / {rows / t['total_s']:>8,.0f}", flush=True)
    finally:
        redis_server.stop()
        if postgres is not None:
            postgres.stop()
            shutil.rmtree(postgres.workdir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
