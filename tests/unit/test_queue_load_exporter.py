"""The queue-load exporter tells "no work" from "no exporter": an empty queue is a 0 series, an exporter that
is down leaves no series, and Prometheus alerts on the latter (docker/prometheus-rules.yml)."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from videoscore.core.fleet import QUEUE_LOAD_METRIC, QueueLoadCollector, start_queue_load_server
from videoscore.db.migrate import upgrade
from videoscore.db.session import Database

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) if family.name == name for s in family.samples}


def _exposition(collector: QueueLoadCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


@pytest.fixture
def empty_db(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    upgrade(url)
    return Database(url)


def test_an_empty_queue_is_published_as_a_zero_series_not_left_out(empty_db: Database) -> None:
    text = _exposition(QueueLoadCollector(empty_db))
    assert _samples(text, QUEUE_LOAD_METRIC) == {(("queue", "videoscore"),): 0.0}
    assert _samples(text, "videoscore_database_up") == {(): 1.0}


def test_every_configured_queue_is_published_at_zero(empty_db: Database) -> None:
    text = _exposition(QueueLoadCollector(empty_db, queues=["videoscore", "videoscore.high"]))
    assert _samples(text, QUEUE_LOAD_METRIC) == {(("queue", "videoscore"),): 0.0,
                                                 (("queue", "videoscore.high"),): 0.0}


def test_an_unknown_load_is_not_published_as_zero_before_the_database_first_answers(tmp_path: Path) -> None:
    missing = Database(f"sqlite:///{tmp_path / 'no-such-dir' / 'v.db'}")
    text = _exposition(QueueLoadCollector(missing))
    assert _samples(text, QUEUE_LOAD_METRIC) == {}
    assert _samples(text, "videoscore_database_up") == {(): 0.0}


def test_the_served_exposition_parses_and_carries_the_zero_series(empty_db: Database) -> None:
    from videoscore.worker.testing.servers import free_port

    port = free_port()
    server = start_queue_load_server(empty_db, port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert _samples(text, QUEUE_LOAD_METRIC) == {(("queue", "videoscore"),): 0.0}


def test_prometheus_alerts_when_the_exporter_or_its_series_is_gone() -> None:
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    [rule_file] = config["rule_files"]
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert f"./prometheus-rules.yml:{rule_file}:ro" in mounts
    rules = yaml.safe_load((DOCKER / "prometheus-rules.yml").read_text())
    exprs = {r["alert"]: r["expr"] for group in rules["groups"] for r in group["rules"]}
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert "videoscore-exporter" in jobs
    assert any(f"absent({QUEUE_LOAD_METRIC}" in e for e in exprs.values())
    assert any('up{job="videoscore-exporter"} == 0' in e for e in exprs.values())


@pytest.mark.skipif(not shutil.which("promtool"), reason="no promtool here")
def test_promtool_accepts_the_rules_and_the_exposition(empty_db: Database) -> None:
    checked = subprocess.run(["promtool", "check", "rules", str(DOCKER / "prometheus-rules.yml")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    metrics = subprocess.run(["promtool", "check", "metrics"], input=_exposition(QueueLoadCollector(empty_db)),
                             capture_output=True, text=True)
    assert metrics.returncode == 0, metrics.stdout + metrics.stderr


def test_videoscore_fleet_serve_publishes_the_deployments_queues_at_zero(tmp_path: Path) -> None:
    """What KEDA reads: `videoscore fleet --serve` on an empty database publishes the configured queue (and its
    .high and .low) at 0, not no series."""
    import os
    import sys
    import time

    from videoscore.worker.testing.servers import free_port

    url = f"sqlite:///{tmp_path / 'v.db'}"
    upgrade(url)
    port = free_port()
    env = {**os.environ, "VIDEOSCORE_DATABASE_URL": url, "VIDEOSCORE_QUEUE": "gen"}
    process = subprocess.Popen([sys.executable, "-m", "videoscore", "fleet", "--serve", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline, "the exporter never answered"
                time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=30)
    load = _samples(text, QUEUE_LOAD_METRIC)
    assert load == {(("queue", "gen.high"),): 0.0, (("queue", "gen"),): 0.0, (("queue", "gen.low"),): 0.0}
