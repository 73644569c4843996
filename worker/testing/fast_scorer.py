"""The fast stand-in scorer: deterministic pseudo-scores in microseconds, for tests where the model is not the point.

Fleet tests (kill a worker mid-run, restart Redis, stop the database, soak 10,000 jobs) need every job to go
through the real task path (claim → fetch from S3 → sample frames → engine batch → persist) but cannot wait
for a forward pass per job on a CPU. A checkpoint folder built by `build_fast_stand_in` makes the engine load
this scorer instead of the model. It is never the default: a job must name the folder as its model, and its
scores are stored with `stand_in_model = True` like any untrained stand-in's.

It keeps a *call log* when the folder names a directory for one: one line per scored request
(`<pid> <sha1 of the prompt>`) appended to `calls-<pid>.log` with a single `write` on an O_APPEND file, so
the line is in the file before the score is returned and survives a SIGKILL of the worker. Tests give every
job a unique prompt and count lines per job: two lines for one job means it was scored twice.

Three prompt markers simulate what a real model can do to a worker, for fault tests only:
`#stand-in:fail` raises inside the forward pass (an unexpected, retried error), `#stand-in:sleep=<s>` holds
the engine thread for that long (a slow forward pass) and `#stand-in:crash` kills the worker process with
SIGKILL (a segfault or the OOM killer: a poison job that takes its worker down on every attempt).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import signal
import threading
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from videoscore.core.errors import PromptTooLongError
from videoscore.core.variants import ASPECTS, STAND_IN_MARKER, ModelSpec
from videoscore.worker.model.preprocess import PreparedRequest, ScoreRequest, validate
from videoscore.worker.model.scorer import AspectScores, BatchResult

FAST_SCORER = "fast"  # the value of "scorer" in videoscore.json
FAIL_MARKER = "#stand-in:fail"
CRASH_MARKER = "#stand-in:crash"
SLEEP_MARKER = re.compile(r"#stand-in:sleep=([0-9.]+)")
# What the real processor spends per frame (64 image tokens plus separators), for the length check.
TOKENS_PER_FRAME = 67
DEFAULT_MAX_TOKENS = 8192


def prompt_digest(prompt: str) -> str:
    """The call log's name for a prompt (tests compute the same to map lines back to jobs)."""
    return hashlib.sha1(prompt.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def build_fast_stand_in(
    out: Path, *, variant: str = "TIGER-Lab/VideoScore", call_log_dir: Path | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> Path:
    """Write a model folder that the worker resolves like a checkpoint and scores with `FastScorer`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # resolve_model wants a config.json next to the marker; nothing reads it for this scorer.
    (out / "config.json").write_text(json.dumps({"model_type": "videoscore-fast-stand-in"}) + "\n")
    marker = {
        "variant": variant,
        "stand_in": True,
        "scorer": FAST_SCORER,
        "max_tokens": max_tokens,
        "call_log_dir": str(call_log_dir) if call_log_dir else None,
        "note": "FAST STAND-IN: pseudo-scores computed from pixels and prompt; not a model",
    }
    (out / STAND_IN_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return out


def is_fast_stand_in(source: str) -> bool:
    marker = Path(source) / STAND_IN_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("scorer") == FAST_SCORER
    except (OSError, ValueError):
        return False


class FastPreprocessor:
    """The fast stand-in's `PreprocessorProtocol` (worker.model.preprocess): a prepared request keeps the mean of a
    coarse grid of its pixels, which is all `FastScorer` reads."""

    def __init__(self, spec: ModelSpec, *, max_tokens: int) -> None:
        if not spec.stand_in:
            raise ValueError("the fast scorer only serves stand-in model folders")
        self.spec = spec
        self.max_tokens = max_tokens

    @classmethod
    def load(cls, spec: ModelSpec) -> "FastPreprocessor":
        meta = json.loads((Path(spec.source) / STAND_IN_MARKER).read_text())
        return cls(spec, max_tokens=int(meta.get("max_tokens") or DEFAULT_MAX_TOKENS))

    def check_prompt(self, prompt: str, num_frames: int | None = None) -> None:
        frames = num_frames if num_frames is not None else self.spec.num_frames
        tokens = math.ceil(len(prompt.encode("utf-8", "surrogatepass")) / 4) + TOKENS_PER_FRAME * frames + 32
        if tokens > self.max_tokens:
            raise PromptTooLongError(
                f"prompt and {frames} frames need about {tokens} tokens; the model accepts {self.max_tokens}"
            )

    def prepare(self, request: ScoreRequest) -> PreparedRequest:
        started = time.perf_counter()
        validate(request)
        self.check_prompt(request.prompt, len(request.frames))
        pixels = float(np.mean([frame[::8, ::8].mean() for frame in request.frames]))
        height, width = request.frames[0].shape[:2]  # what the model's preprocessors key batches by, in small
        return PreparedRequest(prompt=request.prompt, num_frames=len(request.frames), input_ids=[], inputs=pixels,
                               shape_key=(len(request.frames), height, width), prepare_s=time.perf_counter() - started)


class FastScorer:
    """A `ScorerProtocol` (worker.model.scorer), as the model's `Scorer` is; scores are a hash of pixels and prompt."""

    device = "cpu"

    def __init__(self, spec: ModelSpec, *, max_tokens: int, call_log_dir: Path | None) -> None:
        self.preprocessor = FastPreprocessor(spec, max_tokens=max_tokens)
        self.spec = spec
        self.max_tokens = max_tokens
        self.revision = "fast-stand-in"
        self._log_fd: int | None = None
        self._log_lock = threading.Lock()
        if call_log_dir is not None:
            call_log_dir.mkdir(parents=True, exist_ok=True)
            path = call_log_dir / f"calls-{os.getpid()}.log"
            self._log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    @classmethod
    def load(cls, spec: ModelSpec) -> "FastScorer":
        meta = json.loads((Path(spec.source) / STAND_IN_MARKER).read_text())
        log_dir = meta.get("call_log_dir")
        return cls(spec, max_tokens=int(meta.get("max_tokens") or DEFAULT_MAX_TOKENS),
                   call_log_dir=Path(log_dir) if log_dir else None)

    def warm_up(self) -> None:
        return None

    def close(self) -> None:
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None

    def check_prompt(self, prompt: str, num_frames: int | None = None) -> None:
        self.preprocessor.check_prompt(prompt, num_frames)

    def score(self, requests: Sequence[ScoreRequest]) -> BatchResult:
        """Prepare and score on this thread (the engine prepares in the task threads)."""
        return self.score_prepared([self.preprocessor.prepare(request) for request in requests])

    def score_prepared(self, batch: Sequence[PreparedRequest]) -> BatchResult:
        started = time.perf_counter()
        for request in batch:
            if FAIL_MARKER in request.prompt:
                raise RuntimeError("the fast stand-in was asked to fail (#stand-in:fail)")
            if CRASH_MARKER in request.prompt:
                os.kill(os.getpid(), signal.SIGKILL)
            delay = SLEEP_MARKER.search(request.prompt)
            if delay:
                time.sleep(float(delay.group(1)))
        scores = [self._score_one(r) for r in batch]
        for request in batch:
            self._log_call(request.prompt)
        return BatchResult(scores=scores, preprocess_s=0.0, forward_s=time.perf_counter() - started)

    def _score_one(self, request: PreparedRequest) -> AspectScores:
        pixels = float(request.inputs)
        seed = zlib.crc32(request.prompt.encode("utf-8", "surrogatepass")) ^ int(pixels * 1000)
        # five numbers in [1, 4], the range of VideoScore's aspects
        return AspectScores.from_logits([1.0 + 3.0 * (((seed >> (5 * i)) & 0xFFFF) / 0xFFFF)
                                         for i in range(len(ASPECTS))])

    def _log_call(self, prompt: str) -> None:
        if self._log_fd is None:
            return
        line = f"{os.getpid()} {prompt_digest(prompt)}\n".encode()
        with self._log_lock:
            os.write(self._log_fd, line)
