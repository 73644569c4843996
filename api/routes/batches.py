"""Batches: a batch's counts, progress, score statistics and webhook, and registering its webhook.

A batch belongs to the API token that first named it (submitting into it, or registering its webhook); only
that token registers, reads or changes its webhook. Any other token sees the batch's counts and scores, as it
sees its jobs, with no webhook, gets 404 for GET /batches/{batch}/webhook and cannot register one. Batches made
through the SDK or the CLI are the operator's: no token touches their webhooks.
"""

from __future__ import annotations

from fastapi import APIRouter

from videoscore.api.deps import CallerDep, ClientDep, SettingsDep, check_text
from videoscore.api.errors import ApiError
from videoscore.api.schemas import BatchOut, ErrorOut, WebhookIn, WebhookOut
from videoscore.core.webhooks import WebhookPolicy, check_webhook_url, fire_if_batch_complete
from videoscore.db import queries

router = APIRouter(tags=["batches"])


@router.get("/batches/{batch}", response_model=BatchOut, responses={404: {"model": ErrorOut}})
def get_batch(batch: str, client: ClientDep, caller: CallerDep) -> BatchOut:
    """Counts by status, progress, score statistics and (to the token that created the batch) webhook state."""
    check_text(batch, "path.batch", 200)
    summary = client.batch(batch)
    if summary is None:
        raise ApiError(404, "not_found", f"no job belongs to batch {batch[:64]!r}")
    return BatchOut.of(summary, caller=caller)


@router.get("/batches/{batch}/webhook", response_model=WebhookOut, responses={404: {"model": ErrorOut}})
def get_webhook(batch: str, client: ClientDep, caller: CallerDep) -> WebhookOut:
    """The batch's webhook and its delivery record; only the token that created the batch sees it."""
    check_text(batch, "path.batch", 200)
    with client.db.transaction() as session:
        hook = queries.batch_webhook(session, batch)
    if hook is None or hook.url is None or hook.owner_token_hash != caller:
        # one answer for "no such batch", "not yours" and "none registered": a token learns nothing of others'
        raise ApiError(404, "not_found", f"no webhook of batch {batch[:64]!r} registered with this token")
    return WebhookOut.of(hook)


@router.post("/batches/{batch}/webhook", response_model=BatchOut | WebhookIn,
             responses={404: {"model": ErrorOut}})
def set_webhook(batch: str, body: WebhookIn, client: ClientDep, settings: SettingsDep,
                caller: CallerDep) -> BatchOut | WebhookIn:
    """Register the URL POSTed (signed) once when every job of the batch has finished.

    The URL must reach a public address (or one the operator's settings allow); the batch must be this token's,
    or a new name, which then becomes this token's.
    """
    check_text(batch, "path.batch", 200)
    check_text(body.url, "body.url", 2000)
    try:
        check_webhook_url(body.url, WebhookPolicy.of(settings))
    except ValueError as exc:
        raise ApiError(422, "validation_error", str(exc), [{"field": "body.url", "message": str(exc)}]) from None
    with client.db.transaction() as session:
        if not queries.claim_batch(session, batch, caller):
            raise ApiError(404, "not_found", f"no batch {batch[:64]!r} of this token: only the API token that "
                           "created a batch registers its webhook")
        queries.set_batch_webhook(session, batch, body.url)
    fire_if_batch_complete(client.db, settings, batch)
    summary = client.batch(batch)
    return BatchOut.of(summary, caller=caller) if summary else body
