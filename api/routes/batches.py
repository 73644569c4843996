"""Batches: a batch's counts, progress, score statistics and webhook, and registering its webhook."""

from __future__ import annotations

from fastapi import APIRouter

from videoscore.api.deps import ClientDep, check_text
from videoscore.api.errors import ApiError
from videoscore.api.schemas import BatchOut, ErrorOut, WebhookIn
from videoscore.core.webhooks import check_webhook_url

router = APIRouter(tags=["batches"])


@router.get("/batches/{batch}", response_model=BatchOut, responses={404: {"model": ErrorOut}})
def get_batch(batch: str, client: ClientDep) -> BatchOut:
    """Counts by status, progress, score statistics and webhook state of a batch."""
    check_text(batch, "path.batch", 200)
    summary = client.batch(batch)
    if summary is None:
        raise ApiError(404, "not_found", f"no job belongs to batch {batch[:64]!r}")
    return BatchOut.of(summary)


@router.post("/batches/{batch}/webhook", response_model=BatchOut | WebhookIn)
def set_webhook(batch: str, body: WebhookIn, client: ClientDep) -> BatchOut | WebhookIn:
    """Register the URL POSTed (signed) once when every job of the batch has finished."""
    check_text(batch, "path.batch", 200)
    check_text(body.url, "body.url", 2000)
    try:
        check_webhook_url(body.url)
    except ValueError as exc:
        raise ApiError(422, "validation_error", str(exc), [{"field": "body.url", "message": str(exc)}]) from None
    client.set_batch_webhook(batch, body.url)
    summary = client.batch(batch)
    return BatchOut.of(summary) if summary else body
