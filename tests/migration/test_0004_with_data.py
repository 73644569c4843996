"""Migration 0004 applied to a database that holds data, on SQLite and PostgreSQL: on PostgreSQL `tags` and
`frame_indices` become jsonb (every value kept), `tags @> '{"seed": "2"}'` finds its jobs through a GIN index
and every column is commented; on both the `job_scores` view shows one row per finished job. Today's code reads
the result, its tag filter agrees with the view, and downgrading gives back the 0003 schema with every value.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from videoscore.db import queries
from videoscore.db.migrate import current_revision, upgrade
from videoscore.db.queries import JobFilter
from videoscore.db.session import Database

T0 = datetime(2026, 11, 29, 8, 0, 0, tzinfo=timezone.utc)
SCORES = ("visual_quality", "temporal_consistency", "dynamic_degree", "text_to_video_alignment",
          "factual_consistency")


def _job(job_id: str, status: str, seed: str, **fields: Any) -> dict[str, Any]:
    finished = status in ("succeeded", "failed", "cancelled")
    scored = status == "succeeded"
    return {"id": job_id * 32, "idempotency_key": None, "video_uri": f"s3://b/{job_id}.mp4", "prompt": "a cat",
            "model": "TIGER-Lab/VideoScore-v1.1", "batch": "b1", "tags": {"seed": seed, "run": "r1"},
            "queue": "videoscore", "status": status, "attempts": 1, "created_at": T0, "priority": "normal",
            "force": False, "finished_at": T0 + timedelta(minutes=1) if finished else None,
            "frame_indices": [0, 4, 8] if scored else None,
            **{aspect: (2.5 + i / 10 if scored else None) for i, aspect in enumerate(SCORES)}, **fields}


JOBS = [
    _job("a", "succeeded", "2"),
    _job("b", "succeeded", "3", batch="b2"),
    _job("c", "failed", "2", error_kind="video_unreadable", error_message="no frames"),
    _job("d", "queued", "2"),
    _job("e", "running", "2"),
    _job("f", "succeeded", "2", tags={"seed": "2", "note": "it's \"quoted\""}),
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_at_0003(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A database at revision 0003 holding JOBS, written through the 0003 table definition."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database()
    upgrade(url, "0003")
    engine = sa.create_engine(url)
    jobs = sa.Table("jobs", sa.MetaData(), autoload_with=engine)
    with engine.begin() as connection:
        connection.execute(jobs.insert(), JOBS)
    engine.dispose()
    return url


def _read(url: str, table_name: str) -> dict[str, dict[str, Any]]:
    engine = sa.create_engine(url)
    table = sa.Table(table_name, sa.MetaData(), autoload_with=engine)
    with engine.connect() as connection:
        rows = {r["id"]: {c: _normal(v) for c, v in r.items()}
                for r in connection.execute(sa.select(table)).mappings()}
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


def _column_types(url: str) -> dict[str, str]:
    engine = sa.create_engine(url)
    types = {c["name"]: str(c["type"]).lower() for c in sa.inspect(engine).get_columns("jobs")}
    engine.dispose()
    return types


def test_upgrading_keeps_every_value_and_adds_the_job_scores_view(database_at_0003: str) -> None:
    before = _read(database_at_0003, "jobs")
    upgrade(database_at_0003)
    assert current_revision(database_at_0003) == "0004"
    assert _read(database_at_0003, "jobs") == before
    view = _read(database_at_0003, "job_scores")
    finished = {j["id"] for j in JOBS if j["status"] in ("succeeded", "failed", "cancelled")}
    assert set(view) == finished  # one row per finished job, no queued or running ones
    for job_id, row in view.items():
        assert row == {c: before[job_id][c] for c in ("id", "batch", "model", "status", *SCORES, "tags",
                                                       "created_at", "finished_at")}, job_id
    assert view["c" * 32]["visual_quality"] is None


def test_postgresql_stores_jsonb_answers_containment_from_a_gin_index_and_comments_every_column(
        database_at_0003: str) -> None:
    if not database_at_0003.startswith("postgresql"):
        assert _column_types(database_at_0003)["tags"] == "json"  # SQLite keeps JSON text
        upgrade(database_at_0003)
        assert _column_types(database_at_0003)["tags"] == "json"
        return
    upgrade(database_at_0003)
    types = _column_types(database_at_0003)
    assert (types["tags"], types["frame_indices"]) == ("jsonb", "jsonb")
    engine = sa.create_engine(database_at_0003)
    with engine.connect() as connection:
        seeded = set(connection.execute(sa.text("""SELECT id FROM jobs WHERE tags @> '{"seed": "2"}'""")).scalars())
        finished = set(connection.execute(
            sa.text("""SELECT id FROM job_scores WHERE tags @> '{"seed": "2"}'""")).scalars())
        connection.execute(sa.text("SET enable_seqscan = off"))
        plan = "\n".join(connection.execute(
            sa.text("""EXPLAIN SELECT id FROM jobs WHERE tags @> '{"seed": "2"}'""")).scalars())
        uncommented = list(connection.execute(sa.text(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'jobs'::regclass AND attnum > 0 "
            "AND NOT attisdropped AND col_description(attrelid, attnum) IS NULL")).scalars())
        view_comment = connection.execute(sa.text("SELECT obj_description('job_scores'::regclass)")).scalar()
    engine.dispose()
    assert seeded == {j["id"] for j in JOBS if j["tags"]["seed"] == "2"}
    assert finished == {"a" * 32, "c" * 32, "f" * 32}
    assert "ix_jobs_tags_gin" in plan
    assert uncommented == []
    assert "@>" in view_comment


def test_after_upgrading_the_tag_filter_finds_the_jobs_the_view_lists(database_at_0003: str) -> None:
    upgrade(database_at_0003)
    db = Database(database_at_0003)
    with db.transaction() as s:
        def ids(**where: Any) -> set[str]:
            return {j.id for j in queries.search_jobs(s, JobFilter(**where), limit=50).jobs}

        by_seed = ids(tags={"seed": "2"})
        by_two = ids(tags={"seed": "2", "run": "r1"})
        quoted = ids(tags={"note": "it's \"quoted\""})
        none = ids(tags={"seed": "2", "run": "r2"})
        record = queries.search_jobs(s, JobFilter(tags={"seed": "3"}), limit=5).jobs
    db.dispose()
    assert by_seed == {j["id"] for j in JOBS if j["tags"]["seed"] == "2"}
    assert by_two == by_seed - {"f" * 32}
    assert quoted == {"f" * 32}
    assert none == set()
    [b] = record
    assert b.tags == {"seed": "3", "run": "r1"} and list(b.frame_indices or []) == [0, 4, 8]


def test_downgrading_to_0003_keeps_every_job_and_drops_the_view(database_at_0003: str) -> None:
    from alembic import command

    from videoscore.db.migrate import alembic_config

    before = _read(database_at_0003, "jobs")
    types_before = _column_types(database_at_0003)
    upgrade(database_at_0003)
    command.downgrade(alembic_config(database_at_0003), "0003")
    assert current_revision(database_at_0003) == "0003"
    assert _read(database_at_0003, "jobs") == before
    assert _column_types(database_at_0003) == types_before
    engine = sa.create_engine(database_at_0003)
    assert "job_scores" not in sa.inspect(engine).get_view_names()
    engine.dispose()
