"""Suite-wide fixtures: real Redis, a real S3 API over HTTP and real PostgreSQL, started once per run.

No mocks: every integration test talks to these servers over loopback. A database fixture is parametrised
over SQLite and PostgreSQL, so each database test runs against both.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from videoscore.db.migrate import upgrade
from videoscore.worker.testing.servers import PostgresServer, RedisServer, S3Server, running_postgres

pytest_plugins = ["tests.model_fixtures"] if (Path(__file__).parent / "model_fixtures.py").exists() else []


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database at the newest schema, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'videoscore.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database()
    upgrade(url)
    return url
