"""Worker processes for tests: the real `videoscore worker` command in a child process, stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from videoscore.core.settings import Settings


class WorkerProcess:
    def __init__(self, settings: Settings, log_path: Path, *, concurrency: int = 2, name: str = "w1") -> None:
        self.settings = settings
        self.log_path = log_path
        self.concurrency = concurrency
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "WorkerProcess":
        env = {**os.environ, **self.settings.to_env()}
        argv = [sys.executable, "-m", "videoscore.worker.testing.fleet_worker", "worker",
                "--concurrency", str(self.concurrency), "--hostname", f"{self.name}@%h", "--loglevel", "INFO"]
        self.process = subprocess.Popen(argv, env=env, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until Celery says the worker consumes (after the model is loaded and warmed up)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log()}")
            text = self.log()
            if " ready." in text and "loaded " in text:
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout_s}s:\n{self.log()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.kill(self.process.pid, sig)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            return self.process.wait()
