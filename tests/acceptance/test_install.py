"""The package as a pipeline installs it: one import name, and no clash with the pipeline's own packages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from videoscore.core.settings import Settings
from videoscore.db.migrate import upgrade
from videoscore.db.session import Database

ROOT = Path(__file__).resolve().parents[2]
ROOMS = ("core", "db", "producer", "api", "worker")

LIST_TOP_LEVEL = "import json, pkgutil; print(json.dumps(sorted({m.name for m in pkgutil.iter_modules()})))"


def _top_level_names(python: Path) -> set[str]:
    # run outside the repository: its folders would otherwise count as importable from the working directory
    out = subprocess.run([str(python), "-c", LIST_TOP_LEVEL], capture_output=True, text=True, check=True,
                         cwd=python.parent).stdout
    return set(json.loads(out))


@pytest.mark.slow
def test_a_non_editable_install_adds_exactly_one_top_level_import_name(tmp_path: Path) -> None:
    # Built from a copy: setuptools writes build/ and *.egg-info/ beside the sources it builds.
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    for room in ("videoscore", *ROOMS):
        shutil.copytree(ROOT / room, source / room, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(source)], check=True, capture_output=True, text=True)
    [wheel] = wheels.glob("videoscore_queue-*.whl")
    env_dir = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    before = _top_level_names(python)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, text=True)
    added = _top_level_names(python) - before
    assert added == {"videoscore"}


def test_a_pipeline_with_its_own_core_db_and_api_packages_imports_the_sdk_and_submits(
        tmp_path: Path, redis_server) -> None:  # type: ignore[no-untyped-def]
    pipeline = tmp_path / "pipeline"
    for name in ("core", "db", "api"):
        (pipeline / name).mkdir(parents=True)
        (pipeline / name / "__init__.py").write_text(f"OWNER = 'the pipeline'  # its own {name} package\n")
    database_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(database_url)
    (pipeline / "submit.py").write_text(
        "import json, core, db, api\n"
        "from videoscore.core.settings import Settings\n"
        "from videoscore.producer import Client\n"
        f"client = Client(Settings(database_url={database_url!r}, broker_url={redis_server.url!r}))\n"
        "job = client.submit('s3://gen-videos/run42/0001.mp4', prompt='a cat surfing', batch='run42')\n"
        "print(json.dumps({'owners': [core.OWNER, db.OWNER, api.OWNER], 'job': job.id}))\n"
    )
    run = subprocess.run([sys.executable, "submit.py"], cwd=pipeline, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    printed = json.loads(run.stdout.strip().splitlines()[-1])
    assert printed["owners"] == ["the pipeline"] * 3, "the pipeline's own packages were shadowed"
    with Database(Settings(database_url=database_url).database_url).transaction() as session:
        from videoscore.db import jobs

        job = jobs.get_job(session, printed["job"])
    assert job is not None and job.status == "queued" and job.batch == "run42"
