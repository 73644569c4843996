"""Alembic's entry point: runs migrations online against the URL that db.migrate put in the config."""

from __future__ import annotations

from alembic import context

from videoscore.db.models import Base
from videoscore.db.session import make_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
