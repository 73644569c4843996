"""One job's path through the stages: fetch → sample frames → prepare → score (batched on the engine) → result.

Each stage raises its own error kinds (core.errors); this module only strings them together and times them.
Persisting the result is the task's business (worker.tasks), so this code never touches the database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from videoscore.core.variants import ASPECTS, ModelSpec, resolve_model
from videoscore.db.queries import ContentKey
from videoscore.db.records import JobRecord, ScoreResult
from videoscore.worker.model.engine import Engine
from videoscore.worker.model.recipes import recipe_for
from videoscore.worker.model.scorer import ScoreRequest
from videoscore.worker.service.dedupe import FindScored, checkpoint_revision_of
from videoscore.worker.video.storage import VideoStore


@dataclass(frozen=True)
class StageLimits:
    max_pixels: int
    num_frames_override: int | None
    result_timeout_s: float
    max_decode_bytes: int | None = None  # the job's memory budget for decoded frames (None: no budget)


def score_one_job(job: JobRecord, *, store: VideoStore, engine: Engine, limits: StageLimits,
                  find_scored: FindScored | None = None) -> ScoreResult:
    """Score one job. The job is announced to the engine first, so a batch waiting to fill knows that this job's
    request is still to come, and stops waiting once every job in flight has submitted or left."""
    with engine.expecting_request():
        return _score_job(job, store=store, engine=engine, limits=limits, find_scored=find_scored)


def _score_job(job: JobRecord, *, store: VideoStore, engine: Engine, limits: StageLimits,
               find_scored: FindScored | None) -> ScoreResult:
    spec = resolve_model(job.model)
    if find_scored is not None and not job.force:
        earlier = _scored_before(job, spec, store, find_scored, limits)
        if earlier is not None:
            return earlier
    # Each model family samples its own way (Idefics2: N frames by the card's rule; Qwen2-VL: 8 fps).
    recipe = recipe_for(spec.variant.family, num_frames=spec.num_frames)
    with store.fetch(job.video_uri) as fetched:
        sampled = recipe.sample(fetched.path, num_frames=limits.num_frames_override, max_pixels=limits.max_pixels,
                                max_decode_bytes=limits.max_decode_bytes)
    # Prepared in this thread (the processor's per-video work); the engine queues the compact result.
    future = engine.submit(spec, ScoreRequest(frames=sampled.frames, prompt=job.prompt))
    sampled.frames.clear()  # the prepared copy is what waits for the batch
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


def _scored_before(job: JobRecord, spec: ModelSpec, store: VideoStore, find_scored: FindScored,
                   limits: StageLimits) -> ScoreResult | None:
    """Content dedupe (worker.dedupe): the scores of an earlier job on the same ETag, prompt, model, revision
    and frame count, found with one query instead of a decode and a forward pass.

    The ETag is the job's own GET's: a PrefetchingStore (what the task passes) downloads the video now and
    hands the download to the fetch below on a miss; any other store answers with a HEAD. Only s3:// videos
    have an ETag, and nothing is fetched early when the checkpoint's revision is unknown (no key to match)."""
    from videoscore.worker.service.dedupe import PrefetchingStore

    started = time.perf_counter()
    revision = checkpoint_revision_of(spec.source)
    if revision == "unknown" or not job.video_uri.lower().startswith("s3://"):
        return None
    etag = store.prefetch(job.video_uri).etag if isinstance(store, PrefetchingStore) else store.etag(job.video_uri)
    if etag is None:
        return None
    num_frames = limits.num_frames_override or spec.num_frames
    earlier = find_scored(ContentKey(etag, job.prompt, job.model, revision, num_frames))
    return None if earlier is None else replace(earlier, download_s=time.perf_counter() - started)
