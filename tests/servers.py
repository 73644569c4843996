"""The real servers the suite runs against: Redis and S3 (from worker.embedded) plus PostgreSQL.

PostgreSQL is Debian's, started with initdb/pg_ctl as the `postgres` user when the suite runs as root,
listening on 127.0.0.1 only, on a free port, and stopped by the PID in its postmaster.pid.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from worker.embedded import free_port, wait_for_port


def _pg_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} not found: apt-get install postgresql")
    return candidates[-1]


class PostgresServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.port = free_port()
        self.pid: int | None = None

    def _as_postgres(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def start(self) -> "PostgresServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
            os.chmod(self.workdir, 0o755)
        if not (self.data / "PG_VERSION").exists():  # a restart reuses the data directory
            initdb = [_pg_binary("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
            subprocess.run(self._as_postgres(initdb), check=True, capture_output=True)
        options = f"-h 127.0.0.1 -p {self.port} -k {self.workdir} -c fsync=off -c full_page_writes=off"
        pg_ctl = [_pg_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.workdir / "postgres.log"),
                  "-o", options, "-w", "start"]
        subprocess.run(self._as_postgres(pg_ctl), check=True, capture_output=True)
        self.pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGINT)  # "fast" shutdown
        except ProcessLookupError:
            return
        for _ in range(200):
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        self.pid = None

    def restart(self, *, down_for_s: float = 0.0) -> None:
        """Stop the server (fast shutdown: clients are disconnected), stay down, then start it on the same port."""
        self.stop()
        time.sleep(down_for_s)
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
