"""One job's path through the stages: fetch → sample frames → score (batched on the engine) → result.

Each stage raises its own error kinds (core.errors); this module only strings them together and times them.
Persisting the result is the task's business (worker.tasks), so this code never touches the database.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.variants import ASPECTS, resolve_model
from db.records import JobRecord, ScoreResult
from worker.engine import Engine
from worker.frames import sample_video
from worker.scorer import ScoreRequest
from worker.storage import VideoStore


@dataclass(frozen=True)
class StageLimits:
    max_pixels: int
    num_frames_override: int | None
    result_timeout_s: float


def score_one_job(job: JobRecord, *, store: VideoStore, engine: Engine, limits: StageLimits) -> ScoreResult:
    spec = resolve_model(job.model)
    num_frames = limits.num_frames_override or spec.num_frames
    with store.fetch(job.video_uri) as fetched:
        sampled = sample_video(fetched.path, num_frames, max_pixels=limits.max_pixels)
    future = engine.submit(spec, ScoreRequest(frames=sampled.frames, prompt=job.prompt))
    outcome = future.result(timeout=limits.result_timeout_s)
    info = sampled.info
    return ScoreResult(
        scores=dict(zip(ASPECTS, outcome.scores.as_list(), strict=True)),
        model_revision=outcome.model_revision,
        stand_in_model=outcome.stand_in,
        num_frames=len(sampled.indices),
        frame_indices=list(sampled.indices),
        video_etag=fetched.etag,
        video_bytes=fetched.size_bytes,
        video_total_frames=info.total_frames,
        video_fps=info.fps,
        video_duration_s=info.duration_s,
        video_width=info.width,
        video_height=info.height,
        download_s=fetched.download_s,
        decode_s=sampled.decode_s,
        preprocess_s=outcome.preprocess_s,
        forward_s=outcome.forward_s,
    )
