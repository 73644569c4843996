"""`videoscore export` writes every matching job to CSV or Parquet, on SQLite and PostgreSQL, values intact."""

from __future__ import annotations

import csv
import json
from datetime import timedelta
from pathlib import Path

import pyarrow.parquet as pq
from click.testing import Result
from typer.testing import CliRunner

from videoscore import cli
from videoscore.core.jobspec import JobRequest
from videoscore.core.variants import ASPECTS
from videoscore.db import jobs
from videoscore.db.records import ScoreResult
from videoscore.db.session import Database


def _fill(database_url: str) -> list[str]:
    db = Database(database_url)
    requests = [JobRequest(video_uri=f"s3://b/{i}.mp4", prompt=f"prompt, \"quoted\" {i}", batch="exp",
                           tags={"arm": "a" if i % 2 else "b"}) for i in range(7)]
    with db.transaction() as s:
        ids = [job.id for job, _ in jobs.insert_jobs(s, requests, queue="q")]
        jobs.insert_jobs(s, [JobRequest(video_uri="s3://b/x.mp4", prompt="other batch", batch="other")], queue="q")
    for n, job_id in enumerate(ids[:5]):
        result = ScoreResult(
            scores={a: n + i / 8 for i, a in enumerate(ASPECTS)}, model_revision="r", stand_in_model=False,
            num_frames=3, frame_indices=[0, 5, 10], video_etag="e", video_bytes=10, video_total_frames=16,
            video_fps=24.0, video_duration_s=0.5, video_width=32, video_height=24, download_s=0.1, decode_s=0.1,
            preprocess_s=0.1, forward_s=0.1)
        with db.transaction() as s:
            jobs.claim_job(s, job_id, worker_host="w", lease=timedelta(seconds=60))
            jobs.complete_job(s, job_id, result, worker_host="w", attempt=1)
    db.dispose()
    return ids


def _export(database_url: str, out: Path, *args: str) -> Result:
    """The real `videoscore export` command, run in this process (typer's runner) to skip interpreter start-up."""
    return CliRunner().invoke(cli.app, ["export", str(out), *args], env={"VIDEOSCORE_DATABASE_URL": database_url,
                                                                        "COLUMNS": "200"})


def test_csv_and_parquet_exports_hold_every_job_of_the_batch(database_url: str, tmp_path: Path) -> None:
    ids = _fill(database_url)
    as_csv = _export(database_url, tmp_path / "jobs.csv", "--batch", "exp")
    as_parquet = _export(database_url, tmp_path / "jobs.parquet", "--batch", "exp", "--format", "parquet")
    assert as_csv.exit_code == 0 and "wrote 7 jobs" in as_csv.output, as_csv.output
    assert as_parquet.exit_code == 0 and "wrote 7 jobs" in as_parquet.output, as_parquet.output

    with (tmp_path / "jobs.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 7 and {r["id"] for r in rows} == set(ids)
    by_id = {r["id"]: r for r in rows}
    assert by_id[ids[2]]["prompt"] == 'prompt, "quoted" 2' and float(by_id[ids[2]]["dynamic_degree"]) == 2.25
    assert json.loads(by_id[ids[1]]["tags"]) == {"arm": "a"}
    assert json.loads(by_id[ids[0]]["frame_indices"]) == [0, 5, 10]
    assert by_id[ids[6]]["visual_quality"] == "" and by_id[ids[6]]["status"] == "queued"

    table = pq.read_table(tmp_path / "jobs.parquet")
    assert table.num_rows == 7 and set(table.column("id").to_pylist()) == set(ids)
    parquet = {r["id"]: r for r in table.to_pylist()}
    assert parquet[ids[4]]["factual_consistency"] == 4.5 and parquet[ids[4]]["frame_indices"] == [0, 5, 10]
    assert dict(parquet[ids[3]]["tags"]) == {"arm": "a"} and parquet[ids[6]]["visual_quality"] is None
    assert str(table.schema.field("created_at").type) == "timestamp[us, tz=UTC]"


def test_exports_take_the_same_filters_as_queries(database_url: str, tmp_path: Path) -> None:
    _fill(database_url)
    run = _export(database_url, tmp_path / "good.parquet", "--batch", "exp", "--format", "parquet",
                  "--min", "text_to_video_alignment=2.0", "--tag", "arm:a")
    bad = _export(database_url, tmp_path / "x.csv", "--min", "niceness=3")
    assert run.exit_code == 0, run.output
    table = pq.read_table(tmp_path / "good.parquet")
    # scored jobs 0..4 have t2v alignment n + 0.375; n ≥ 2 and an odd index (arm a): jobs 3
    assert table.num_rows == 1 and table.column("text_to_video_alignment").to_pylist() == [3.375]
    assert bad.exit_code == 2 and "unknown aspect 'niceness'" in bad.output
