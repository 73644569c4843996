"""The FastAPI application: one router per resource (api.routes), bearer-token auth on all but health, the
body-size limit, structured JSON errors (api.errors) and the served OpenAPI.

Every error is `{"error": {"code", "message", "fields": [{"field", "message"}]}}`; validation errors name
the field (`jobs[2].prompt`, `query.limit`). Health (`/healthz`) and readiness (`/readyz`) need no token.
`/openapi.json` is always served; the Swagger UI (`/docs`) and ReDoc (`/redoc`) pages load their scripts from a
public CDN, so they are served only when VIDEOSCORE_API_DOCS is set. Uvicorn's access log redacts the values of
token-like query parameters (api.access_log).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi

from videoscore.api.access_log import install_access_log_redaction
from videoscore.api.deps import PROTECTED_RESPONSES, require_token
from videoscore.api.errors import install_error_handlers
from videoscore.api.limits import BodySizeLimit
from videoscore.api.routes import aggregates, batches, health, jobs
from videoscore.core.jobspec import JobRequest
from videoscore.core.settings import Settings
from videoscore.producer.client import Client


def create_app(settings: Settings | None = None, *, client: Client | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="VideoScore Queue",
        version="1",
        description="Submit AI-generated videos for VideoScore scoring and query their scores.",
        generate_unique_id_function=lambda route: route.name,  # operationId: the route function's name
        docs_url="/docs" if settings.api_docs else None,  # both pages fetch their scripts from a CDN
        redoc_url="/redoc" if settings.api_docs else None,
    )
    install_access_log_redaction()
    app.state.settings = settings
    app.state.client = client or Client(settings)
    app.state.tokens = [t.get_secret_value().encode() for t in settings.api_tokens]
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    install_error_handlers(app)

    app.include_router(health.router)
    for resource in (jobs, batches, aggregates):
        app.include_router(resource.router, dependencies=[Depends(require_token)], responses=PROTECTED_RESPONSES)
    _install_openapi(app, settings)
    return app


def _install_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            job_schema = JobRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(job_schema.pop("$defs", {}))
            components["JobRequest"] = job_schema
            submit = schema["paths"]["/jobs"]["post"]
            submit["requestBody"] = jobs.submit_body_schema(settings.api_max_jobs_per_request)
            for path in ("/healthz", "/readyz"):
                for operation in schema["paths"].get(path, {}).values():
                    operation["security"] = []
            # OpenAPI links: what a client (or a fuzzer) does next with the id POST /jobs answered with
            job_id = {"job_id": "$response.body#/id"}
            links = {"GetJob": {"operationId": "get_job", "parameters": job_id},
                     "CancelJob": {"operationId": "cancel_job", "parameters": job_id}}
            for status in ("200", "201"):
                submit["responses"].setdefault(status, {})["links"] = links
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
