"""analyst SQL: jsonb tags and frame indices (PostgreSQL), column comments, the job_scores view

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 13:00:00

For people who query the database directly. On PostgreSQL `jobs.tags` and `jobs.frame_indices` become `jsonb`
(`USING col::jsonb`: every stored value is valid JSON, so nothing is lost; key order and duplicate keys are
jsonb's, which the application never relied on), `tags` gets a GIN index so `tags @> '{"seed": "2"}'` is an
index scan, and every column of `jobs` gets a comment (`\\d+ jobs` explains the table). On both backends the
view `job_scores` gives one row per finished job (succeeded, failed or cancelled: the scores of the latter two
are NULL) with what an analysis needs and nothing about leases or provenance. SQLite has no jsonb and no
column comments: its columns stay JSON text and it gets the view only. Downgrading drops the view, the index
and the comments and turns the columns back into `json`.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSONB_COLUMNS = ("tags", "frame_indices")
TAGS_INDEX = "ix_jobs_tags_gin"
VIEW = "job_scores"
SCORES = ("visual_quality", "temporal_consistency", "dynamic_degree", "text_to_video_alignment",
          "factual_consistency")
# the view's definition as of this revision (a later revision that changes it replaces it whole)
VIEW_SQL = f"""CREATE VIEW {VIEW} AS
SELECT id, batch, model, status, {", ".join(SCORES)}, tags, created_at, finished_at
FROM jobs
WHERE status IN ('succeeded', 'failed', 'cancelled')"""
VIEW_COMMENT = ("One row per finished job (succeeded, failed or cancelled; scores are NULL unless succeeded): "
                "id, batch, model, status, the five aspect scores, tags, created_at, finished_at. "
                "Filter tags with containment: WHERE tags @> '{\"seed\": \"2\"}' (GIN-indexed on jobs.tags).")

COLUMN_COMMENTS = {
    "id": "Job id: 32 hex characters (128 random bits)",
    "idempotency_key": "Caller's key: a resubmission with the same key returns this job instead of a new one",
    "video_uri": "Where the video is read from (s3://bucket/key, or file:// where allowed)",
    "prompt": "The text prompt the video was generated from (scored for text-to-video alignment)",
    "model": "Scoring model (Hugging Face repository id)",
    "batch": "Batch name the caller grouped the job under (NULL: none)",
    "tags": "Caller's key/value labels (JSON object of strings); filter with tags @> '{\"key\": \"value\"}'",
    "queue": "Broker queue the job was sent to",
    "priority": "low, normal or high",
    "force": "Score again even if scores for the same video content, prompt and model exist",
    "status": "queued, running, succeeded, failed or cancelled",
    "attempts": "Times a worker claimed the job (also the fencing token of the current claim)",
    "created_at": "When the job was submitted (UTC)",
    "enqueued_at": "When its message was last sent to the broker (UTC)",
    "started_at": "When a worker last claimed it (UTC)",
    "heartbeat_at": "Last heartbeat of the worker holding it (UTC); a stale one means the worker was lost",
    "finished_at": "When it reached succeeded, failed or cancelled (UTC)",
    "worker_host": "Worker (host/pid) that holds or last held the job",
    "error_kind": "Why it failed, as a stable kind (videoscore.core.errors); NULL unless failed",
    "error_message": "Human-readable failure detail (cut to 4000 characters)",
    "visual_quality": "Aspect score: visual quality (model scale, full precision)",
    "temporal_consistency": "Aspect score: temporal consistency",
    "dynamic_degree": "Aspect score: dynamic degree",
    "text_to_video_alignment": "Aspect score: text-to-video alignment",
    "factual_consistency": "Aspect score: factual consistency",
    "model_revision": "Commit of the model weights that scored the job",
    "stand_in_model": "True if a stand-in (test) model produced the scores",
    "num_frames": "Frames the model saw",
    "frame_indices": "Indices of the sampled frames in the video (JSON array)",
    "video_etag": "The video object's ETag (content identity for dedupe)",
    "video_bytes": "Size of the video object in bytes",
    "video_total_frames": "Frames in the video",
    "video_fps": "Frames per second of the video",
    "video_duration_s": "Duration of the video in seconds",
    "video_width": "Width of the video in pixels",
    "video_height": "Height of the video in pixels",
    "download_s": "Seconds spent downloading the video",
    "decode_s": "Seconds spent decoding the sampled frames",
    "preprocess_s": "Seconds of the batch's preprocessing attributed to the job",
    "forward_s": "Seconds of the batch's forward pass attributed to the job",
    "deduplicated_from": "Job whose scores were copied (same video content, prompt and model); NULL if scored",
}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for column in JSONB_COLUMNS:
            op.execute(f"ALTER TABLE jobs ALTER COLUMN {column} TYPE jsonb USING {column}::jsonb")
        op.execute(f"CREATE INDEX {TAGS_INDEX} ON jobs USING gin (tags jsonb_path_ops)")
        for column, comment in COLUMN_COMMENTS.items():
            op.execute(f"COMMENT ON COLUMN jobs.{column} IS {_quote(comment)}")
        op.execute(VIEW_SQL)
        op.execute(f"COMMENT ON VIEW {VIEW} IS {_quote(VIEW_COMMENT)}")
    else:
        op.execute(VIEW_SQL)


def downgrade() -> None:
    op.execute(f"DROP VIEW IF EXISTS {VIEW}")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {TAGS_INDEX}")
        for column in COLUMN_COMMENTS:
            op.execute(f"COMMENT ON COLUMN jobs.{column} IS NULL")
        for column in JSONB_COLUMNS:
            op.execute(f"ALTER TABLE jobs ALTER COLUMN {column} TYPE json USING {column}::json")
