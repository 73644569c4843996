"""Query plans at 1,000,000 jobs on PostgreSQL: do the indices keep the common queries fast?

Starts PostgreSQL on 127.0.0.1 the way the tests do, migrates a fresh database to head, fills `jobs` with
1,000,000 generated rows in one INSERT … SELECT over generate_series (4 models, 1,000 batches, 6 in 7 succeeded),
ANALYZEs, and prints EXPLAIN (ANALYZE, BUFFERS) of:

  1. the mean text-to-video alignment of model X's batch 42 (the question researchers ask most);
  2. the same aggregate as the API/CLI run it (db.queries.aggregate: count, mean, percentile_cont ×3 × 5);
  3. a keyset page of a batch (GET /jobs?batch=…&limit=100 and its next page);
  4. the content-dedupe look-up a worker makes before downloading.

    .venv/bin/python bench/query_plan.py [--rows 1000000] [--markdown docs/query_plan.md]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402
from sqlalchemy.dialects import postgresql  # noqa: E402

from videoscore.db.migrate import upgrade  # noqa: E402
from videoscore.db.queries import ContentKey, JobFilter, _aggregate_in_sql  # noqa: E402
from videoscore.db.session import Database  # noqa: E402
from videoscore.worker.testing.servers import PostgresServer  # noqa: E402

MODELS = ["TIGER-Lab/VideoScore", "TIGER-Lab/VideoScore-anno-only", "TIGER-Lab/VideoScore-v1.1",
          "TIGER-Lab/VideoScore-Qwen2-VL"]

FILL = """
INSERT INTO jobs (id, idempotency_key, video_uri, prompt, model, batch, tags, queue, status, attempts, created_at,
                  enqueued_at, finished_at, visual_quality, temporal_consistency, dynamic_degree,
                  text_to_video_alignment, factual_consistency, model_revision, stand_in_model, num_frames,
                  video_etag, priority, force)
SELECT md5(g::text),
       'bench/' || g,
       's3://gen-videos/run/' || g || '.mp4',
       'prompt number ' || (g % 50000),
       (ARRAY['TIGER-Lab/VideoScore','TIGER-Lab/VideoScore-anno-only','TIGER-Lab/VideoScore-v1.1',
              'TIGER-Lab/VideoScore-Qwen2-VL'])[1 + (g / 1000) % 4],
       'batch-' || (g % 1000),
       '{}'::json,
       'videoscore',
       CASE WHEN g % 7 = 0 THEN 'failed' ELSE 'succeeded' END,
       1,
       now() - make_interval(secs => 1000000 - g),
       now() - make_interval(secs => 1000000 - g),
       now() - make_interval(secs => 999990 - g),
       CASE WHEN g % 7 = 0 THEN NULL ELSE 1 + 3 * random() END,
       CASE WHEN g % 7 = 0 THEN NULL ELSE 1 + 3 * random() END,
       CASE WHEN g % 7 = 0 THEN NULL ELSE 1 + 3 * random() END,
       CASE WHEN g % 7 = 0 THEN NULL ELSE 1 + 3 * random() END,
       CASE WHEN g % 7 = 0 THEN NULL ELSE 1 + 3 * random() END,
       'rev-1', false, 48,
       md5('etag' || (g % 500000)),
       'normal', false
FROM generate_series(1, :rows) AS g
"""


def explain(db: Database, sql: str, params: dict[str, object] | None = None) -> tuple[str, float]:
    with db.engine.connect() as connection:
        started = time.perf_counter()
        plan = connection.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql), params or {}).scalars().all()
        return "\n".join(plan), time.perf_counter() - started


def compiled(statement: object) -> str:
    return str(statement.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the plans to this file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="videoscore-bench-plan-"))
    server = PostgresServer(workdir).start()
    try:
        url = server.create_database()
        upgrade(url)
        db = Database(url)
        started = time.perf_counter()
        with db.engine.begin() as connection:
            connection.execute(text(FILL), {"rows": args.rows})
            connection.execute(text("ANALYZE jobs"))
        fill_s = time.perf_counter() - started
        model = "TIGER-Lab/VideoScore-v1.1"

        # what db.queries.aggregate runs, captured by compiling its statement
        from sqlalchemy import func, select

        from videoscore.core.variants import ASPECTS
        from videoscore.db.models import Job

        columns = [Job.batch, func.count(), func.bool_or(Job.stand_in_model)]
        for aspect in ASPECTS:
            column = getattr(Job, aspect)
            columns += [func.avg(column), *(func.percentile_cont(p).within_group(column) for p in (0.1, 0.5, 0.9))]
        where = JobFilter(batch="batch-42", model=model, status="succeeded")
        aggregate_sql = compiled(where.apply(select(*columns)).group_by(Job.batch))
        page_sql = compiled(where.apply(select(Job)).order_by(Job.created_at, Job.id).limit(101))
        queries = [
            ("mean text-to-video alignment of model X's batch 42",
             "SELECT avg(text_to_video_alignment) FROM jobs "
             "WHERE model = :model AND batch = 'batch-42' AND status = 'succeeded'", {"model": model}),
            ("db.queries.aggregate for that batch and model (count, mean, p10/p50/p90 of 5 aspects)",
             aggregate_sql, {}),
            ("GET /jobs?batch=batch-42&model=…&status=succeeded&limit=100 (first keyset page)", page_sql, {}),
            ("GET /jobs (no filter), page after a cursor deep into the table",
             "SELECT * FROM jobs WHERE (created_at, id) > (now() - interval '3 days', '') "
             "ORDER BY created_at, id LIMIT 101", {}),
            ("worker dedupe look-up before a download",
             "SELECT * FROM jobs WHERE video_etag = md5('etag4242') AND model = :model AND status = 'succeeded' "
             "AND model_revision = 'rev-1' AND prompt = 'prompt number 4242' "
             "AND (num_frames = 48 OR (num_frames = video_total_frames AND video_total_frames <= 48)) "
             "ORDER BY finished_at LIMIT 1", {"model": model}),
        ]
        _ = ContentKey, _aggregate_in_sql  # the code whose SQL the last two mirror
        lines = [f"# Query plans at {args.rows:,} jobs (PostgreSQL)", "",
                 f"Generated by `bench/query_plan.py` ({args.rows:,} rows inserted in {fill_s:.1f}s with "
                 "INSERT … SELECT generate_series, then ANALYZE). 4 models, 1,000 batches, 6 in 7 succeeded.", ""]
        for title, sql, params in queries:
            plan, took = explain(db, sql, params)
            print(f"\n=== {title} ({took * 1000:.1f} ms with EXPLAIN) ===\n{plan}")
            lines += [f"## {title}", "", "```sql", sql.strip(), "```", "", "```", plan, "```", ""]
        if args.markdown:
            args.markdown.write_text("\n".join(lines))
            print(f"\nwrote {args.markdown}")
        db.dispose()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
