"""Property-based fuzzing of the served OpenAPI with schemathesis: no request, valid or not, gets a 500.

The API runs as a real uvicorn process on PostgreSQL (the stricter backend: it refuses NUL characters, for
one) and the suite's Redis. Bounded to 30 examples per operation and phase, so it finishes in under a minute.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.conftest import Api, api_settings
from tests.api.servers import TOKEN, ApiProcess
from videoscore.db.migrate import upgrade
from videoscore.worker.testing.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def fuzzed_api(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer,
               postgres_server: PostgresServer) -> Iterator[Api]:
    database_url = postgres_server.create_database()
    upgrade(database_url)
    settings = api_settings(database_url, redis_server.url)
    process = ApiProcess(settings, tmp_path_factory.mktemp("fuzz") / "api.log").start()
    try:
        yield Api(process, settings)
    finally:
        process.stop()


def test_schemathesis_finds_no_server_errors_in_any_operation(fuzzed_api: Api, tmp_path: Path) -> None:
    schemathesis = Path(sys.executable).parent / "schemathesis"
    argv = [str(schemathesis), "run", f"{fuzzed_api.url}/openapi.json",
            "--checks", "not_a_server_error", "--max-examples", "30", "--seed", "7",
            "--phases", "coverage,fuzzing,stateful", "--generation-allow-x00", "true",
            "--generation-database", "none", "--workers", "2", "--no-color",
            "--header", f"Authorization: Bearer {TOKEN}", "--request-timeout", "20"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    report = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, report + "\n--- api log ---\n" + fuzzed_api.process.log()[-4000:]
    assert "10 selected / 10 total" in run.stdout  # every operation of the schema was exercised
    assert " passed" in run.stdout and "failed" not in run.stdout.split("SUMMARY")[-1]
    assert "Traceback" not in fuzzed_api.process.log()
