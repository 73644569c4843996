"""An API server per module and database backend (SQLite, PostgreSQL), on the suite's real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.api.servers import TOKEN, ApiProcess
from videoscore.core.settings import Settings
from videoscore.db.migrate import upgrade
from videoscore.worker.testing.servers import RedisServer

WEBHOOK_SECRET = "whsec-test"


@dataclass
class Api:
    process: ApiProcess
    settings: Settings

    @property
    def url(self) -> str:
        return self.process.url


def api_settings(database_url: str, broker_url: str, **overrides: object) -> Settings:
    """The tests' API settings; webhook receivers run on this host, so loopback is opened through the settings
    an on-prem operator would use (the allowlist and private addresses), never by default."""
    fields: dict[str, object] = dict(
        database_url=database_url, broker_url=broker_url, queue=f"api-{uuid.uuid4().hex[:8]}",
        api_tokens=[TOKEN], api_max_body_bytes=200_000, api_max_jobs_per_request=500,
        webhook_secret=WEBHOOK_SECRET, webhook_max_attempts=4, webhook_timeout_s=5,
        webhook_allowed_hosts=["127.0.0.1"], webhook_allow_private_addresses=True, poll_interval_s=0.1,
    )
    return Settings(**{**fields, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        redis_server: RedisServer) -> Iterator[Api]:
    workdir: Path = tmp_path_factory.mktemp(f"api-{request.param}")
    if request.param == "sqlite":
        database_url = f"sqlite:///{workdir / 'videoscore.db'}"
    else:
        database_url = request.getfixturevalue("postgres_server").create_database()
    upgrade(database_url)
    settings = api_settings(database_url, redis_server.url)
    process = ApiProcess(settings, workdir / "api.log").start()
    try:
        yield Api(process, settings)
    finally:
        process.stop()
