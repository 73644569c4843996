"""What routes depend on: the app's settings and client, the bearer-token check and the caller it names, and
the job filter that GET /jobs and GET /aggregates share, with the checks on free text and times their
parameters need."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from videoscore.api.errors import ApiError
from videoscore.api.schemas import ErrorOut
from videoscore.core.names import JobStatus
from videoscore.core.settings import Settings
from videoscore.core.variants import ASPECTS
from videoscore.db.queries import JobFilter
from videoscore.producer.client import Client

# --- the app's settings and client (create_app puts them on app.state) -----------------------------------------


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_client(request: Request) -> Client:
    client: Client = request.app.state.client
    return client


SettingsDep = Annotated[Settings, Depends(get_settings)]
ClientDep = Annotated[Client, Depends(get_client)]

# --- auth ------------------------------------------------------------------------------------------------------

_BEARER = HTTPBearer(auto_error=False, description="A token from VIDEOSCORE_API_TOKENS")


def require_token(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> str:
    """Every route but health needs `Authorization: Bearer <token>` with a token from the settings.

    Returns the caller: the token's hash (`token_hash`), what a batch's owner is recorded as.
    """
    if credentials is None:
        raise ApiError(401, "unauthorized", "missing bearer token: send 'Authorization: Bearer <token>'")
    offered = credentials.credentials.encode()
    # compare with every token, always, so timing does not tell which one matched
    if not any([hmac.compare_digest(offered, token) for token in request.app.state.tokens]):
        raise ApiError(401, "unauthorized", "invalid bearer token")
    return token_hash(offered)


def token_hash(token: bytes) -> str:
    """SHA-256 (hex) of a token: what the database keeps of a batch's owner, never the token itself."""
    return hashlib.sha256(token).hexdigest()


# The calling token's hash; FastAPI runs require_token once per request however many dependants name it.
CallerDep = Annotated[str, Depends(require_token)]


# What every route behind `require_token` may answer besides its own responses.
PROTECTED_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong bearer token"},
    422: {"model": ErrorOut, "description": "Invalid request; `fields` names each bad field"},
}

# --- the job filter --------------------------------------------------------------------------------------------

Text200 = Annotated[str | None, Query(max_length=200)]


def job_filter(
    batch: Text200 = None,
    model: Annotated[str | None, Query(max_length=500)] = None,
    status: JobStatus | None = None,
    tag: Annotated[list[str] | None, Query(max_length=32, description="key:value; repeat for several")] = None,
    since: Annotated[datetime | None, Query(description="Created at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="Created before (ISO 8601)")] = None,
    min_visual_quality: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    min_temporal_consistency: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    min_dynamic_degree: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    min_text_to_video_alignment: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    min_factual_consistency: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    max_visual_quality: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    max_temporal_consistency: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    max_dynamic_degree: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    max_text_to_video_alignment: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    max_factual_consistency: Annotated[float | None, Query(allow_inf_nan=False)] = None,
) -> JobFilter:
    """The filters GET /jobs and GET /aggregates share."""
    given = locals()
    tags: dict[str, str] = {}
    for item in tag or []:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise ApiError(422, "validation_error", f"tag {item[:100]!r} is not key:value",
                           [{"field": "query.tag", "message": "expected key:value"}])
        tags[check_text(key, "query.tag", 100)] = check_text(value, "query.tag", 500)
    for name in ("batch", "model"):
        if given[name] is not None:
            check_text(given[name], f"query.{name}", 500)
    return JobFilter(
        batch=batch, model=model, status=status.value if status else None, tags=tags,
        since=_utc(since, "query.since"), until=_utc(until, "query.until"),
        min_scores={a: given[f"min_{a}"] for a in ASPECTS if given[f"min_{a}"] is not None},
        max_scores={a: given[f"max_{a}"] for a in ASPECTS if given[f"max_{a}"] is not None},
    )


JobFilterDep = Annotated[JobFilter, Depends(job_filter)]


def check_text(value: str, field: str, max_length: int) -> str:
    """`value` if a database can store it and it is at most `max_length` characters; else a 422 naming `field`."""
    if len(value) > max_length:
        raise ApiError(422, "validation_error", f"{field} is longer than {max_length} characters",
                       [{"field": field, "message": f"at most {max_length} characters"}])
    try:
        value.encode("utf-8")
        storable = "\x00" not in value
    except UnicodeEncodeError:
        storable = False
    if not storable:
        raise ApiError(422, "validation_error", f"{field} holds characters a database cannot store",
                       [{"field": field, "message": "no NUL characters or lone surrogates"}])
    return value


def _utc(moment: datetime | None, field: str) -> datetime | None:
    if moment is None:
        return None
    try:
        aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)
        return aware.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise ApiError(422, "validation_error", f"{field} is out of range",
                       [{"field": field, "message": "out of the representable range"}]) from None
