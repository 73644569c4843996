"""Health (`/healthz`: the process is up) and readiness (`/readyz`: the database and the broker answer).

Neither needs a token: load balancers and orchestrators call them.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import text

from videoscore.api.deps import ClientDep, SettingsDep
from videoscore.api.schemas import Health
from videoscore.producer.client import Client

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(response: Response, settings: SettingsDep, client: ClientDep) -> Health:
    """The database and the broker answer."""
    checks = {"database": _check_database(client), "broker": _check_broker(settings.broker_url)}
    ready = all(v == "ok" for v in checks.values())
    response.status_code = 200 if ready else 503
    return Health(status="ready" if ready else "unavailable", checks=checks)


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
