"""Chaos fixtures: a fresh small fleet per scenario, and the figures each scenario reports.

Every scenario calls `report(figures)`: the line is printed in pytest's terminal summary (whether or not
`-s` is given) and appended to var/chaos-figures.log, so a run's figures can be quoted afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.chaos.cluster import Cluster, Figures, build_cluster
from videoscore.worker.testing.servers import PostgresServer, running_postgres

FIGURES_LOG = Path(__file__).resolve().parents[2] / "var" / "chaos-figures.log"
_KEY = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_KEY] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # minutes of real servers and worker processes: `make test` runs them, `make test-fast` does not
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Callable[[Figures], None]:
    def record(figures: Figures) -> None:
        line = figures.line()
        print(line)
        request.config.stash[_KEY].append(line)
        request.node.user_properties.append(("figures", line))
        FIGURES_LOG.parent.mkdir(parents=True, exist_ok=True)
        with FIGURES_LOG.open("a") as out:
            out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    return record


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    lines = config.stash.get(_KEY, [])
    if lines:
        terminalreporter.section("chaos figures (submitted / succeeded / failed / lost / scored twice)")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture
def cluster(tmp_path: Path, postgres_server: PostgresServer) -> Iterator[Cluster]:
    """Redis (AOF on), S3 behind a proxy, a fresh PostgreSQL database, the fast stand-in; no workers yet."""
    built = build_cluster(tmp_path, postgres_server.create_database())
    try:
        yield built
    finally:
        built.stop()


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of the test's own, for scenarios that stop it."""
    with running_postgres("videoscore-chaos-pg-") as server:
        yield server
