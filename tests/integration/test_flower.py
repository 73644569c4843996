"""Flower as compose runs it: the same command line, with its basic auth, answers 401 without the password."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from videoscore.worker.testing.servers import free_port

COMPOSE = Path(__file__).resolve().parents[2] / "docker" / "compose.yaml"


def _compose_flower_command(broker_url: str, basic_auth: str, port: int) -> list[str]:
    """compose's flower command with its variables filled in, bound to loopback on a free port."""
    command = yaml.safe_load(COMPOSE.read_text())["services"]["flower"]["command"]
    filled = []
    for arg in command:
        if arg.startswith("--broker="):
            arg = f"--broker={broker_url}"
        elif arg.startswith("--port="):
            arg = f"--port={port}"
        elif arg.startswith("--basic-auth="):
            assert "FLOWER_BASIC_AUTH" in arg, "compose must take Flower's password from FLOWER_BASIC_AUTH"
            arg = f"--basic-auth={basic_auth}"
        filled.append(arg)
    return [*filled, "--address=127.0.0.1"]


def _status(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.slow
def test_flower_from_compose_refuses_requests_without_its_password(redis_server) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("flower")  # in the test extra
    celery = Path(sys.executable).with_name("celery")  # the venv's own command, beside its interpreter
    assert celery.exists(), f"no celery command at {celery}"
    port = free_port()
    argv = _compose_flower_command(redis_server.url, "ops:s3cret", port)
    assert argv[0] == "celery"
    process = subprocess.Popen([celery, *argv[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/api/workers"
        deadline = time.monotonic() + 60
        while True:
            try:
                status = _status(url)
                break
            except OSError:
                assert process.poll() is None, "Flower exited"
                assert time.monotonic() < deadline, "Flower never answered"
                time.sleep(0.3)
        assert status == 401
        assert _status(url, "ops:wrong") == 401
        assert _status(url, "ops:s3cret") == 200
    finally:
        process.terminate()
        process.wait(timeout=30)
