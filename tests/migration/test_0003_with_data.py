"""Migration 0003 applied to a database that holds data, on SQLite and PostgreSQL: batches gain an owner column
(every existing batch becomes the operator's, so no API token takes over a webhook it did not register) and
idempotency keys take their one spelling, except where that spelling already names another job. Nothing else
changes, today's code reads the result, and downgrading keeps every batch's and job's data.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from videoscore.core.jobspec import JobRequest
from videoscore.db import jobs as job_queries
from videoscore.db import queries
from videoscore.db.migrate import current_revision, upgrade
from videoscore.db.session import Database

T0 = datetime(2026, 11, 29, 8, 0, 0, tzinfo=timezone.utc)
TOKEN_HASH = "ab" * 32


def _job(job_id: str, key: str | None, batch: str | None = "old-batch") -> dict[str, Any]:
    return {"id": job_id * 32, "idempotency_key": key, "video_uri": f"s3://b/{job_id}.mp4", "prompt": "a cat",
            "model": "TIGER-Lab/VideoScore-v1.1", "batch": batch, "tags": {"run": job_id}, "queue": "videoscore",
            "status": "queued", "attempts": 0, "created_at": T0, "priority": "normal", "force": False}


JOBS = [
    _job("a", "key-a"),  # already its one spelling
    _job("b", "ｋｅｙ－ｂ"),  # fullwidth → key-b
    _job("c", " key-c\u200b"),  # padded, with a zero-width space → key-c
    _job("d", "dup "),  # would become "dup", which job e holds: keeps its spelling
    _job("e", "dup"),
    _job("f", "cafe\u0301", batch="jobs-only"),  # decomposed é → composed
    _job("0", None, batch=None),
]
EXPECTED_KEYS = {"a": "key-a", "b": "key-b", "c": "key-c", "d": "dup ", "e": "dup", "f": "café", "0": None}
BATCHES = [
    {"name": "old-batch", "created_at": T0, "webhook_url": "https://hooks.example.com/old", "webhook_sent_at": T0,
     "webhook_delivered_at": T0, "webhook_attempts": 2, "webhook_last_error": None},
    {"name": "quiet", "created_at": T0, "webhook_url": "https://hooks.example.com/quiet", "webhook_sent_at": None,
     "webhook_delivered_at": None, "webhook_attempts": 0, "webhook_last_error": None},
]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_at_0002(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """A database at revision 0002 holding JOBS and BATCHES, written through the 0002 table definitions."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database()
    upgrade(url, "0002")
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    jobs = sa.Table("jobs", metadata, autoload_with=engine)
    batches = sa.Table("batches", metadata, autoload_with=engine)
    with engine.begin() as connection:
        connection.execute(jobs.insert(), JOBS)
        connection.execute(batches.insert(), BATCHES)
    engine.dispose()
    return url


def _read(url: str, table_name: str, key: str) -> dict[str, dict[str, Any]]:
    engine = sa.create_engine(url)
    table = sa.Table(table_name, sa.MetaData(), autoload_with=engine)
    with engine.connect() as connection:
        rows = {r[key]: {c: _normal(v) for c, v in r.items()} for r in connection.execute(sa.select(table)).mappings()}
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


def test_upgrading_keeps_every_value_makes_batches_the_operators_and_gives_keys_one_spelling(
        database_at_0002: str) -> None:
    jobs_before = _read(database_at_0002, "jobs", "id")
    batches_before = _read(database_at_0002, "batches", "name")
    upgrade(database_at_0002, "0003")
    jobs_after = _read(database_at_0002, "jobs", "id")
    batches_after = _read(database_at_0002, "batches", "name")
    assert current_revision(database_at_0002) == "0003"
    assert {job_id[0]: row["idempotency_key"] for job_id, row in jobs_after.items()} == EXPECTED_KEYS
    for job_id, before in jobs_before.items():
        assert {c: v for c, v in jobs_after[job_id].items() if c != "idempotency_key"} == {
            c: v for c, v in before.items() if c != "idempotency_key"}, job_id
    assert set(batches_after) == set(batches_before)
    for name, before in batches_before.items():
        assert batches_after[name] == {**before, "owner_token_hash": None}, name


def test_after_upgrading_no_token_owns_an_existing_batch_and_normalised_keys_find_their_jobs(
        database_at_0002: str) -> None:
    upgrade(database_at_0002)
    db = Database(database_at_0002)
    resubmitted = JobRequest(video_uri="s3://b/b.mp4", prompt="a cat", model="TIGER-Lab/VideoScore-v1.1",
                             batch="old-batch", tags={"run": "b"}, idempotency_key="ｋｅｙ－ｂ")
    with db.transaction() as s:
        claims = {name: queries.claim_batch(s, name, TOKEN_HASH) for name in ("old-batch", "quiet", "jobs-only")}
        fresh = queries.claim_batch(s, "fresh", TOKEN_HASH), queries.claim_batch(s, "fresh", "cd" * 32)
        [(again, created)] = job_queries.insert_jobs(s, [resubmitted], queue="videoscore")
        summary = queries.batch_summary(s, "old-batch")
    db.dispose()
    assert claims == {"old-batch": False, "quiet": False, "jobs-only": False}  # the operator's: rows or jobs
    assert fresh == (True, False)  # a new name is the first token's, and then no other token's
    assert (again.id, created) == ("b" * 32, False)
    assert summary is not None and summary.owner_token_hash is None
    assert summary.webhook_url == "https://hooks.example.com/old" and summary.webhook_attempts == 2


def test_downgrading_to_0002_keeps_every_batch_and_job(database_at_0002: str) -> None:
    from alembic import command

    from videoscore.db.migrate import alembic_config

    batches_before = _read(database_at_0002, "batches", "name")
    upgrade(database_at_0002)
    jobs_upgraded = _read(database_at_0002, "jobs", "id")
    command.downgrade(alembic_config(database_at_0002), "0002")
    assert current_revision(database_at_0002) == "0002"
    assert _read(database_at_0002, "batches", "name") == batches_before
    assert _read(database_at_0002, "jobs", "id") == jobs_upgraded  # keys stay in their one spelling
