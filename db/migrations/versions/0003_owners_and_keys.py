"""owners and keys: a batch's owning API token, one spelling per idempotency key

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 12:30:00

Adds `batches.owner_token_hash`: the SHA-256 (hex) of the API token that created the batch, never the token;
NULL is the operator's (SDK, CLI), which every batch registered before this revision becomes, so no token can
take over a webhook it may not have registered. Rewrites the idempotency keys that are not their own normal
form (videoscore.core.jobspec.normalize_idempotency_key) to it, so a resubmission of such a key after the
upgrade finds its job; a key whose normal form another job already holds keeps its spelling. Only keys with
a character outside printable ASCII are read (the others are their own normal form). Downgrading drops the
column and leaves the keys normalised.
"""

from __future__ import annotations

import logging
import unicodedata

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")

# Copied from videoscore.core.jobspec (normalize_idempotency_key and its table) as of this revision: a
# migration keeps the rule it was written with, whatever the application's rule becomes.
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180e"
                                    "\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                                    "\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\u3164"
                                    "\ufe00\ufe01\ufe02\ufe03\ufe04\ufe05\ufe06\ufe07\ufe08\ufe09\ufe0a"
                                    "\ufe0b\ufe0c\ufe0d\ufe0e\ufe0f\ufeff\uffa0"))


def _normal_key(key: str) -> str:
    return unicodedata.normalize("NFKC", key).translate(_ZERO_WIDTH).strip()


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner_token_hash", sa.String(length=64), nullable=True))
    _normalise_idempotency_keys()


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("owner_token_hash")


def _normalise_idempotency_keys() -> None:
    connection = op.get_bind()
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("idempotency_key", sa.String))
    key = jobs.c.idempotency_key
    # a space or anything but printable ASCII: the only keys normalisation can change
    unusual = key.regexp_match("[^!-~]") if connection.dialect.name == "postgresql" else key.op("GLOB")("*[^!-~]*")
    candidates = connection.execute(sa.select(jobs.c.id, key).where(unusual)).all()
    kept = 0
    for job_id, old in candidates:
        new = _normal_key(old)
        if new == old or not new or len(new) > 200:
            continue
        taken = connection.execute(sa.select(jobs.c.id).where(key == new)).first()
        if taken is not None:
            kept += 1
            continue
        connection.execute(sa.update(jobs).where(jobs.c.id == job_id).values(idempotency_key=new))
    if kept:
        log.warning("%d idempotency keys keep their spelling: their normal form names another job", kept)
