"""Keep credentials out of logs: a logging filter that masks every secret the worker's settings hold.

Secrets are the passwords inside the database and broker URLs, the S3 secret key, API tokens and the webhook
secret. Drivers and libraries sometimes echo a connection string in an error; the filter rewrites the message
and any traceback text of each record before a handler writes it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

from videoscore.core.settings import Settings

MASK = "***"


def secrets_of(settings: Settings) -> list[str]:
    found: list[str] = []
    for url in (settings.database_url, settings.broker_url):
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
        if password:
            found += [password, unquote(password)]
    for value in (settings.s3_secret_access_key, settings.webhook_secret, *settings.api_tokens):
        if isinstance(value, SecretStr) and value.get_secret_value():
            found.append(value.get_secret_value())
    # the longest first, so a secret containing another is masked whole; very short ones would mask noise
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        return True


def install(settings: Settings, logger: logging.Logger | None = None) -> RedactSecrets:
    """Attach the filter to every handler of `logger` (the root logger by default)."""
    target = logger or logging.getLogger()
    redactor = RedactSecrets(secrets_of(settings))
    for handler in target.handlers:
        handler.addFilter(redactor)
    return redactor
