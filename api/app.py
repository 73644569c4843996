"""The FastAPI application: routes, bearer-token auth, body-size limit and structured JSON errors.

Every error is `{"error": {"code", "message", "fields": [{"field", "message"}]}}`; validation errors name
the field (`jobs[2].prompt`, `query.limit`). Health (`/healthz`) and readiness (`/readyz`) need no token.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from videoscore.api.schemas import (
    AggregatesOut,
    BatchOut,
    CancelOut,
    ErrorOut,
    GroupOut,
    Health,
    JobOut,
    JobPage,
    SubmittedMany,
    WebhookIn,
)
from videoscore.core.errors import InvalidJobError, PromptTooLongError, UnknownModelError
from videoscore.core.jobspec import JobRequest, validate_job
from videoscore.core.names import JobStatus, is_job_id
from videoscore.core.settings import Settings
from videoscore.core.variants import ASPECTS
from videoscore.core.webhooks import check_webhook_url
from videoscore.db.queries import BadCursorError, JobFilter
from videoscore.producer.client import Client

log = logging.getLogger(__name__)

Text200 = Annotated[str | None, Query(max_length=200)]
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong bearer token"},
    422: {"model": ErrorOut, "description": "Invalid request; `fields` names each bad field"},
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields or []


def error_response(status: int, code: str, message: str, fields: list[dict[str, str]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "fields": fields or []}}, status_code=status,
                        headers=headers)


def create_app(settings: Settings | None = None, *, client: Client | None = None) -> FastAPI:
    settings = settings or Settings()
    client = client or Client(settings)
    app = FastAPI(
        title="VideoScore Queue",
        version="1",
        description="Submit AI-generated videos for VideoScore scoring and query their scores.",
        generate_unique_id_function=lambda route: route.name,
    )
    protected = APIRouter(dependencies=[Depends(require_token)], responses=ERRORS,
                          generate_unique_id_function=lambda route: route.name)
    app.state.client = client
    app.state.tokens = [t.get_secret_value().encode() for t in settings.api_tokens]
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    _install_error_handlers(app)
    _install_openapi(app, settings)

    # --- health (no token) -----------------------------------------------------------------------------

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        """The process is up."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    def readyz(response: Response) -> Health:
        """The database and the broker answer."""
        checks = {"database": _check_database(client), "broker": _check_broker(settings.broker_url)}
        ready = all(v == "ok" for v in checks.values())
        response.status_code = 200 if ready else 503
        return Health(status="ready" if ready else "unavailable", checks=checks)

    # --- jobs ----------------------------------------------------------------------------------------

    @protected.post("/jobs", status_code=201, tags=["jobs"], response_model=JobOut | SubmittedMany,
              openapi_extra={"requestBody": _submit_body_schema(settings)},
              responses={200: {"model": JobOut, "description": "An existing job with the same idempotency key"},
                         413: {"model": ErrorOut}, 503: {"model": ErrorOut}})
    async def submit_jobs(request: Request, response: Response) -> JobOut | SubmittedMany:
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
        results = await run_in_threadpool(client.submit_detailed, requests)
        if not many:
            job, created = results[0]
            response.status_code = 201 if created else 200
            return JobOut.of(job)
        return SubmittedMany(jobs=[JobOut.of(j) for j, _ in results], created=sum(c for _, c in results))

    @protected.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses={404: {"model": ErrorOut}})
    def get_job(job_id: str) -> JobOut:
        """One job: state, scores and provenance."""
        record = client.get(job_id) if is_job_id(job_id) else None
        if record is None:
            raise ApiError(404, "not_found", f"no job {job_id[:64]!r}")
        return JobOut.of(record)

    @protected.delete("/jobs/{job_id}", response_model=CancelOut, tags=["jobs"],
                responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}})
    def cancel_job(job_id: str) -> CancelOut:
        """Cancel a job no worker has started yet."""
        record = client.get(job_id) if is_job_id(job_id) else None
        if record is None:
            raise ApiError(404, "not_found", f"no job {job_id[:64]!r}")
        if not client.cancel(job_id):
            current = client.get(job_id)
            status = current.status if current else record.status
            raise ApiError(409, "not_cancellable", f"job {job_id} is {status}: only jobs no worker started cancel")
        return CancelOut(id=job_id, status=JobStatus.CANCELLED.value)

    @protected.get("/jobs", response_model=JobPage, tags=["jobs"], responses={400: {"model": ErrorOut}})
    def list_jobs(where: Annotated[JobFilter, Depends(job_filter)],
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                  cursor: Annotated[str | None, Query(max_length=500)] = None) -> JobPage:
        """Jobs matching every given filter, oldest first; follow `next_cursor` for the next page."""
        try:
            page = client.search(where, limit=limit, cursor=cursor)
        except BadCursorError as exc:
            raise ApiError(400, "bad_cursor", str(exc), [{"field": "query.cursor", "message": str(exc)}]) from None
        return JobPage(jobs=[JobOut.of(j) for j in page.jobs], next_cursor=page.next_cursor)

    # --- batches and aggregates -------------------------------------------------------------------------

    @protected.get("/batches/{batch}", response_model=BatchOut, tags=["batches"], responses={404: {"model": ErrorOut}})
    def get_batch(batch: str) -> BatchOut:
        """Counts by status, progress, score statistics and webhook state of a batch."""
        _check_text(batch, "path.batch", 200)
        summary = client.batch(batch)
        if summary is None:
            raise ApiError(404, "not_found", f"no job belongs to batch {batch[:64]!r}")
        return BatchOut.of(summary)

    @protected.post("/batches/{batch}/webhook", response_model=BatchOut | WebhookIn, tags=["batches"])
    def set_webhook(batch: str, body: WebhookIn) -> BatchOut | WebhookIn:
        """Register the URL POSTed (signed) once when every job of the batch has finished."""
        _check_text(batch, "path.batch", 200)
        _check_text(body.url, "body.url", 2000)
        try:
            check_webhook_url(body.url)
        except ValueError as exc:
            raise ApiError(422, "validation_error", str(exc), [{"field": "body.url", "message": str(exc)}]) from None
        client.set_batch_webhook(batch, body.url)
        summary = client.batch(batch)
        return BatchOut.of(summary) if summary else body

    @protected.get("/aggregates", response_model=AggregatesOut, tags=["batches"])
    def aggregates(where: Annotated[JobFilter, Depends(job_filter)],
                   group_by: Literal["batch", "model"] = "batch") -> AggregatesOut:
        """Per batch or model: succeeded jobs, mean and p10/p50/p90 of each aspect."""
        return AggregatesOut(group_by=group_by, groups=[GroupOut.of(g) for g in client.aggregate(group_by, where)])

    app.include_router(protected)
    return app


_BEARER = HTTPBearer(auto_error=False, description="A token from VIDEOSCORE_API_TOKENS")


def require_token(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
    """Every route but health needs `Authorization: Bearer <token>` with a token from the settings."""
    if credentials is None:
        raise ApiError(401, "unauthorized", "missing bearer token: send 'Authorization: Bearer <token>'")
    offered = credentials.credentials.encode()
    # compare with every token, always, so timing does not tell which one matched
    if not any([hmac.compare_digest(offered, token) for token in request.app.state.tokens]):
        raise ApiError(401, "unauthorized", "invalid bearer token")


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
        tags[_check_text(key, "query.tag", 100)] = _check_text(value, "query.tag", 500)
    for name in ("batch", "model"):
        if given[name] is not None:
            _check_text(given[name], f"query.{name}", 500)
    return JobFilter(
        batch=batch, model=model, status=status.value if status else None, tags=tags,
        since=_utc(since, "query.since"), until=_utc(until, "query.until"),
        min_scores={a: given[f"min_{a}"] for a in ASPECTS if given[f"min_{a}"] is not None},
        max_scores={a: given[f"max_{a}"] for a in ASPECTS if given[f"max_{a}"] is not None},
    )


# --- helpers -------------------------------------------------------------------------------------------------


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

    def where(index: int, loc: tuple[Any, ...]) -> str:
        inner = ".".join(str(p) for p in loc)
        prefix = f"jobs[{index}]" if many else ""
        return ".".join(p for p in (prefix, inner) if p) or "body"

    for index, item in enumerate(items):
        try:
            job = JobRequest.model_validate(item)
        except ValidationError as exc:
            problems += [{"field": where(index, tuple(e["loc"])), "message": _clean(e["msg"])} for e in exc.errors()]
            continue
        try:
            parsed.append(validate_job(job, max_prompt_chars=settings.max_prompt_chars))
        except PromptTooLongError as exc:
            problems.append({"field": where(index, ("prompt",)), "message": exc.message})
        except UnknownModelError as exc:
            problems.append({"field": where(index, ("model",)), "message": exc.message})
        except InvalidJobError as exc:
            problems.append({"field": where(index, ()), "message": exc.message})
    if problems:
        shown = "; ".join(f"{p['field']}: {p['message']}" for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ApiError(422, "validation_error", f"invalid job: {shown}{more}", problems)
    return parsed


def _clean(message: str) -> str:
    return message.removeprefix("Value error, ")


def _check_text(value: str, field: str, max_length: int) -> str:
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


def _check_database(client: Client) -> str:
    try:
        with client.db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:  # noqa: BLE001 - readiness reports, never raises
        return f"unavailable: {type(exc).__name__}"


def _check_broker(url: str) -> str:
    try:
        if url.startswith(("redis://", "rediss://")):
            import redis

            redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2).ping()
        else:
            from kombu import Connection

            with Connection(url, connect_timeout=2) as connection:
                connection.ensure_connection(max_retries=1)
        return "ok"
    except Exception as exc:  # noqa: BLE001
        return f"unavailable: {type(exc).__name__}"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.code, exc.message, exc.fields, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [{"field": ".".join(str(p) for p in err["loc"]), "message": _clean(err["msg"])}
                  for err in exc.errors()]
        shown = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
        return error_response(422, "validation_error", f"invalid request: {shown}", fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def database_down(_request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return error_response(503, "database_unavailable", "the job database did not answer; try again")

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        from kombu.exceptions import OperationalError as BrokerDown

        if isinstance(exc, BrokerDown) or type(exc).__module__.startswith("redis"):
            return error_response(503, "broker_unavailable", "the broker did not answer; jobs already stored are "
                                  "sent by the workers' reaper, or resubmit with the same idempotency keys")
        log.exception("unhandled error")
        return error_response(500, "internal_error", f"internal error: {type(exc).__name__}")


def _submit_body_schema(settings: Settings) -> dict[str, Any]:
    job = {"$ref": "#/components/schemas/JobRequest"}
    return {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [
            job, {"type": "array", "items": job, "minItems": 1, "maxItems": settings.api_max_jobs_per_request},
        ]}}},
    }


def _install_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            job_schema = JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(job_schema.pop("$defs", {}))
            components["JobRequest"] = job_schema
            for path in ("/healthz", "/readyz"):
                for operation in schema["paths"].get(path, {}).values():
                    operation["security"] = []
            # OpenAPI links: what a client (or a fuzzer) does next with the id POST /jobs answered with
            job_id = {"job_id": "$response.body#/id"}
            links = {"GetJob": {"operationId": "get_job", "parameters": job_id},
                     "CancelJob": {"operationId": "cancel_job", "parameters": job_id}}
            for status in ("200", "201"):
                schema["paths"]["/jobs"]["post"]["responses"].setdefault(status, {})["links"] = links
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]


class BodySizeLimit:
    """Refuse bodies over `max_bytes` with 413, by Content-Length or while reading a chunked body."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        seen = 0

        async def counting_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        response = error_response(413, "body_too_large", f"request body over {self.max_bytes} bytes")
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


class _TooLarge(Exception):
    pass
