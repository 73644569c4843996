"""Issue 11, the API and webhook items: what an attacker holding a valid API token tried, against a live API.

The API runs as a real uvicorn process on loopback (tests.api.servers), on SQLite and PostgreSQL, with the
defaults an operator gets: webhooks to public addresses only. Each attack asserts its refusal and that nothing
was fetched or stored: a listener on 127.0.0.1 records every connection, and must see none. The receivers
that do get webhooks here are reached through the on-prem settings (an allowlist and private addresses), as an
operator would open them. Signature checks and address pinning run in process against the same listeners.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import WEBHOOK_SECRET, Api, api_settings
from tests.api.servers import TOKEN, ApiProcess, WebhookReceiver
from videoscore.core.errors import IdempotencyConflictError
from videoscore.core.jobspec import MAX_VIDEO_URI_CHARS
from videoscore.core.webhooks import (
    CONNECTION_ERROR,
    REFUSED_ERROR,
    IPAddress,
    WebhookPolicy,
    WebhookSignatureError,
    deliver,
    verify_signature,
)
from videoscore.db import queries
from videoscore.db.migrate import upgrade
from videoscore.db.session import Database
from videoscore.producer.client import Client
from videoscore.worker.testing.servers import RedisServer, free_port

OTHER = "other-token-9a2e"  # a second valid token: the attacker's, when TOKEN is the victim's
MODEL = "TIGER-Lab/VideoScore-v1.1"
PUBLIC_RECEIVER = "http://93.184.216.34/hooks/vs"  # a public address; no batch registered to it ever completes


def _job(**fields: object) -> dict[str, object]:
    return {"video_uri": f"s3://videos/{uuid.uuid4().hex}.mp4", "prompt": "a cat surfing", "model": MODEL, **fields}


def _batch() -> str:
    return f"b-{uuid.uuid4().hex[:10]}"


class Listener:
    """A TCP listener on 127.0.0.1 that records every connection and its first bytes, and answers `answer`."""

    def __init__(self, answer: bytes = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n") -> None:
        self.received: list[bytes] = []
        received = self.received

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(1.0)
                data = b""
                try:
                    while b"\r\n\r\n" not in data and len(data) < 65536:
                        chunk = self.request.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                received.append(data)
                try:
                    self.request.sendall(answer)
                except OSError:
                    pass

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    recorder = Listener()
    yield recorder
    recorder.close()


def _bad_models(root: Path) -> None:
    """Checkpoint folders whose videoscore.json is not JSON, or holds a list: each was a 500."""
    for name, marker in (("not-json", "{variant: oops"), ("a-list", json.dumps([MODEL]))):
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "videoscore.json").write_text(marker)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        redis_server: RedisServer) -> Iterator[Api]:
    """The API as shipped: webhooks to public addresses only, /docs off; two tokens; access log on."""
    workdir = tmp_path_factory.mktemp(f"attacks-{request.param}")
    if request.param == "sqlite":
        database_url = f"sqlite:///{workdir / 'videoscore.db'}"
    else:
        database_url = request.getfixturevalue("postgres_server").create_database()
    upgrade(database_url)
    _bad_models(workdir / "models")
    settings = api_settings(database_url, redis_server.url, api_tokens=[TOKEN, OTHER],
                            webhook_allowed_hosts=[], webhook_allow_private_addresses=False,
                            api_max_body_bytes=4_000_000, model_roots=[str(workdir / "models")])
    process = ApiProcess(settings, workdir / "api.log", log_level="info").start()
    try:
        yield Api(process, settings)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def onprem_api(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Api]:
    """An operator's on-prem API: receivers on 127.0.0.1 allowed by the allowlist and private addresses."""
    workdir = tmp_path_factory.mktemp("attacks-onprem")
    database_url = f"sqlite:///{workdir / 'videoscore.db'}"
    upgrade(database_url)
    settings = api_settings(database_url, redis_server.url, webhook_allowed_hosts=["127.0.0.1"],
                            webhook_allow_private_addresses=True)
    process = ApiProcess(settings, workdir / "api.log").start()
    try:
        yield Api(process, settings)
    finally:
        process.stop()


def _complete(http: httpx.Client, batch: str) -> None:
    """Submit one job to `batch` and cancel it: the cancel completes the batch and fires its webhook, if any."""
    job_id = http.post("/jobs", json=_job(batch=batch)).json()["id"]
    assert http.delete(f"/jobs/{job_id}").status_code == 200


def _wait_for_webhook(http: httpx.Client, batch: str, timeout_s: float = 30) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        hook = http.get(f"/batches/{batch}/webhook").json()
        if hook.get("last_error") is not None or hook.get("delivered_at") is not None:
            return hook
        assert time.monotonic() < deadline, hook
        time.sleep(0.1)


# --- 4. webhooks: server-side request forgery -------------------------------------------------------------


def test_webhooks_to_internal_addresses_are_refused_and_nothing_is_stored_or_fetched(
        api: Api, listener: Listener) -> None:
    port = listener.port
    urls = [
        f"http://127.0.0.1:{port}/", "http://127.0.0.1:6379/", f"http://0x7f000001:{port}/",
        f"http://2130706433:{port}/", f"http://0177.0.0.1:{port}/", f"http://127.1:{port}/",
        f"http://[::1]:{port}/", f"http://[::ffff:127.0.0.1]:{port}/", f"http://[::ffff:7f00:1]:{port}/",
        f"http://localhost:{port}/", f"http://１２７。０。０。１:{port}/", f"http://0.0.0.0:{port}/",
        f"http://[::]:{port}/", "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://metadata.google.internal/computeMetadata/v1/", "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/", "http://10.0.0.1/", "http://192.168.1.1/",
        "http://172.16.0.1/", "http://100.64.0.1/", "http://[fc00::1]/", "http://[fe80::1]/",
        "http://224.0.0.1/", f"http://[64:ff9b::7f00:1]:{port}/", f"http://[2002:7f00:1::]:{port}/",
        "http://0x5db8d822/", f"http://user:pw@127.0.0.1:{port}/", "gopher://127.0.0.1:6379/_INFO",
    ]
    batch = _batch()
    with api.process.client() as http:
        answers = {url: http.post(f"/batches/{batch}/webhook", json={"url": url}) for url in urls}
        _complete(http, batch)
        time.sleep(1.0)  # a delivery, were one registered, would have started by now
        hook = http.get(f"/batches/{batch}/webhook")
    for url, answer in answers.items():
        assert answer.status_code == 422, (url, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "validation_error" and error["fields"][0]["field"] == "body.url", url
    assert "loopback" in answers[f"http://0x7f000001:{port}/"].json()["error"]["message"]
    assert "metadata" in answers["http://169.254.169.254/latest/meta-data/iam/security-credentials/"].text
    assert "spells the address 93.184.216.34 unusually" in answers["http://0x5db8d822/"].text
    assert hook.status_code == 404  # nothing was stored
    db = Database(api.settings.database_url)
    with db.transaction() as s:
        stored = queries.batch_webhook(s, batch)
    db.dispose()
    assert stored is None or stored.url is None
    assert listener.received == []


def test_a_stored_webhook_to_an_internal_address_is_refused_again_at_send(api: Api, listener: Listener) -> None:
    # A URL stored before this check existed (or a name whose DNS answer changed since): refused when sent.
    batch = _batch()
    with api.process.client() as http:
        job_id = http.post("/jobs", json=_job(batch=batch)).json()["id"]  # the batch is TOKEN's
        db = Database(api.settings.database_url)
        with db.transaction() as s:
            queries.set_batch_webhook(s, batch, f"http://127.0.0.1:{listener.port}/steal")
        db.dispose()
        http.delete(f"/jobs/{job_id}")
        hook = _wait_for_webhook(http, batch)
    assert hook["last_error"] == REFUSED_ERROR and hook["attempts"] == 1 and hook["delivered_at"] is None
    assert listener.received == []


def test_redirects_are_not_followed(onprem_api: Api, listener: Listener) -> None:
    redirector = Listener(f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{listener.port}/internal\r\n"
                          "Content-Length: 0\r\n\r\n".encode())
    batch = _batch()
    try:
        with onprem_api.process.client() as http:
            registered = http.post(f"/batches/{batch}/webhook", json={"url": f"http://127.0.0.1:{redirector.port}/"})
            _complete(http, batch)
            hook = _wait_for_webhook(http, batch)
    finally:
        redirector.close()
    assert registered.status_code == 200
    assert hook["last_error"] == "HTTP 302" and hook["attempts"] == onprem_api.settings.webhook_max_attempts
    assert len(redirector.received) == hook["attempts"]
    assert listener.received == []  # the Location was never fetched


def test_last_error_does_not_tell_an_open_port_from_a_closed_one(onprem_api: Api, redis_server: RedisServer) -> None:
    closed_port = free_port()  # bound and released: nothing listens there
    redis_port = int(redis_server.url.rsplit(":", 1)[1].split("/")[0])  # open, and not HTTP
    batches = {"closed": _batch(), "open": _batch()}
    with onprem_api.process.client() as http:
        for kind, port in (("closed", closed_port), ("open", redis_port)):
            url = f"http://127.0.0.1:{port}/"
            assert http.post(f"/batches/{batches[kind]}/webhook", json={"url": url}).status_code == 200
            _complete(http, batches[kind])
        hooks = {kind: _wait_for_webhook(http, batch) for kind, batch in batches.items()}
    assert hooks["closed"]["last_error"] == hooks["open"]["last_error"] == CONNECTION_ERROR
    assert hooks["closed"]["attempts"] == hooks["open"]["attempts"]


# --- 4. webhooks: whose batch it is ------------------------------------------------------------------------


def test_another_token_can_neither_read_nor_replace_nor_join_a_batchs_webhook(api: Api) -> None:
    batch = _batch()
    with api.process.client(TOKEN) as owner, api.process.client(OTHER) as attacker:
        assert owner.post("/jobs", json=_job(batch=batch)).status_code == 201
        assert owner.post(f"/batches/{batch}/webhook", json={"url": PUBLIC_RECEIVER}).status_code == 200
        seen = attacker.get(f"/batches/{batch}").json()
        details = attacker.get(f"/batches/{batch}/webhook")
        replaced = attacker.post(f"/batches/{batch}/webhook", json={"url": "http://93.184.216.35/evil"})
        joined = attacker.post("/jobs", json=_job(batch=batch))
        mine = owner.get(f"/batches/{batch}/webhook").json()
        total = owner.get(f"/batches/{batch}").json()["total"]
        unknown = attacker.get(f"/batches/{_batch()}/webhook")
    assert seen["total"] == 1 and seen["webhook"] == {"url": None, "sent_at": None, "delivered_at": None,
                                                      "attempts": 0, "last_error": None}
    assert details.status_code == unknown.status_code == 404  # not "forbidden": nothing says a webhook exists
    assert details.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"
    assert replaced.status_code == 404
    assert joined.status_code == 409 and joined.json()["error"]["code"] == "batch_not_owned"
    assert [f["field"] for f in joined.json()["error"]["fields"]] == ["batch"]
    assert mine["url"] == PUBLIC_RECEIVER and total == 1  # nothing replaced, nothing joined


def test_claiming_a_batch_name_first_wins_nothing(api: Api) -> None:
    name = _batch()
    with api.process.client(OTHER) as attacker, api.process.client(TOKEN) as victim:
        claimed = attacker.post(f"/batches/{name}/webhook", json={"url": PUBLIC_RECEIVER})
        submitted = victim.post("/jobs", json=[_job(batch=name), _job(batch=name)])
        batch = victim.get(f"/batches/{name}")
    assert claimed.status_code == 200  # a new name: the attacker's own batch now
    assert submitted.status_code == 409 and submitted.json()["error"]["fields"][0]["field"] == "jobs[0].batch"
    assert batch.status_code == 404  # none of the victim's jobs went into the attacker's batch


def test_batches_made_with_the_sdk_are_the_operators(api: Api) -> None:
    name = _batch()
    with Client(api.settings) as operator:
        operator.submit(f"s3://videos/{uuid.uuid4().hex}.mp4", "a cat", model=MODEL, batch=name)
        with api.process.client(OTHER) as token:
            registered = token.post(f"/batches/{name}/webhook", json={"url": PUBLIC_RECEIVER})
            joined = token.post("/jobs", json=_job(batch=name))
            operator.set_batch_webhook(name, "http://93.184.216.34/operator")
            details = token.get(f"/batches/{name}/webhook")
            seen = token.get(f"/batches/{name}").json()
        summary = operator.batch(name)
    assert registered.status_code == 404 and joined.status_code == 409 and details.status_code == 404
    assert seen["webhook"]["url"] is None and seen["total"] == 1
    assert summary is not None and summary.webhook_url == "http://93.184.216.34/operator"
    assert summary.owner_token_hash is None


# --- 4. webhooks: signatures and pinning (in process) ------------------------------------------------------


def test_a_captured_delivery_cannot_be_replayed_or_altered() -> None:
    receiver = WebhookReceiver()
    body = json.dumps({"event": "batch.completed", "batch": "b", "counts": {"succeeded": 1}}).encode()
    try:
        outcome = deliver(receiver.url, body, secret=WEBHOOK_SECRET, max_attempts=1, timeout_s=5,
                          policy=WebhookPolicy(allowed_hosts=("127.0.0.1",), allow_private=True))
        [captured] = receiver.wait_for(1)
    finally:
        receiver.close()
    headers = captured.headers
    assert outcome.error is None
    assert headers["x-videoscore-signature"].startswith(f"t={headers['x-videoscore-timestamp']},v1=")
    assert verify_signature(WEBHOOK_SECRET, headers, captured.body) == headers["x-videoscore-delivery"]
    body = captured.body
    with pytest.raises(WebhookSignatureError, match="signed 301s ago"):  # replayed five minutes later
        verify_signature(WEBHOOK_SECRET, headers, body, now=int(headers["x-videoscore-timestamp"]) + 301)
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify_signature(WEBHOOK_SECRET, headers, body.replace(b'"succeeded": 1', b'"succeeded": 9'))
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify_signature(WEBHOOK_SECRET, {**headers, "x-videoscore-delivery": "x" * 32}, body)
    with pytest.raises(WebhookSignatureError, match="signed timestamp"):
        verify_signature(WEBHOOK_SECRET, {**headers, "x-videoscore-timestamp": "1"}, body)
    fresh = str(int(headers["x-videoscore-timestamp"]) + 600)  # a replay restamped later, under the old signature
    forged = {**headers, "x-videoscore-timestamp": fresh,
              "x-videoscore-signature": f"t={fresh},v1=" + headers["x-videoscore-signature"].split("v1=")[1]}
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify_signature(WEBHOOK_SECRET, forged, body, now=int(fresh))
    with pytest.raises(WebhookSignatureError, match="does not match"):
        verify_signature("another-secret", headers, body)
    with pytest.raises(WebhookSignatureError, match="missing"):
        verify_signature(WEBHOOK_SECRET, {"x-videoscore-delivery": headers["x-videoscore-delivery"]}, body)


def test_a_send_connects_to_the_address_it_checked_and_refuses_a_rebound_name(listener: Listener) -> None:
    url = f"http://hooks.example.test:{listener.port}/vs"
    lookups: list[str] = []

    def rebinding(host: str, port: int) -> list[IPAddress]:  # public when registered; loopback when sent
        lookups.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    refused = deliver(url, b"{}", secret=WEBHOOK_SECRET, max_attempts=3, timeout_s=5, sleep=lambda _s: None,
                      policy=WebhookPolicy(), resolve=rebinding)
    assert refused.error == REFUSED_ERROR and refused.attempts == 1 and listener.received == []
    pinned = deliver(url, b"{}", secret=WEBHOOK_SECRET, max_attempts=1, timeout_s=5, resolve=rebinding,
                     policy=WebhookPolicy(allowed_hosts=("hooks.example.test",), allow_private=True))
    assert pinned.error is None and lookups == ["hooks.example.test"] * 2
    [request] = listener.received  # the checked address was the one connected to, named by its host
    assert f"Host: hooks.example.test:{listener.port}".encode() in request


# --- 6. no 500s ------------------------------------------------------------------------------------------


def test_a_checkpoint_whose_videoscore_json_is_not_an_object_is_a_clear_422(api: Api) -> None:
    root = api.process.log_path.parent / "models"  # inside the model roots: see the api fixture
    batch = _batch()
    with api.process.client() as http:
        answers = {name: http.post("/jobs", json=_job(model=str(root / name), batch=batch))
                   for name in ("not-json", "a-list")}
        stored = http.get("/jobs", params={"batch": batch}).json()["jobs"]
    for name, answer in answers.items():
        assert answer.status_code == 422, (name, answer.text)
        assert answer.json()["error"]["fields"][0]["field"] == "model", answer.text
    assert stored == []
    assert "Traceback" not in api.process.log()


def test_video_uri_and_model_have_length_limits(api: Api) -> None:
    batch = _batch()
    longest = "s3://videos/" + "k" * (MAX_VIDEO_URI_CHARS - len("s3://videos/"))
    with api.process.client() as http:
        huge_uri = http.post("/jobs", json=_job(video_uri="s3://videos/" + "k" * 1_000_008, batch=batch))
        huge_model = http.post("/jobs", json=_job(model="m" * 1_000_020, batch=batch))
        just_over = http.post("/jobs", json=_job(video_uri=longest + "k", batch=batch))
        at_limit = http.post("/jobs", json=_job(video_uri=longest, batch=batch))
        stored = http.get("/jobs", params={"batch": batch}).json()["jobs"]
    for answer, field in ((huge_uri, "video_uri"), (huge_model, "model"), (just_over, "video_uri")):
        assert answer.status_code == 422, answer.text[:300]
        assert answer.json()["error"]["fields"][0]["field"] == field
        assert len(answer.content) < 20_000  # the refusal does not echo a megabyte back
    assert at_limit.status_code == 201
    assert [j["video_uri"] for j in stored] == [longest]


# --- 7. idempotency ---------------------------------------------------------------------------------------


def test_reusing_a_key_for_another_job_is_a_409_naming_the_fields_that_differ(api: Api) -> None:
    key = f"idem-{uuid.uuid4().hex}"
    job = _job(idempotency_key=key)
    twice = _job(idempotency_key=f"dup-{key}")
    with api.process.client() as http:
        first = http.post("/jobs", json=job)
        same = http.post("/jobs", json=job)
        forced = http.post("/jobs", json={**job, "force": True})
        reworded = http.post("/jobs", json={**job, "prompt": "a dog", "priority": "high"})
        in_many = http.post("/jobs", json=[_job(), {**job, "force": True}])
        within = http.post("/jobs", json=[twice, {**twice, "video_uri": "s3://videos/other.mp4"}])
        stored = http.get("/jobs", params={"limit": 1000}).json()["jobs"]
    assert (first.status_code, same.status_code) == (201, 200) and same.json()["id"] == first.json()["id"]
    assert forced.status_code == 409 and forced.json()["error"]["code"] == "idempotency_conflict"
    assert [f["field"] for f in forced.json()["error"]["fields"]] == ["force"]
    assert first.json()["id"] in forced.json()["error"]["message"]
    assert [f["field"] for f in reworded.json()["error"]["fields"]] == ["priority", "prompt"]
    assert in_many.status_code == 409 and [f["field"] for f in in_many.json()["error"]["fields"]] == ["jobs[1].force"]
    assert within.status_code == 409 and [f["field"] for f in within.json()["error"]["fields"]] == [
        "jobs[1].video_uri"]
    keys = [j["idempotency_key"] for j in stored]
    assert len(stored) < 1000 and keys.count(key) == 1 and f"dup-{key}" not in keys  # nothing else was stored


def test_keys_that_read_the_same_name_one_job(api: Api) -> None:
    stem = uuid.uuid4().hex[:8]
    job = _job(prompt="a café at night")
    spellings = [f"café-{stem}",  # NFC
                 f"cafe\u0301-{stem}",  # NFD
                 f"café-{stem} ",  # trailing space
                 f"\u200bcafé-\u200d{stem}\ufeff",  # zero-width characters
                 "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in f"café-{stem}")]  # fullwidth
    with api.process.client() as http:
        answers = [http.post("/jobs", json={**job, "idempotency_key": key}) for key in spellings]
        other_case = http.post("/jobs", json={**job, "idempotency_key": f"CAFÉ-{stem}"})
    assert [a.status_code for a in answers] == [201, 200, 200, 200, 200]
    assert {a.json()["id"] for a in answers} == {answers[0].json()["id"]}
    assert answers[0].json()["idempotency_key"] == f"café-{stem}"
    assert other_case.status_code == 201  # keys are case-sensitive: the documented rule


def test_the_sdk_applies_the_same_rule_and_raises_a_clear_conflict(api: Api) -> None:
    job = _job(idempotency_key=f"sdk-{uuid.uuid4().hex}")
    with api.process.client() as http:
        created = http.post("/jobs", json=job).json()
    fields = {k: v for k, v in job.items() if k not in ("video_uri", "prompt")}
    with Client(api.settings) as sdk:
        same = sdk.submit(str(job["video_uri"]), str(job["prompt"]),
                          **{**fields, "idempotency_key": f"\u200b{job['idempotency_key']} "})
        with pytest.raises(IdempotencyConflictError) as conflict:
            sdk.submit(str(job["video_uri"]), str(job["prompt"]), **{**fields, "force": True})
    assert same.id == created["id"]
    [named] = conflict.value.conflicts
    assert named.fields == ("force",) and named.job_id == created["id"]
    assert "force" in conflict.value.message and conflict.value.kind == "idempotency_conflict"


def test_a_conflict_in_a_later_chunk_submits_nothing(api: Api) -> None:
    key = f"chunked-{uuid.uuid4().hex}"
    batch = _batch()
    with Client(api.settings) as sdk:
        first = sdk.submit(f"s3://videos/{key}.mp4", "a cat", model=MODEL, idempotency_key=key)
        jobs = [_job(batch=batch) for _ in range(3)]
        jobs.append({"video_uri": first.video_uri, "prompt": "a cat", "model": MODEL, "idempotency_key": key,
                     "force": True})
        with pytest.raises(IdempotencyConflictError) as conflict:
            sdk.submit_many(jobs, chunk_size=2)
        assert sdk.batch(batch) is None  # the first chunk, free of conflicts, was not committed either
    [named] = conflict.value.conflicts
    assert (named.position, named.job_id, named.fields) == (3, first.id, ("force",))


# --- 9. exposure ------------------------------------------------------------------------------------------


def test_tokens_in_query_strings_never_reach_the_access_log(api: Api) -> None:
    secret = f"tok-{uuid.uuid4().hex}"
    with api.process.client(token=None) as anonymous, api.process.client() as http:
        refused = anonymous.get("/jobs", params={"access_token": secret, "limit": 1})
        accepted = http.get("/jobs", params={"token": secret + "x", "limit": 2})
        signed = http.get("/jobs", params={"limit": 3, "api_key": secret + "y"})
    deadline = time.monotonic() + 5
    while "limit=3" not in api.process.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = api.process.log()
    assert refused.status_code == 401  # a query token is no way in either
    assert accepted.status_code == signed.status_code == 200
    assert "access_token=[redacted]&limit=1" in log and "token=[redacted]&limit=2" in log
    assert "limit=3&api_key=[redacted]" in log
    assert secret not in log


def test_the_docs_pages_are_off_and_the_schema_needs_no_third_party_asset(api: Api) -> None:
    with api.process.client(token=None) as http:
        pages = {path: http.get(path).status_code for path in ("/docs", "/redoc", "/docs/oauth2-redirect")}
        schema = http.get("/openapi.json")
    assert pages == {"/docs": 404, "/redoc": 404, "/docs/oauth2-redirect": 404}
    assert schema.status_code == 200 and "/batches/{batch}/webhook" in schema.json()["paths"]
    assert "cdn.jsdelivr.net" not in schema.text


def test_the_queue_load_exporter_binds_loopback_by_default(onprem_api: Api, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOSCORE_")}
    env["VIDEOSCORE_DATABASE_URL"] = onprem_api.settings.database_url
    exporter = subprocess.Popen([sys.executable, "-m", "videoscore", "fleet", "--serve", str(port)], env=env,
                                stdout=(tmp_path / "exporter.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                scraped = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                break
            except httpx.HTTPError:
                assert exporter.poll() is None and time.monotonic() < deadline, (tmp_path / "exporter.log").read_text()
                time.sleep(0.2)
        listening = _listening_addresses(port)
    finally:
        os.kill(exporter.pid, signal.SIGTERM)
        exporter.wait(timeout=10)
    assert scraped.status_code == 200 and "videoscore_queue_load" in scraped.text
    assert listening == {"127.0.0.1"}


def _listening_addresses(port: int) -> set[str]:
    """The addresses TCP sockets listen on at `port`, from /proc/net/tcp and tcp6 (state 0A: LISTEN)."""
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / table
        for line in path.read_text().splitlines()[1:] if path.exists() else []:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.split(":")
            if state == "0A" and int(local_port, 16) == port:
                raw = bytes.fromhex(address)  # 32-bit words in host (little-endian) order
                packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(family, packed))
    return found
