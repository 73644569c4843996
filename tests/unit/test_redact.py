"""Credentials never reach a log line: the filter masks database and broker passwords, the S3 secret and
API tokens in messages and in tracebacks."""

from __future__ import annotations

import io
import logging

from videoscore.core.settings import Settings
from videoscore.worker.service.redact import MASK, RedactSecrets, secrets_of

SETTINGS = Settings(
    database_url="postgresql+psycopg://videoscore:db-pa%24%24word@db.internal:5432/videoscore",
    broker_url="redis://:broker-secret-1@redis.internal:6379/0",
    s3_secret_access_key="s3-SECRET-key",  # type: ignore[arg-type]
    api_tokens=["api-token-xyz"],  # type: ignore[list-item]
)


def test_every_secret_in_the_settings_is_found_percent_encoded_or_not() -> None:
    found = set(secrets_of(SETTINGS))
    assert {"db-pa$$word", "db-pa%24%24word", "broker-secret-1", "s3-SECRET-key", "api-token-xyz"} <= found


def test_messages_and_tracebacks_are_masked() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets(secrets_of(SETTINGS)))
    logger = logging.getLogger("test-redact")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("could not connect to %s", SETTINGS.database_url)
        try:
            raise RuntimeError("signature with s3-SECRET-key failed")
        except RuntimeError:
            logger.exception("fetch failed for key %s", "api-token-xyz")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "db-pa" not in text and "s3-SECRET-key" not in text and "api-token-xyz" not in text
    assert text.count(MASK) >= 3 and "RuntimeError" in text
