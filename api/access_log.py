"""The access log without secrets: uvicorn's access lines with the values of token-like query parameters redacted.

The API reads its token from the Authorization header only, yet clients do send `?access_token=…` (or `token`,
`api_key`, a signature) in a URL, and uvicorn's access log prints the path with its query verbatim. A filter on
the `uvicorn.access` logger rewrites each line's arguments before any handler formats them; it survives
uvicorn's logging configuration, which replaces handlers, not a logger's filters.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

ACCESS_LOGGER = "uvicorn.access"
REDACTED = "[redacted]"
# Query parameter names whose values are secrets: access_token, token, id_token, api_key, apikey, secret, password,
# signature, sig, auth, key, … (matched on the decoded name, case-insensitively)
_SECRET_NAME = re.compile(r"(token|secret|passw|api[-_]?key|^key$|^sig$|signature|^auth|credential|session)", re.I)


def redact_query(target: str) -> str:
    """`target` (a path with its query, or any text holding one) with secret query values replaced."""
    path, mark, query = target.partition("?")
    if not mark:
        return target
    fragment_mark = "#" if "#" in query else ""
    query, _, fragment = query.partition("#")
    parts = []
    for part in re.split(r"([&;])", query):
        name, equals, _value = part.partition("=")
        if equals and _SECRET_NAME.search(unquote_plus(name)):
            part = f"{name}={REDACTED}"
        parts.append(part)
    return f"{path}?{''.join(parts)}{fragment_mark}{fragment}"


class RedactSecretQueryValues(logging.Filter):
    """Rewrites the text arguments of each record (uvicorn passes the request target as one) before formatting."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) and "?" in a else a for a in record.args)
        elif isinstance(record.msg, str) and "?" in record.msg and not record.args:
            record.msg = redact_query(record.msg)
        return True


def install_access_log_redaction() -> None:
    """Put the filter on uvicorn's access logger (once, however many apps a process creates)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, RedactSecretQueryValues) for f in logger.filters):
        logger.addFilter(RedactSecretQueryValues())
