"""Jobs: submit one or many, read one, cancel one, and list them by filter in keyset pages.

POST /jobs reads its body by hand (one job object or an array of them, validated all or nothing, each bad field
named `jobs[3].prompt`), so FastAPI cannot describe it; `submit_body_schema` does, and create_app's OpenAPI
serves it. A job's batch must be the calling token's or a new name (which becomes the token's: 409 otherwise),
and an idempotency key names one job (409 naming the fields that differ when reused for another).
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from videoscore.api.deps import CallerDep, ClientDep, JobFilterDep, SettingsDep
from videoscore.api.errors import ApiError, clean_message
from videoscore.api.schemas import CancelOut, ErrorOut, JobOut, JobPage, SubmittedMany
from videoscore.core.errors import (
    IdempotencyConflictError,
    InvalidJobError,
    PermanentError,
    PromptTooLongError,
    UnknownModelError,
)
from videoscore.core.jobspec import JobRequest, validate_job
from videoscore.core.names import JobStatus, is_job_id
from videoscore.core.settings import Settings
from videoscore.core.variants import ModelPolicy
from videoscore.db import queries
from videoscore.db.queries import BadCursorError
from videoscore.producer.client import Client

log = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"])


@router.post("/jobs", status_code=201, response_model=JobOut | SubmittedMany,
             responses={200: {"model": JobOut, "description": "An existing job with the same idempotency key"},
                        409: {"model": ErrorOut, "description": "An idempotency key names a different job, or a "
                              "batch belongs to another token"},
                        413: {"model": ErrorOut}, 503: {"model": ErrorOut}})
async def submit_jobs(request: Request, response: Response, settings: SettingsDep,
                      client: ClientDep, caller: CallerDep) -> JobOut | SubmittedMany:
    """Submit one job (a JSON object) or many (a JSON array of them). Validated all or nothing."""
    payload = await _json_body(request)
    many = isinstance(payload, list)
    if many and len(payload) > settings.api_max_jobs_per_request:
        raise ApiError(413, "too_many_jobs",
                       f"{len(payload)} jobs in one request; the limit is {settings.api_max_jobs_per_request}")
    if many and not payload:
        raise ApiError(422, "validation_error", "an empty list submits nothing",
                       [{"field": "jobs", "message": "must hold at least one job"}])
    requests = _parse_jobs(payload if many else [payload], settings, many=many)
    await run_in_threadpool(_claim_batches, client, requests, caller, many=many)
    try:
        results = await run_in_threadpool(client.submit_detailed, requests)
    except IdempotencyConflictError as exc:
        raise _conflict(exc, many=many) from None
    if not many:
        job, created = results[0]
        response.status_code = 201 if created else 200
        return JobOut.of(job)
    return SubmittedMany(jobs=[JobOut.of(j) for j, _ in results], created=sum(c for _, c in results))


@router.get("/jobs/{job_id}", response_model=JobOut, responses={404: {"model": ErrorOut}})
def get_job(job_id: str, client: ClientDep) -> JobOut:
    """One job: state, scores and provenance."""
    record = client.get(job_id) if is_job_id(job_id) else None
    if record is None:
        raise ApiError(404, "not_found", f"no job {job_id[:64]!r}")
    return JobOut.of(record)


@router.delete("/jobs/{job_id}", response_model=CancelOut,
               responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}})
def cancel_job(job_id: str, client: ClientDep) -> CancelOut:
    """Cancel a job no worker has started yet."""
    record = client.get(job_id) if is_job_id(job_id) else None
    if record is None:
        raise ApiError(404, "not_found", f"no job {job_id[:64]!r}")
    if not client.cancel(job_id):
        current = client.get(job_id)
        status = current.status if current else record.status
        raise ApiError(409, "not_cancellable", f"job {job_id} is {status}: only jobs no worker started cancel")
    return CancelOut(id=job_id, status=JobStatus.CANCELLED.value)


@router.get("/jobs", response_model=JobPage, responses={400: {"model": ErrorOut}})
def list_jobs(where: JobFilterDep, client: ClientDep,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              cursor: Annotated[str | None, Query(max_length=500)] = None) -> JobPage:
    """Jobs matching every given filter, oldest first; follow `next_cursor` for the next page."""
    try:
        page = client.search(where, limit=limit, cursor=cursor)
    except BadCursorError as exc:
        raise ApiError(400, "bad_cursor", str(exc), [{"field": "query.cursor", "message": str(exc)}]) from None
    return JobPage(jobs=[JobOut.of(j) for j in page.jobs], next_cursor=page.next_cursor)


def _claim_batches(client: Client, requests: list[JobRequest], caller: str, *, many: bool) -> None:
    """Make each named batch the caller's, or refuse them all (409) if one belongs to another token or the operator."""
    first_job: dict[str, int] = {}
    for index, job in enumerate(requests):
        if job.batch is not None:
            first_job.setdefault(job.batch, index)
    if not first_job:
        return
    with client.db.transaction() as session:
        foreign = [batch for batch in first_job if not queries.claim_batch(session, batch, caller)]
        if foreign:  # raised inside the transaction: no batch of this request is claimed
            fields = [{"field": f"jobs[{first_job[b]}].batch" if many else "batch",
                       "message": f"batch {b[:64]!r} belongs to another API token or to the operator"}
                      for b in foreign]
            raise ApiError(409, "batch_not_owned", f"batch {foreign[0][:64]!r} was created by another API token or "
                           "by the operator: submit into a batch this token created, or a new name", fields)


def _conflict(exc: IdempotencyConflictError, *, many: bool) -> ApiError:
    """409 naming, for each job that reuses a key, every field in which it differs from the job the key names."""
    fields = []
    for conflict in exc.conflicts:
        named = f"job {conflict.job_id}" if conflict.job_id else "an earlier job of this request"
        for name in conflict.fields:
            fields.append({"field": f"jobs[{conflict.position}].{name}" if many else name,
                           "message": f"differs from {named}, which idempotency key {conflict.key[:80]!r} names"})
    return ApiError(409, "idempotency_conflict", exc.message, fields)


def submit_body_schema(max_jobs: int) -> dict[str, Any]:
    """The OpenAPI request body of POST /jobs: one JobRequest, or an array of 1 to `max_jobs` of them."""
    job = {"$ref": "#/components/schemas/JobRequest"}
    return {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [
            job, {"type": "array", "items": job, "minItems": 1, "maxItems": max_jobs},
        ]}}},
    }


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        message = f"the body is not valid JSON: {exc}" if not isinstance(exc, RecursionError) else "JSON too deep"
        raise ApiError(422, "validation_error", message, [{"field": "body", "message": message}]) from None


def _parse_jobs(items: list[Any], settings: Settings, *, many: bool) -> list[JobRequest]:
    """Validate every job; one error lists each bad field of each bad job (`jobs[3].prompt`)."""
    problems: list[dict[str, str]] = []
    parsed: list[JobRequest] = []
    models = ModelPolicy.of(settings)  # what a job may name; a job naming none gets VIDEOSCORE_MODEL

    def where(index: int, loc: tuple[Any, ...]) -> str:
        inner = ".".join(str(p) for p in loc)
        prefix = f"jobs[{index}]" if many else ""
        return ".".join(p for p in (prefix, inner) if p) or "body"

    for index, item in enumerate(items):
        try:
            job = JobRequest.model_validate(item)
        except ValidationError as exc:
            problems += [{"field": where(index, tuple(e["loc"])), "message": clean_message(e["msg"])}
                         for e in exc.errors()]
            continue
        try:
            parsed.append(validate_job(job, max_prompt_chars=settings.max_prompt_chars, models=models))
        except PromptTooLongError as exc:
            problems.append({"field": where(index, ("prompt",)), "message": exc.message})
        except UnknownModelError as exc:
            problems.append({"field": where(index, ("model",)), "message": exc.message})
        except InvalidJobError as exc:
            problems.append({"field": where(index, ()), "message": exc.message})
        except PermanentError as exc:  # the model's checkpoint could not be read or loaded
            problems.append({"field": where(index, ("model",)), "message": exc.message})
        except (OSError, ValueError, TypeError, LookupError, AttributeError, RecursionError) as exc:
            # Only the model's resolution reads anything here (a folder, its videoscore.json): whatever it raised,
            # the request named a model that cannot be used, which is the client's to fix, not a 500.
            log.warning("model %r of a submitted job could not be resolved: %s: %s", job.model[:200],
                        type(exc).__name__, exc)
            problems.append({"field": where(index, ("model",)),
                             "message": f"model {job.model[:200]!r} cannot be used: its checkpoint is unreadable"})
    if problems:
        shown = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ApiError(422, "validation_error", f"invalid job: {shown}{more}", problems)
    return parsed
