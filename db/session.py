"""Engines and sessions: one place that knows how to connect to SQLite or PostgreSQL well.

Stale connections (PostgreSQL). A pooled connection can be dead when it is checked out: the server restarted,
an operator or a proxy closed it, a middlebox forgot it. No `SELECT 1` per checkout (`pool_pre_ping`: a round
trip before every transaction, a tenth of a fast worker's CPU); instead, in SQLAlchemy's terms, a cheap
pessimistic check plus the optimistic one:

* `pool_recycle`: a connection older than POOL_RECYCLE_S is replaced at checkout, before an idle timeout of a
  proxy or firewall can silently drop it;
* at checkout, a connection whose socket is readable is replaced (`_closed_by_server`): an idle PostgreSQL
  connection has nothing to read unless the server closed it (a restart, `pg_terminate_backend`, an idle
  timeout that closes), which leaves an error message or EOF there. One `poll()` system call, no round trip;
* what neither catches (a connection that dies between checkout and its first statement, or mid-transaction)
  fails with a disconnect: SQLAlchemy invalidates that connection and every pooled one older than the failure
  (`DBAPIError.connection_invalidated` is set), and `Database.run` runs the unit of work once more on a fresh
  connection. Only units that may run twice belong there (see `run`).
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

T = TypeVar("T")

POOL_RECYCLE_S = 300
"""Replace a pooled PostgreSQL connection this old at its next checkout (below common proxy idle timeouts)."""


def make_engine(url: str) -> Engine:
    """An engine tuned for many short transactions from producers and workers at once."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, pool_size=5, max_overflow=10, pool_recycle=POOL_RECYCLE_S)
    event.listen(engine, "checkout", _closed_by_server)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the producer poll while a worker writes; busy_timeout waits instead of failing on a lock.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _closed_by_server(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Checkout: refuse a connection the server has closed, so that the pool connects afresh (no round trip).

    Between transactions the client has read every reply, so anything readable on the socket (a FATAL
    message such as "terminating connection due to administrator command", or EOF) means the server is done
    with this connection. Raising DisconnectionError makes the pool invalidate it and check out a new one.
    """
    if getattr(dbapi_connection, "closed", False) or getattr(dbapi_connection, "broken", False):
        raise DisconnectionError("the driver knows this pooled connection is closed")
    try:
        fd = dbapi_connection.fileno()
    except Exception:  # noqa: BLE001 - a driver without a socket to look at: nothing to check
        return
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    if poller.poll(0):
        raise DisconnectionError("the server closed this pooled connection")


class Database:
    """An engine plus its session factory; `with db.transaction() as s:` is one committed unit of work."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def run(self, work: Callable[[Session], T], *, one_statement: bool = False) -> T:
        """`work(session)` in one transaction, run once more if it failed because its connection was dead.

        The second run gets a fresh connection (SQLAlchemy invalidated the dead one, and the pooled ones older
        than it). A connection found dead at the transaction's first statement means nothing of the first run
        reached the database; one that dies later, at COMMIT at worst, may have applied it without saying so.
        So only pass work that is safe to apply twice: reads, and conditional writes whose second run is a
        no-op or an outcome the caller checks (worker.service.gate says why each task's unit is). Any other
        error, or a second disconnect, is raised.

        `one_statement`: `work` runs a single statement, which is then its own transaction (autocommit: no
        BEGIN and COMMIT round trips around it). For reads: a write would commit even when reading back its
        result fails (e.g. a row that is not valid UTF-8 in SQLite), where a transaction would roll it back.
        """
        try:
            return self._run_once(work, one_statement)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            log.info("database connection was closed under a transaction (%s); running it again on a new one",
                     type(exc.orig).__name__)
        return self._run_once(work, one_statement)

    def _run_once(self, work: Callable[[Session], T], one_statement: bool) -> T:
        with self.transaction() as session:
            if one_statement:
                session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            return work(session)

    def dispose(self) -> None:
        self.engine.dispose()
