"""The REST API as a client sees it: a real uvicorn process over HTTP, on SQLite and PostgreSQL, with the
suite's real Redis. Auth, validation errors that name the field, size limits, submit one or many, keyset
pagination, idempotency (also under concurrent submits), cancel, batches, filters, aggregates, webhooks."""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import timedelta

import httpx
import pytest
import redis

from tests.api.conftest import WEBHOOK_SECRET, Api
from tests.api.servers import WebhookReceiver
from videoscore.core.variants import ASPECTS
from videoscore.core.webhooks import verify_signature
from videoscore.db import jobs as job_queries
from videoscore.db.records import ScoreResult
from videoscore.db.session import Database


def _job(**fields: object) -> dict[str, object]:
    return {"video_uri": f"s3://videos/{uuid.uuid4().hex}.mp4", "prompt": "a cat surfing", **fields}


def _batch() -> str:
    return f"b-{uuid.uuid4().hex[:10]}"


def _score(api: Api, job_id: str, base: float) -> None:
    """Play a worker: claim and complete the job in the database with known scores."""
    db = Database(api.settings.database_url)
    result = ScoreResult(
        scores={a: base + i / 10 for i, a in enumerate(ASPECTS)}, model_revision="r", stand_in_model=True,
        num_frames=48, frame_indices=list(range(48)), video_etag="e", video_bytes=1, video_total_frames=48,
        video_fps=24.0, video_duration_s=2.0, video_width=64, video_height=48, download_s=0.0, decode_s=0.0,
        preprocess_s=0.0, forward_s=0.0)
    with db.transaction() as s:
        claimed = job_queries.claim_job(s, job_id, worker_host="test", lease=timedelta(seconds=60))
        assert claimed is not None
        job_queries.complete_job(s, job_id, result, worker_host="test", attempt=claimed.attempts)
    db.dispose()


# --- health and auth ----------------------------------------------------------------------------------------


def test_health_needs_no_token_and_readiness_checks_database_and_broker(api: Api) -> None:
    with api.process.client(token=None) as http:
        assert http.get("/healthz").json() == {"status": "ok", "checks": {}}
        ready = http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_calls_without_a_valid_bearer_token_are_refused_with_a_structured_401(api: Api) -> None:
    with api.process.client(token=None) as anonymous, api.process.client(token="wrong") as wrong:
        missing = anonymous.get("/jobs")
        bad = wrong.post("/jobs", json=_job())
        openapi = anonymous.get("/openapi.json")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    assert missing.json()["error"]["code"] == "unauthorized" and "bearer token" in missing.json()["error"]["message"]
    assert bad.status_code == 401 and bad.json()["error"]["message"] == "invalid bearer token"
    assert openapi.status_code == 200 and "/jobs" in openapi.json()["paths"]


# --- submitting ---------------------------------------------------------------------------------------------


def test_one_job_is_created_queued_and_sent_to_its_queue(api: Api) -> None:
    with api.process.client() as http:
        created = http.post("/jobs", json=_job(priority="high", tags={"run": "7"}))
        assert created.status_code == 201, created.text
        job = created.json()
        fetched = http.get(f"/jobs/{job['id']}").json()
    assert fetched["status"] == "queued" and fetched["priority"] == "high" and fetched["tags"] == {"run": "7"}
    assert fetched["queue"] == f"{api.settings.queue}.high" and fetched["scores"] is None
    broker = redis.Redis.from_url(api.settings.broker_url)
    messages = [json.loads(m) for m in broker.lrange(f"{api.settings.queue}.high", 0, -1)]
    assert any(m["headers"]["argsrepr"] == f"['{job['id']}']" for m in messages)


def test_many_jobs_in_one_call_are_validated_all_or_nothing_with_each_bad_field_named(api: Api) -> None:
    batch = _batch()
    bad = [_job(batch=batch), _job(batch=batch, video_uri="http://example.com/a.mp4"),
           _job(batch=batch, prompt="  "), _job(batch=batch, model="nobody/NoSuchModel"),
           _job(batch=batch, colour="blue")]
    with api.process.client() as http:
        refused = http.post("/jobs", json=bad)
        nothing = http.get("/jobs", params={"batch": batch}).json()["jobs"]
        accepted = http.post("/jobs", json=[_job(batch=batch) for _ in range(3)])
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "validation_error"
    assert [f["field"] for f in error["fields"]] == ["jobs[1].video_uri", "jobs[2].prompt", "jobs[3].model",
                                                     "jobs[4].colour"]
    assert "s3:// or file://" in error["fields"][0]["message"] and "unknown model" in error["fields"][2]["message"]
    assert nothing == []
    assert accepted.status_code == 201 and accepted.json()["created"] == 3 and len(accepted.json()["jobs"]) == 3


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"prompt": "a cat"}, "video_uri", "Field required"),
        ({"video_uri": "s3://b/k.mp4", "prompt": "x" * 2001}, "prompt", "limit is 2000"),
        ({"video_uri": "s3://b/k.mp4", "prompt": "a\u0000b"}, "prompt", "NUL"),
        ({"video_uri": "s3://b/k.mp4", "prompt": "p", "priority": "urgent"}, "priority", "'high'"),
        ({"video_uri": "s3://b/k.mp4", "prompt": "p", "tags": {"k": 5}}, "tags.k", "string"),
    ],
)
def test_a_bad_job_is_refused_naming_its_field(api: Api, body: dict[str, object], field: str, fragment: str) -> None:
    with api.process.client() as http:
        response = http.post("/jobs", json=body)
    assert response.status_code == 422
    [problem] = response.json()["error"]["fields"]
    assert problem["field"] == field and fragment in problem["message"]


def test_bad_query_parameters_and_bodies_get_structured_errors(api: Api) -> None:
    with api.process.client() as http:
        limit = http.get("/jobs", params={"limit": 0})
        status = http.get("/jobs", params={"status": "sleeping"})
        cursor = http.get("/jobs", params={"cursor": "bm90LWEtY3Vyc29y"})
        not_json = http.post("/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
        too_big = http.post("/jobs", json=[_job(prompt="x" * 1000) for _ in range(300)])
        too_many = http.post("/jobs", json=[{"video_uri": "s3://b/k", "prompt": "p"}] * 501)
        unknown = http.get("/jobs/0123456789abcdef0123456789abcdef")
    assert limit.status_code == 422 and limit.json()["error"]["fields"][0]["field"] == "query.limit"
    assert status.status_code == 422 and status.json()["error"]["fields"][0]["field"] == "query.status"
    assert cursor.status_code == 400 and cursor.json()["error"]["code"] == "bad_cursor"
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["error"]["message"]
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "body_too_large"
    assert too_many.status_code == 413 and "limit is 500" in too_many.json()["error"]["message"]
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_the_same_idempotency_key_returns_the_same_job(api: Api) -> None:
    key = f"idem-{uuid.uuid4().hex}"
    job = _job(idempotency_key=key)
    with api.process.client() as http:
        first = http.post("/jobs", json=job)
        again = http.post("/jobs", json=job)
        in_many = http.post("/jobs", json=[job, _job()])
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] == in_many.json()["jobs"][0]["id"]
    assert in_many.json()["created"] == 1


def test_concurrent_submits_with_one_idempotency_key_all_get_one_job(api: Api) -> None:
    job = _job(idempotency_key=f"race-{uuid.uuid4().hex}")
    barrier = threading.Barrier(8)
    answers: list[httpx.Response] = []

    def submit() -> None:
        with api.process.client() as http:
            barrier.wait()
            answers.append(http.post("/jobs", json=job))

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201]
    assert len({a.json()["id"] for a in answers}) == 1


# --- reading -------------------------------------------------------------------------------------------------


def test_pages_follow_the_cursor_through_every_job_once(api: Api) -> None:
    batch = _batch()
    with api.process.client() as http:
        ids = [j["id"] for j in http.post("/jobs", json=[_job(batch=batch) for _ in range(12)]).json()["jobs"]]
        ids += [j["id"] for j in http.post("/jobs", json=[_job(batch=batch) for _ in range(13)]).json()["jobs"]]
        seen: list[str] = []
        pages = 0
        params: dict[str, object] = {"batch": batch, "limit": 10}
        while True:
            page = http.get("/jobs", params=params).json()
            pages += 1
            seen += [j["id"] for j in page["jobs"]]
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
    assert pages == 3 and len(seen) == 25 and sorted(seen) == sorted(ids) and len(set(seen)) == 25
    assert seen[:12] == sorted(ids[:12]) and seen[12:] == sorted(ids[12:])  # creation order, then id


def test_filters_by_tag_status_and_score_threshold(api: Api) -> None:
    batch = _batch()
    with api.process.client() as http:
        jobs = http.post("/jobs", json=[_job(batch=batch, tags={"arm": arm}) for arm in ("a", "a", "b")]).json()
        high, low, other = (j["id"] for j in jobs["jobs"])
        _score(api, high, 3.0)
        _score(api, low, 1.0)

        def ids(**params: object) -> set[str]:
            return {j["id"] for j in http.get("/jobs", params={"batch": batch, **params}).json()["jobs"]}

        assert ids(tag="arm:a") == {high, low}
        assert ids(status="queued") == {other}
        assert ids(min_text_to_video_alignment=2.5) == {high}
        assert ids(max_visual_quality=2.0, tag="arm:a") == {low}
        assert ids(since="2000-01-01T00:00:00Z", until="2000-01-02T00:00:00Z") == set()
        aggregates = http.get("/aggregates", params={"batch": batch, "group_by": "batch"}).json()
    [group] = aggregates["groups"]
    assert group["group"] == batch and group["scored"] == 2 and group["stand_in_model"] is True
    assert group["aspects"]["visual_quality"]["mean"] == pytest.approx(2.0)
    assert group["aspects"]["visual_quality"]["p90"] == pytest.approx(2.8)


def test_a_batch_shows_counts_progress_and_mean_scores(api: Api) -> None:
    batch = _batch()
    with api.process.client() as http:
        a, b, c = (j["id"] for j in http.post("/jobs", json=[_job(batch=batch) for _ in range(3)]).json()["jobs"])
        _score(api, a, 2.0)
        _score(api, b, 3.0)
        summary = http.get(f"/batches/{batch}").json()
        missing = http.get("/batches/no-such-batch")
    assert summary["counts"] == {"succeeded": 2, "queued": 1} and summary["total"] == 3
    assert summary["progress"] == pytest.approx(2 / 3)
    assert summary["mean_scores"]["visual_quality"] == pytest.approx(2.5)
    assert missing.status_code == 404


def test_only_a_job_no_worker_started_can_be_cancelled(api: Api) -> None:
    with api.process.client() as http:
        waiting, done = (j["id"] for j in http.post("/jobs", json=[_job(), _job()]).json()["jobs"])
        _score(api, done, 2.0)
        cancelled = http.delete(f"/jobs/{waiting}")
        again = http.delete(f"/jobs/{waiting}")
        finished = http.delete(f"/jobs/{done}")
        status = http.get(f"/jobs/{waiting}").json()["status"]
    assert cancelled.json() == {"id": waiting, "status": "cancelled"} and status == "cancelled"
    assert again.status_code == 409 and "cancelled" in again.json()["error"]["message"]
    assert finished.status_code == 409 and finished.json()["error"]["code"] == "not_cancellable"


# --- webhooks ------------------------------------------------------------------------------------------------


def test_the_batch_webhook_fires_once_signed_and_retries_until_delivered(api: Api) -> None:
    receiver = WebhookReceiver(fail_first=2)
    batch = _batch()
    try:
        with api.process.client() as http:
            a, b = (j["id"] for j in http.post("/jobs", json=[_job(batch=batch), _job(batch=batch)]).json()["jobs"])
            refused = http.post(f"/batches/{batch}/webhook", json={"url": "ftp://example.com/x"})
            assert http.post(f"/batches/{batch}/webhook", json={"url": receiver.url}).status_code == 200
            _score(api, a, 2.0)
            http.delete(f"/jobs/{b}")  # the last unfinished job: this call completes the batch
            received = receiver.wait_for(3)
            http.delete(f"/jobs/{a}")  # a no-op on a finished batch: no second webhook
            deadline = time.monotonic() + 10
            while (summary := http.get(f"/batches/{batch}").json())["webhook"]["delivered_at"] is None:
                assert time.monotonic() < deadline, summary
                time.sleep(0.05)
    finally:
        receiver.close()
    assert refused.status_code == 422 and refused.json()["error"]["fields"][0]["field"] == "body.url"
    assert receiver.answers == [500, 500, 204] and len(received) == 3
    delivered = received[-1]
    delivery_id = verify_signature(WEBHOOK_SECRET, delivered.headers, delivered.body)
    assert delivery_id == delivered.headers["x-videoscore-delivery"]
    assert {r.headers["x-videoscore-delivery"] for r in received} == {delivery_id}  # one delivery, retried
    assert delivered.headers["x-videoscore-event"] == "batch.completed"
    payload = delivered.json()
    assert payload["batch"] == batch and payload["counts"] == {"succeeded": 1, "cancelled": 1}
    assert summary["webhook"]["attempts"] == 3 and summary["webhook"]["delivered_at"] is not None
