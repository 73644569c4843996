"""The `videoscore` command behaves in scripts: data on stdout, one-line errors on stderr with a non-zero exit
and no traceback (unless --debug), bad values refused with exit 2, and nothing silently cut short.

The real CLI runs as a subprocess (`python -m videoscore`) against SQLite and the suite's Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from videoscore.core.settings import Settings
from videoscore.db.migrate import upgrade
from videoscore.producer.client import Client
from videoscore.worker.testing.servers import RedisServer

DOWN_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def videoscore(*args: str, env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VIDEOSCORE_")}
    return subprocess.run([sys.executable, "-m", "videoscore", *args], env={**clean, "COLUMNS": "200", **env},
                          capture_output=True, text=True, timeout=timeout, check=False)


def one_line_error(run: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    lines = run.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), run.stderr
    return lines[-1]


@pytest.fixture
def env(tmp_path: Path, redis_server: RedisServer) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    upgrade(url)
    return {"VIDEOSCORE_DATABASE_URL": url, "VIDEOSCORE_BROKER_URL": redis_server.url,
            "VIDEOSCORE_QUEUE": f"cli-{uuid.uuid4().hex[:6]}"}


def submit_jobs(env: dict[str, str], count: int, batch: str) -> list[str]:
    settings = Settings(database_url=env["VIDEOSCORE_DATABASE_URL"], broker_url=env["VIDEOSCORE_BROKER_URL"],
                        queue=env["VIDEOSCORE_QUEUE"])
    with Client(settings) as client:
        jobs = client.submit_many([{"video_uri": f"s3://b/{i}.mp4", "prompt": "p", "batch": batch}
                                   for i in range(count)])
    return [job.id for job in jobs]


def test_version_prints_the_installed_version() -> None:
    run = videoscore("--version", env={})
    assert run.returncode == 0 and run.stdout.startswith("videoscore 0.")


def test_a_bad_enum_value_is_refused_with_exit_2_and_the_valid_ones(env: dict[str, str]) -> None:
    for args in (["results", "--status", "bogus"], ["export", "out.csv", "--status", "bogus"],
                 ["aggregate", "--by", "prompt"], ["submit", "s3://b/k.mp4", "--prompt", "p", "--priority", "urgent"]):
        run = videoscore(*args, env=env)
        assert run.returncode == 2, (args, run.stderr)
        assert "is not one of" in one_line_error(run) and run.stdout == ""


def test_a_database_that_is_down_is_one_line_on_stderr_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    env = {"VIDEOSCORE_DATABASE_URL": f"sqlite:///{tmp_path / 'no' / 'such' / 'folder.db'}"}
    run = videoscore("results", env=env)
    assert run.returncode == 1 and "database error at sqlite:///" in one_line_error(run)
    debug = videoscore("--debug", "results", env=env)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_a_submit_stored_but_not_sent_prints_its_id_says_so_and_exits_3(env: dict[str, str]) -> None:
    run = videoscore("submit", "s3://b/k.mp4", "--prompt", "p", env={**env, "VIDEOSCORE_BROKER_URL": DOWN_BROKER})
    assert run.returncode == 3
    assert "stored but not sent to the broker" in one_line_error(run) and "do not resubmit" in run.stderr
    (job_id,) = run.stdout.split()
    status = videoscore("status", job_id, env=env)
    assert json.loads(status.stdout)["status"] == "queued"  # the reaper will send it


def test_wait_on_an_unknown_id_is_refused_at_once(env: dict[str, str]) -> None:
    run = videoscore("wait", "no-such-job", env=env, timeout=30)
    assert run.returncode == 2 and one_line_error(run) == "error: no job no-such-job"


def test_a_wait_timeout_is_one_line_and_exit_1(env: dict[str, str]) -> None:
    (job_id,) = submit_jobs(env, 1, "slow")
    run = videoscore("wait", job_id, "--timeout", "0.2", env=env)
    assert run.returncode == 1 and "1 of 1 jobs unfinished after 0.2s" in one_line_error(run)


def test_submit_of_a_manifest_prints_the_job_ids_and_wait_batch_waits_for_them(
        env: dict[str, str], tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"video_uri": f"s3://b/{i}.mp4", "prompt": "p"}) + "\n" for i in range(3)))
    run = videoscore("submit", str(manifest), "--batch", "B", "--json", env=env)
    assert run.returncode == 0, run.stderr
    jobs = json.loads(run.stdout)
    assert [j["video_uri"] for j in jobs] == [f"s3://b/{i}.mp4" for i in range(3)]
    assert "submitted 3 jobs" in run.stderr
    plain = videoscore("submit", str(manifest), "--batch", "B2", env=env)
    assert len(plain.stdout.split()) == 3 and all(len(i) == 32 for i in plain.stdout.split())

    settings = Settings(database_url=env["VIDEOSCORE_DATABASE_URL"], broker_url=env["VIDEOSCORE_BROKER_URL"])
    with Client(settings) as client:
        for job in jobs:
            client.cancel(job["id"])
    waited = videoscore("wait", "--batch", "B", "--json", env=env, timeout=60)
    assert waited.returncode == 0, waited.stderr
    assert sorted(json.loads(line)["id"] for line in waited.stdout.splitlines()) == sorted(j["id"] for j in jobs)
    assert videoscore("wait", "--batch", "none", env=env).returncode == 2


def test_results_json_pages_through_every_job_and_says_when_limit_cut_it(env: dict[str, str]) -> None:
    ids = submit_jobs(env, 1200, "big")
    run = videoscore("results", "--batch", "big", "--json", env=env)
    assert run.returncode == 0, run.stderr
    listed = [json.loads(line)["id"] for line in run.stdout.splitlines()]
    assert len(listed) == 1200 and sorted(listed) == sorted(ids)  # was: the first 100
    assert run.stderr == ""
    cut = videoscore("results", "--batch", "big", "--json", "--limit", "150", env=env)
    assert len(cut.stdout.splitlines()) == 150 and "more match, cut by --limit" in cut.stderr


def test_export_infers_the_format_from_the_suffix(env: dict[str, str], tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    submit_jobs(env, 2, "ex")
    out = tmp_path / "out.parquet"
    run = videoscore("export", str(out), env=env)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes()[:4] == b"PAR1"  # was: CSV text in a .parquet file
    csv = tmp_path / "out.csv"
    assert videoscore("export", str(csv), env=env).returncode == 0 and csv.read_text().startswith("id,")


def test_errors_keep_their_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    from videoscore import cli

    cli._error("Parquet export needs pyarrow: pip install 'videoscore-queue[export]'\nsecond line")
    assert capsys.readouterr().err.strip() == (
        "error: Parquet export needs pyarrow: pip install 'videoscore-queue[export]' second line")
