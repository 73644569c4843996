"""Batch completion webhooks: signed POSTs, retried with backoff, fired once per batch.

Who fires: whoever moves a batch's last unfinished job to a final state (the worker that finishes it, or
the API/SDK call that cancels it) calls `fire_if_batch_complete` after committing that change. A
conditional UPDATE in db.queries.claim_batch_webhook lets exactly one caller win; the winner delivers in a
background thread and records the outcome on the batch (GET /batches/{id} shows it).

The body is JSON; `X-VideoScore-Signature: sha256=<hex>` is HMAC-SHA256 of the raw body under
VIDEOSCORE_WEBHOOK_SECRET, so a receiver verifies with `hmac.compare_digest(expected, header)`.
Standard library only: the producer stays light.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from videoscore.core.settings import Settings
from videoscore.db import queries
from videoscore.db.session import Database

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-VideoScore-Signature"
EVENT_HEADER = "X-VideoScore-Event"
EVENT = "batch.completed"


def check_webhook_url(url: str) -> str:
    """Only absolute http(s) URLs; raise ValueError naming what is wrong."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"webhook url must be an absolute http:// or https:// URL, got {url[:200]!r}")
    if len(url) > 2000:
        raise ValueError("webhook url is longer than 2000 characters")
    return url


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Delivery:
    attempts: int
    error: str | None  # None when the receiver answered 2xx


def deliver(url: str, body: bytes, *, secret: str | None, max_attempts: int, timeout_s: float,
            backoff_s: float = 0.5, sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """POST `body` until a 2xx answer or `max_attempts` tries; waits backoff_s × 2^n between tries."""
    headers = {"Content-Type": "application/json", EVENT_HEADER: EVENT, "User-Agent": "videoscore-queue"}
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    error = "not attempted"
    for attempt in range(1, max_attempts + 1):
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - http(s) only
                if 200 <= response.status < 300:
                    return Delivery(attempt, None)
                error = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        if attempt < max_attempts:
            sleep(backoff_s * 2 ** (attempt - 1))
    return Delivery(max_attempts, error)


def batch_payload(summary: queries.BatchSummary) -> dict[str, Any]:
    return {
        "event": EVENT,
        "batch": summary.batch,
        "total": summary.total,
        "counts": summary.counts,
        "mean_scores": {a: s.mean for a, s in summary.stats.aspects.items()},
        "stand_in_model": summary.stats.stand_in,
    }


def fire_if_batch_complete(db: Database, settings: Settings, batch: str | None, *,
                           background: bool = True) -> threading.Thread | None:
    """Claim and send the batch's webhook if this call saw the batch complete; never raises.

    Returns the delivery thread (when one was started in the background), mostly for tests to join.
    """
    if not batch:
        return None
    try:
        with db.transaction() as session:
            url = queries.claim_batch_webhook(session, batch)
            summary = queries.batch_summary(session, batch) if url else None
    except Exception:  # noqa: BLE001 - a webhook must never fail the job that completed the batch
        log.exception("could not check batch %s for completion", batch)
        return None
    if url is None or summary is None:
        return None
    body = json.dumps(batch_payload(summary), sort_keys=True).encode()

    def send() -> None:
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        outcome = deliver(url, body, secret=secret, max_attempts=settings.webhook_max_attempts,
                          timeout_s=settings.webhook_timeout_s)
        if outcome.error:
            log.warning("batch %s webhook failed after %d attempts: %s", batch, outcome.attempts, outcome.error)
        try:
            with db.transaction() as session:
                queries.record_webhook_delivery(session, batch, attempts=outcome.attempts, error=outcome.error)
        except Exception:  # noqa: BLE001
            log.exception("could not record the webhook delivery of batch %s", batch)

    if not background:
        send()
        return None
    # Not a daemon: a stopping process still finishes (bounded) delivery attempts it has claimed.
    thread = threading.Thread(target=send, name=f"webhook-{batch[:40]}")
    thread.start()
    return thread
