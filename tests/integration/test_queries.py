"""Researchers' queries on SQLite and PostgreSQL: filters, keyset pages, aggregates with percentiles (SQL on
PostgreSQL, Python on SQLite: the same numbers), content-dedupe look-ups, the batch-webhook claim, and
idempotency keys under concurrent submits."""

from __future__ import annotations

import statistics
import threading
from datetime import timedelta

import pytest

from videoscore.core.jobspec import JobRequest
from videoscore.core.variants import ASPECTS
from videoscore.db import jobs, queries
from videoscore.db.models import Job, utcnow
from videoscore.db.queries import ContentKey, JobFilter
from videoscore.db.records import ScoreResult
from videoscore.db.session import Database

LEASE = timedelta(seconds=60)


def _submit(db: Database, n: int = 1, **fields: object) -> list[str]:
    requests = [JobRequest(**{"video_uri": f"s3://b/{i}.mp4", "prompt": "a cat", **fields})  # type: ignore[arg-type]
                for i in range(n)]
    with db.transaction() as s:
        return [job.id for job, _ in jobs.insert_jobs(s, requests, queue="q")]


def _score(db: Database, job_id: str, base: float, *, etag: str = "etag-1", frames: int = 48, total: int = 100,
           stand_in: bool = False) -> None:
    scores = {a: base + i / 10 for i, a in enumerate(ASPECTS)}
    result = ScoreResult(
        scores=scores, model_revision="rev-1", stand_in_model=stand_in, num_frames=frames,
        frame_indices=list(range(frames)), video_etag=etag, video_bytes=1000, video_total_frames=total,
        video_fps=24.0, video_duration_s=total / 24, video_width=64, video_height=48, download_s=0.1,
        decode_s=0.1, preprocess_s=0.1, forward_s=0.1,
    )
    with db.transaction() as s:
        claimed = jobs.claim_job(s, job_id, worker_host="w", lease=LEASE)
        assert claimed is not None
        assert jobs.complete_job(s, job_id, result, worker_host="w", attempt=claimed.attempts)


def test_filters_select_by_batch_model_tag_status_time_and_score(database_url: str) -> None:
    db = Database(database_url)
    start = utcnow() - timedelta(seconds=1)
    good, bad = _submit(db, 2, batch="b1", tags={"run": "r1"})
    [other] = _submit(db, 1, batch="b2", tags={"run": "r2"})
    _score(db, good, 3.0)
    _score(db, bad, 1.0)
    with db.transaction() as s:
        def ids(**where: object) -> set[str]:
            return {j.id for j in queries.search_jobs(s, JobFilter(**where), limit=50).jobs}  # type: ignore[arg-type]

        assert ids(batch="b1") == {good, bad}
        assert ids(tags={"run": "r2"}) == {other}
        assert ids(status="succeeded") == {good, bad}
        assert ids(min_scores={"text_to_video_alignment": 2.5}) == {good}
        assert ids(max_scores={"visual_quality": 1.5}) == {bad}
        assert ids(since=start, until=utcnow() + timedelta(seconds=1)) == {good, bad, other}
        assert ids(since=utcnow() + timedelta(seconds=1)) == set()
        assert ids(model="TIGER-Lab/VideoScore-v1.1", batch="b2") == {other}


def test_keyset_pages_visit_every_job_once_in_creation_order(database_url: str) -> None:
    db = Database(database_url)
    # one insert: all 23 rows share created_at, so the id is what orders (and pages) them
    expected = sorted(_submit(db, 23, batch="paged"))
    seen: list[str] = []
    cursor = None
    with db.transaction() as s:
        while True:
            page = queries.search_jobs(s, JobFilter(batch="paged"), limit=5, cursor=cursor)
            seen += [j.id for j in page.jobs]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    assert seen == expected and len(seen) == 23


def test_a_forged_cursor_is_refused_with_a_reason() -> None:
    with pytest.raises(queries.BadCursorError, match="not a cursor"):
        queries.decode_cursor("bm90LWpzb24")


def test_aggregates_give_mean_and_percentiles_like_percentile_cont(database_url: str) -> None:
    db = Database(database_url)
    bases = [1.0, 2.0, 2.5, 3.25, 4.0, 1.5, 3.0]
    ids = _submit(db, len(bases), batch="agg")
    for job_id, base in zip(ids, bases):
        _score(db, job_id, base)
    _submit(db, 2, batch="agg")  # queued: no scores, not counted
    with db.transaction() as s:
        [stats] = queries.aggregate(s, "batch", JobFilter(batch="agg"))
        by_model = queries.aggregate(s, "model", JobFilter(batch="agg"))
    assert stats.group == "agg" and stats.scored == len(bases) and not stats.stand_in
    ordered = sorted(bases)
    # percentile_cont(0.1) over 7 values: position 0.6 between the 1st and 2nd → 1.0 + 0.6 × 0.5
    assert stats.aspects["visual_quality"].p10 == pytest.approx(1.3, abs=1e-9)
    assert stats.aspects["visual_quality"].p50 == pytest.approx(statistics.median(ordered), abs=1e-9)
    assert stats.aspects["visual_quality"].p90 == pytest.approx(ordered[5] + 0.4 * (ordered[6] - ordered[5]))
    assert stats.aspects["factual_consistency"].mean == pytest.approx(statistics.fmean(bases) + 0.4, abs=1e-9)
    assert [g.group for g in by_model] == ["TIGER-Lab/VideoScore-v1.1"] and by_model[0].scored == len(bases)


def test_batch_summary_counts_progress_and_means(database_url: str) -> None:
    db = Database(database_url)
    a, b, c, _d = _submit(db, 4, batch="sum")
    _score(db, a, 2.0, stand_in=True)
    _score(db, b, 4.0)
    with db.transaction() as s:
        jobs.cancel_job(s, c)
    with db.transaction() as s:
        summary = queries.batch_summary(s, "sum")
        assert queries.batch_summary(s, "no-such-batch") is None
    assert summary is not None
    assert summary.counts == {"succeeded": 2, "cancelled": 1, "queued": 1}
    assert (summary.total, summary.finished, summary.progress) == (4, 3, 0.75)
    assert summary.stats.aspects["visual_quality"].mean == pytest.approx(3.0)
    assert summary.stats.stand_in is True


def test_dedupe_finds_earlier_scores_of_the_same_content_only(database_url: str) -> None:
    db = Database(database_url)
    [first] = _submit(db, 1, prompt="a dog")
    _score(db, first, 2.0, etag="e-dog", frames=48, total=100)
    [short] = _submit(db, 1, prompt="a short dog")
    _score(db, short, 3.0, etag="e-short", frames=20, total=20)  # fewer frames than asked: all were sampled
    model = "TIGER-Lab/VideoScore-v1.1"
    with db.transaction() as s:
        hit = queries.find_scored_duplicate(s, ContentKey("e-dog", "a dog", model, "rev-1", 48))
        assert hit is not None and hit.deduplicated_from == first and hit.scores["visual_quality"] == 2.0
        assert queries.find_scored_duplicate(s, ContentKey("e-dog", "a cat", model, "rev-1", 48)) is None
        assert queries.find_scored_duplicate(s, ContentKey("e-dog", "a dog", model, "rev-2", 48)) is None
        assert queries.find_scored_duplicate(s, ContentKey("e-dog", "a dog", model, "rev-1", 16)) is None
        assert queries.find_scored_duplicate(s, ContentKey("e-other", "a dog", model, "rev-1", 48)) is None
        # 20-frame video: a 16-frame model samples 16 (no match), a 48- or 64-frame one samples all 20 (match)
        assert queries.find_scored_duplicate(s, ContentKey("e-short", "a short dog", model, "rev-1", 16)) is None
        assert queries.find_scored_duplicate(s, ContentKey("e-short", "a short dog", model, "rev-1", 64)) is not None


def test_the_batch_webhook_is_claimed_once_and_only_when_the_batch_is_done(database_url: str) -> None:
    db = Database(database_url)
    a, b = _submit(db, 2, batch="hooked")
    with db.transaction() as s:
        queries.set_batch_webhook(s, "hooked", "http://127.0.0.1:9/hook")
    _score(db, a, 2.0)
    with db.transaction() as s:
        assert queries.claim_batch_webhook(s, "hooked") is None  # b is still queued
    _score(db, b, 2.0)
    claims: list[str | None] = []

    def claim() -> None:
        with db.transaction() as s:
            claims.append(queries.claim_batch_webhook(s, "hooked"))

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claims) == 6
    assert [c for c in claims if c is not None] == ["http://127.0.0.1:9/hook"]


def test_concurrent_submits_of_one_idempotency_key_make_one_job(database_url: str) -> None:
    db = Database(database_url)
    barrier = threading.Barrier(6)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            barrier.wait()
            with db.transaction() as s:
                [(job, created)] = jobs.insert_jobs(
                    s, [JobRequest(video_uri="s3://b/k.mp4", prompt="p", idempotency_key="same-key")], queue="q")
            results.append((job.id, created))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_a_key_repeated_in_one_submission_names_one_job(database_url: str) -> None:
    db = Database(database_url)
    request = JobRequest(video_uri="s3://b/k.mp4", prompt="p", idempotency_key="twice")
    with db.transaction() as s:
        (first, created1), (second, created2), (third, created3) = jobs.insert_jobs(
            s, [request, JobRequest(video_uri="s3://b/x.mp4", prompt="p"), request], queue="q")
    assert first.id == third.id != second.id
    assert (created1, created2, created3) == (True, True, False)


def test_marking_messages_sent_leaves_jobs_that_already_left_the_queue_alone(database_url: str) -> None:
    # in a bulk submit, workers can finish a chunk's first jobs before the producer marks the chunk sent
    db = Database(database_url)
    done, waiting = _submit(db, 2)
    _score(db, done, 2.0)
    with db.transaction() as s:
        jobs.mark_enqueued(s, [done, waiting])
    with db.transaction() as s:
        finished, queued = (s.get(Job, job_id) for job_id in (done, waiting))
        assert finished is not None and queued is not None
        assert finished.enqueued_at is None and queued.enqueued_at is not None
