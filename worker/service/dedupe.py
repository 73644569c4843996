"""Content dedupe for the worker: answer a job from an earlier job's scores when nothing that matters differs.

The key (db.queries.ContentKey) is the video's S3 ETag, the prompt, the model, the checkpoint revision this
worker would load and the frame count it would sample. The ETag comes from the job's own GET: the task hands
the pipeline a `PrefetchingStore`, whose `prefetch` downloads the video before the look-up and keeps it for the
pipeline's fetch, so a job that is scored makes one S3 request (a HEAD first cost a request and ~3 ms of
boto3 CPU per job). A match copies the earlier scores and provenance and records `deduplicated_from`; no
decode or GPU time is spent (the download was). A job submitted with `force` skips the look-up. Dedupe is an
optimisation: a failed look-up scores normally.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from videoscore.db import queries
from videoscore.db.queries import ContentKey
from videoscore.db.records import ScoreResult
from videoscore.db.session import Database
from videoscore.worker.video.storage import FetchedVideo, VideoStore

log = logging.getLogger(__name__)

FindScored = Callable[[ContentKey], ScoreResult | None]


def scored_lookup(db: Database) -> FindScored:
    """A look-up of earlier scores in this worker's database, for worker.pipeline.score_one_job."""

    def find(key: ContentKey) -> ScoreResult | None:
        try:
            # one SELECT: safe to run again, and a read needs no BEGIN and COMMIT around it
            return db.run(lambda session: queries.find_scored_duplicate(session, key), one_statement=True)
        except SQLAlchemyError as exc:
            log.warning("dedupe look-up skipped (database: %s); scoring the job", type(exc).__name__)
            return None

    return find


class PrefetchingStore(VideoStore):
    """The worker's VideoStore, for one job: `prefetch(uri)` downloads now, and the next `fetch(uri)` yields that.

    The download's scratch copy is removed when the pipeline's `with fetch(uri)` block ends, as a plain fetch's
    is, or at `close()` if the pipeline never asked for it (the job was answered from earlier scores). Every
    S3 call goes through the wrapped store (attributes it lacks here are the wrapped store's).
    """

    def __init__(self, store: VideoStore) -> None:  # no super().__init__(): no S3 client of its own
        self.settings = store.settings
        self._store = store
        self._held: dict[str, tuple[ExitStack, FetchedVideo]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def prefetch(self, uri: str) -> FetchedVideo:
        """Fetch the video now (errors as `fetch` raises them); the pipeline's next `fetch(uri)` gets this copy."""
        if uri in self._held:
            return self._held[uri][1]
        with ExitStack() as stack:
            fetched = stack.enter_context(self._store.fetch(uri))
            self._held[uri] = (stack.pop_all(), fetched)
        return fetched

    @contextmanager
    def fetch(self, uri: str) -> Iterator[FetchedVideo]:
        held = self._held.pop(uri, None)
        if held is None:
            with self._store.fetch(uri) as fetched:
                yield fetched
            return
        stack, fetched = held
        with stack:
            yield fetched

    def etag(self, uri: str) -> str | None:
        return self._store.etag(uri)

    def close(self) -> None:
        while self._held:
            _uri, (stack, _fetched) = self._held.popitem()
            stack.close()

    def __enter__(self) -> PrefetchingStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@lru_cache(maxsize=64)
def checkpoint_revision_of(source: str) -> str:
    """The revision the scorer will record for this checkpoint (cached: it hashes safetensors headers)."""
    from videoscore.worker.model.scorer import checkpoint_revision

    return checkpoint_revision(source)
