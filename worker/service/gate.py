"""The database gate: every statement a task runs passes through it, and it waits in place while the database is
unreachable, so a short outage costs neither a re-score nor an attempt (worker.service.tasks says what a task
does once the wait runs out).

A unit of work that fails because its pooled connection was dead is run again at once on a fresh connection
(`Database.run`, db.session: no `SELECT 1` before every transaction any more). Running a task's unit twice is
safe, because each is a read or a write conditional on the state the first run would change:

* claim (`claim_job(reclaim_own=True)`): if the first run committed without our hearing it, the row is
  `running` under this worker and the second run re-claims it: one more attempt is counted and its number is
  the fencing token from then on. Nobody else scores the job meanwhile: this process holds it
  (`Runtime.try_hold`), and another worker cannot claim a running job whose heartbeat is fresh.
* complete, fail, release (`complete_job`, `fail_job`, `release_for_retry`): each writes only while the row is
  `running` under this worker's claim (same host, same attempt). After a lost COMMIT the second run matches no
  row and answers False; the task then reads the row and, finding the end it tried to write, counts it as
  written (worker.service.tasks `_ended_by_us`), so the job is neither scored twice nor reported superseded.
* the batch-webhook check in the same transaction as complete/fail, the dedupe look-up and the re-read: reads.
* `fail_unclaimable`: conditional on the job being unfinished; its answer is not used.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import text
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from videoscore.core.errors import DatabaseUnavailableError
from videoscore.db.session import Database

log = logging.getLogger(__name__)

DB_DOWN = (OperationalError, InterfaceError)
T = TypeVar("T")


class DatabaseGate:
    """Runs one unit of work in a transaction, waiting in place while the database is unreachable.

    Unreachable means the statement failed with a connection-level error *and* a `SELECT 1` fails too. If the
    probe answers, the statement is retried twice more and then its error is raised as is: the database is
    up and something about this job's row is wrong (e.g. text that is not valid UTF-8 in SQLite).
    Past `wait_s` of unreachability it raises DatabaseUnavailableError.
    """

    FIRST_DELAY_S = 0.25
    MAX_DELAY_S = 5.0
    ATTEMPTS_WHEN_REACHABLE = 3

    def __init__(self, db: Database, *, wait_s: float) -> None:
        self.db = db
        self.wait_s = wait_s

    def run(self, work: Callable[[Session], T], *, what: str) -> T:
        wait_s = self.wait_s
        deadline = time.monotonic() + wait_s
        delay = self.FIRST_DELAY_S
        failures_while_reachable = 0
        warned = False
        while True:
            try:
                return self.db.run(work)  # once more on a fresh connection if the pooled one was dead
            except DB_DOWN as exc:
                if self._reachable():
                    failures_while_reachable += 1
                    if failures_while_reachable >= self.ATTEMPTS_WHEN_REACHABLE:
                        raise
                    time.sleep(0.05 * failures_while_reachable)
                    continue
                if time.monotonic() + delay > deadline:
                    raise DatabaseUnavailableError(
                        f"database unreachable for {wait_s:.0f}s while {what} ({describe(exc)})"
                    ) from None
                if not warned:
                    log.warning("database unreachable while %s (%s); waiting up to %.0fs", what, describe(exc),
                                wait_s)
                    warned = True
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(self.MAX_DELAY_S, delay * 2)

    def _reachable(self) -> bool:
        try:
            with self.db.transaction() as session:
                session.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False


def describe(exc: BaseException) -> str:
    """The driver's own first line (no SQL, no parameters, no connection string)."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [""])[0]
    return f"{type(orig).__name__}: {first[:300]}"
