"""Every migration applied to a database that holds data, on SQLite and PostgreSQL: nothing is lost.

A database at revision 0001 gets jobs in every state, written with the 0001 schema's own columns; upgrading to
head must keep every value, give the new columns their defaults, and leave the data usable by today's code.
Downgrading back to 0001 must keep the original columns' values too.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from videoscore.db import jobs as job_queries
from videoscore.db import queries
from videoscore.db.migrate import current_revision, upgrade
from videoscore.db.queries import JobFilter
from videoscore.db.session import Database

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
SCORES = {"visual_quality": 2.75, "temporal_consistency": 2.5, "dynamic_degree": 3.125,
          "text_to_video_alignment": 2.0625, "factual_consistency": 1.875}
ROWS: list[dict[str, Any]] = [
    {"id": "a" * 32, "idempotency_key": "key-a", "video_uri": "s3://b/a.mp4", "prompt": "a cat ☕ surfing",
     "model": "TIGER-Lab/VideoScore-v1.1", "batch": "old-batch", "tags": {"run": "7"}, "queue": "videoscore",
     "status": "succeeded", "attempts": 1, "created_at": T0, "enqueued_at": T0, "started_at": T0,
     "heartbeat_at": T0, "finished_at": T0, "worker_host": "gpu-1/42", "error_kind": None, "error_message": None,
     **SCORES, "model_revision": "abc123", "stand_in_model": False, "num_frames": 48,
     "frame_indices": list(range(0, 96, 2)), "video_etag": "etag-a", "video_bytes": 123456,
     "video_total_frames": 96, "video_fps": 24.0, "video_duration_s": 4.0, "video_width": 640,
     "video_height": 360, "download_s": 0.5, "decode_s": 0.25, "preprocess_s": 0.125, "forward_s": 1.5},
    {"id": "b" * 32, "idempotency_key": None, "video_uri": "s3://b/b.mp4", "prompt": "a dog",
     "model": "TIGER-Lab/VideoScore",
     "batch": "old-batch", "tags": {}, "queue": "videoscore", "status": "failed", "attempts": 3, "created_at": T0,
     "finished_at": T0, "error_kind": "video_not_found", "error_message": "s3://b/b.mp4 does not exist"},
    {"id": "c" * 32, "idempotency_key": None, "video_uri": "file:///v/c.mp4", "prompt": "a bird",
     "model": "TIGER-Lab/VideoScore",
     "batch": None, "tags": {}, "queue": "videoscore", "status": "queued", "attempts": 0, "created_at": T0},
]


def _empty_database(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'old.db'}"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def old_database(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A database at revision 0001 holding ROWS, written through the 0001 table definition."""
    url = _empty_database(request, tmp_path)
    upgrade(url, "0001")
    engine = sa.create_engine(url)
    table = sa.Table("jobs", sa.MetaData(), autoload_with=engine)
    full = [{c.name: row.get(c.name) for c in table.columns} for row in ROWS]
    with engine.begin() as connection:
        connection.execute(table.insert(), full)
    engine.dispose()
    return url


def _head(url: str) -> str | None:
    from alembic.script import ScriptDirectory

    from videoscore.db.migrate import alembic_config

    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def _read(url: str) -> dict[str, dict[str, Any]]:
    engine = sa.create_engine(url)
    table = sa.Table("jobs", sa.MetaData(), autoload_with=engine)
    with engine.connect() as connection:
        rows = {r["id"]: dict(r) for r in connection.execute(sa.select(table)).mappings()}
    engine.dispose()
    return rows


def _normal(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)  # SQLite hands JSON back as text when the column is reflected
        except ValueError:
            return value
    return value


def test_upgrading_a_0001_database_with_data_keeps_every_value(old_database: str) -> None:
    before = _read(old_database)
    upgrade(old_database)
    after = _read(old_database)
    assert current_revision(old_database) == _head(old_database)
    assert set(after) == set(before) == {r["id"] for r in ROWS}
    for job_id, old in before.items():
        for column, value in old.items():
            assert _normal(after[job_id][column]) == _normal(value), (job_id, column)
        assert after[job_id]["priority"] == "normal"
        assert after[job_id]["force"] in (False, 0)
        assert after[job_id]["deduplicated_from"] is None


def test_migrated_rows_work_with_todays_queries(old_database: str) -> None:
    upgrade(old_database)
    db = Database(old_database)
    with db.transaction() as s:
        record = job_queries.get_job(s, "a" * 32)
        [stats] = queries.aggregate(s, "batch", JobFilter(batch="old-batch"))
        summary = queries.batch_summary(s, "old-batch")
        page = queries.search_jobs(s, JobFilter(), limit=2)
        assert job_queries.cancel_job(s, "c" * 32)
    assert record is not None and record.scores == SCORES and record.priority == "normal" and not record.force
    assert record.frame_indices == list(range(0, 96, 2)) and record.tags == {"run": "7"}
    assert stats.scored == 1 and stats.aspects["dynamic_degree"].mean == 3.125
    assert summary is not None and summary.counts == {"succeeded": 1, "failed": 1}
    assert len(page.jobs) == 2 and page.next_cursor is not None
    db.dispose()


def test_downgrading_to_0001_keeps_the_original_columns(old_database: str) -> None:
    from alembic import command

    from videoscore.db.migrate import alembic_config

    before = _read(old_database)
    upgrade(old_database)
    command.downgrade(alembic_config(old_database), "0001")
    after = _read(old_database)
    assert current_revision(old_database) == "0001"
    assert {k: {c: _normal(v) for c, v in row.items()} for k, row in after.items()} == {
        k: {c: _normal(v) for c, v in row.items()} for k, row in before.items()}
