"""Content dedupe for the worker: answer a job from an earlier job's scores when nothing that matters differs.

The key (db.queries.ContentKey) is the video's S3 ETag (read with a HEAD before any download), the prompt, the
model, the checkpoint revision this worker would load and the frame count it would sample. A match copies the
earlier scores and provenance and records `deduplicated_from`; no download, decode or GPU time is spent.
A job submitted with `force` skips the look-up. Dedupe is an optimisation: a failed look-up scores normally.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache

from sqlalchemy.exc import SQLAlchemyError

from videoscore.db import queries
from videoscore.db.queries import ContentKey
from videoscore.db.records import ScoreResult
from videoscore.db.session import Database

log = logging.getLogger(__name__)

FindScored = Callable[[ContentKey], ScoreResult | None]


def scored_lookup(db: Database) -> FindScored:
    """A look-up of earlier scores in this worker's database, for worker.pipeline.score_one_job."""

    def find(key: ContentKey) -> ScoreResult | None:
        try:
            with db.transaction() as session:
                return queries.find_scored_duplicate(session, key)
        except SQLAlchemyError as exc:
            log.warning("dedupe look-up skipped (database: %s); scoring the job", type(exc).__name__)
            return None

    return find


@lru_cache(maxsize=64)
def checkpoint_revision_of(source: str) -> str:
    """The revision the scorer will record for this checkpoint (cached: it hashes safetensors headers)."""
    from videoscore.worker.model.scorer import checkpoint_revision

    return checkpoint_revision(source)
