"""The fleet's audit trail in PostgreSQL: a shipper copying a local audit log's
records into one append-only table, and the verification of that table.

The local log stays the first durable copy: a decision is recorded there
before its call runs, and the shipper, a background thread, copies records
later, so PostgreSQL being slow or down never blocks or slows a decision.
Schema: ``postgres.sql`` beside this module (created when missing).

Why psycopg in a Python thread rather than the ``postgres`` crate in the core:
shipping is not a security rule (the records are signed and chained before
they leave the log, and verification runs in the core), psycopg is libpq, so
every DSN form, TLS mode, ``.pgpass``/service file and authentication method
works as it does in ``psql``, and the thread spends its time in libpq and in
the core's :class:`~execgate._core.LogReader`, both without the GIL.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from execgate import _core, telemetry
from execgate._core import VerifyKey, VerifyReport
from execgate.errors import AuditLogError, ConfigurationError, ExecgateError

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "SCHEMA",
    "TABLE",
    "Shipper",
    "ShippingConflict",
    "ShippingStatus",
    "ensure_schema",
    "verify_postgres",
]

log = logging.getLogger("execgate.shipping")

TABLE = "execgate_audit"
#: The table's definition (``postgres.sql``): idempotent.
SCHEMA = importlib.resources.files("execgate").joinpath("postgres.sql").read_text()
# Serializes schema creation among shippers starting at once.
_SCHEMA_LOCK = 0x65786567  # "exeg"
_TRIGGERS = ("execgate_audit_no_change", "execgate_audit_no_truncate")

_INSERT = f"""
INSERT INTO {TABLE} (log_id, seq, sha256, envelope)
SELECT %s, r.seq, r.sha256, r.envelope
FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS r(seq, sha256, envelope)
ON CONFLICT (log_id, seq) DO NOTHING
RETURNING seq
"""  # noqa: S608  (the table name is a constant; values are parameters)
_MAX_CONFLICTS = 100


class ShippingConflict(AuditLogError):
    """The table holds a different record under a key this log is shipping."""


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as e:
        raise ConfigurationError(
            f"shipping to PostgreSQL needs execgate[postgres] (psycopg): {e}"
        ) from None
    return psycopg


def _target(dsn: str) -> str:
    """The DSN without its password, for status and messages."""
    psycopg = _psycopg()
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as e:
        raise ConfigurationError(f"ship_to is not a PostgreSQL connection string: {e}") from None
    parts.pop("password", None)
    return str(psycopg.conninfo.make_conninfo(**parts))


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Creates the table and its triggers unless they are there (under an
    advisory lock, so shippers starting together do not race)."""
    found = conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = ANY(%s)",
        (TABLE, list(_TRIGGERS)),
    ).fetchone()
    if found is not None and found[0] == len(_TRIGGERS):
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(SCHEMA.encode())


@dataclasses.dataclass(frozen=True)
class ShippingStatus:
    """Where a shipper is (``gate.shipping``)."""

    #: The server (the DSN without its password).
    target: str
    #: The shipped log's id (the digest of its first record), once it has one.
    log_id: str | None
    #: The last seq the table is known to hold for this log.
    shipped_seq: int
    #: The local log's last seq as this process knows it.
    local_seq: int
    #: Local records not yet known to be in the table.
    lag: int
    #: At most how long the oldest record not yet in the table has waited
    #: (seconds; 0 when the table holds every local record).
    lag_seconds: float
    #: Records this shipper inserted.
    shipped: int
    #: Whether it holds a connection to the server.
    connected: bool
    #: The last failure (an outage, an unreadable log, a conflict), or None.
    last_error: str | None
    #: When it happened (``time.time()``), or None.
    last_error_at: float | None
    #: Seqs for which the table holds a different record under this log id
    #: (the first 100): two chains claiming one id, or a row changed behind
    #: the triggers' back. Nothing more of this log is shipped while it does.
    conflicts: tuple[int, ...]
    #: Whether the shipper thread is running.
    running: bool


class _Head:
    """Reads the local log's head seq (an :class:`AuditLog`'s ``seq``)."""

    def __init__(self, audit_log: _core.AuditLog) -> None:
        self.log = audit_log

    def __call__(self) -> int:
        return self.log.seq


_shippers: weakref.WeakSet[Shipper] = weakref.WeakSet()


class Shipper:
    """Copies every record of the local log at ``path`` into the table at
    ``dsn`` on a background thread, from the server's last seq for this log
    on: after a crash or an outage it resumes there, so no record is lost or
    inserted twice (inserts are idempotent; a different row already under a
    record's key is reported in ``status.conflicts``, never overwritten).
    Failures are retried with exponential backoff (``max_backoff`` seconds
    at most) and shown in :attr:`status`. ``head`` returns the local log's
    last seq, for the lag."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        dsn: str,
        *,
        head: _core.AuditLog | None = None,
        batch: int = 1000,
        poll: float = 0.1,
        max_backoff: float = 30.0,
    ) -> None:
        self._psycopg = _psycopg()
        self._dsn = dsn
        self._target = _target(dsn)
        self._reader = _core.LogReader(os.fspath(path))
        self._head = _Head(head) if head is not None else None
        self._batch = batch
        self._poll = poll
        self._max_backoff = max_backoff
        self._conn: psycopg.Connection[Any] | None = None
        self._resync = True
        self._overlap = False
        self._log_id: str | None = None
        self._shipped_seq: int | None = None
        self._known_seq = 0
        self._shipped = 0
        self._error: tuple[str, float] | None = None
        self._conflicts: list[int] = []
        self._caught_up_at = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="execgate-shipper", daemon=True)
        _shippers.add(self)
        self._thread.start()

    @property
    def status(self) -> ShippingStatus:
        with self._lock:
            shipped = self._shipped_seq or 0
            local = max(self._head() if self._head is not None else 0, self._known_seq, shipped)
            lag = local - shipped
            return ShippingStatus(
                target=self._target,
                log_id=self._log_id,
                shipped_seq=shipped,
                local_seq=local,
                lag=lag,
                lag_seconds=time.monotonic() - self._caught_up_at if lag else 0.0,
                shipped=self._shipped,
                connected=self._conn is not None,
                last_error=self._error[0] if self._error else None,
                last_error_at=self._error[1] if self._error else None,
                conflicts=tuple(self._conflicts),
                running=self._thread.is_alive(),
            )

    def stop(self, timeout: float = 5.0) -> None:
        """Ships what the log holds now (while the server answers, within
        ``timeout`` seconds), then closes the connection and the thread."""
        self._stop.set()
        self._thread.join(timeout)

    # -- the thread ------------------------------------------------------

    def _run(self) -> None:
        delay = 0.0
        while True:
            stopping = self._stop.is_set()
            try:
                more = self._ship_batch()
                delay = 0.0
            except (self._psycopg.Error, ExecgateError, OSError) as e:
                self._failed(e)
                self._report_lag()
                if stopping:
                    break
                delay = min(max(delay * 2, 0.25), self._max_backoff)
                # Jitter, so a fleet does not reconnect in step after an outage.
                self._stop.wait(delay * random.uniform(0.8, 1.2))  # noqa: S311
                continue
            self._report_lag()
            if stopping and not more:
                break
            if not more:
                self._stop.wait(self._poll)
        self._disconnect()
        if self._log_id is not None:
            telemetry.report_shipping_lag(self._log_id, None)

    def _report_lag(self) -> None:
        """The lag, for the ``execgate.audit.shipping.lag`` gauge: after every
        batch or failed attempt (while backing off, as of the last attempt)."""
        status = self.status
        if status.log_id is not None:
            telemetry.report_shipping_lag(status.log_id, status.lag_seconds)

    def _failed(self, error: BaseException) -> None:
        message = (
            str(error)
            if isinstance(error, ShippingConflict)
            else f"{type(error).__name__}: {error}"
        )
        if isinstance(error, self._psycopg.Error):
            self._disconnect()
        with self._lock:
            first = self._error is None or self._error[0] != message
            self._error = (message, time.time())
        if first:
            log.warning("execgate: shipping to %s: %s (retrying)", self._target, message)

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except self._psycopg.Error:  # already gone
                pass

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            conn = self._psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=5,
                application_name="execgate-shipper",
            )
            try:
                ensure_schema(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            # Ask the server where this log stands on every new connection.
            self._resync = True
        return self._conn

    def _ship_batch(self) -> bool:
        """Ships the next batch; True when there may be more right away."""
        conn = self._connection()
        if self._log_id is None:
            log_id = self._reader.log_id()
            if log_id is None:
                self._caught_up(time.monotonic())
                return False
            with self._lock:
                self._log_id = log_id
        log_id = self._log_id
        if self._resync:
            row = conn.execute(
                f"SELECT coalesce(max(seq), 0) FROM {TABLE} WHERE log_id = %s",  # noqa: S608
                (log_id,),
            ).fetchone()
            with self._lock:
                self._shipped_seq = int(row[0]) if row else 0
            self._resync = False
            # The first batch after a resync starts with the server's last
            # record, so a table that holds another chain under this id is
            # noticed before anything is added to it.
            self._overlap = bool(self._shipped_seq)
        shipped_seq = self._shipped_seq or 0
        start = shipped_seq if self._overlap else shipped_seq + 1
        read_at = time.monotonic()
        seqs, digests, envelopes = self._reader.read_from(start, self._batch)
        if not seqs or seqs[-1] == shipped_seq:
            self._caught_up(read_at)
            return False
        with conn.transaction():
            inserted = {r[0] for r in conn.execute(_INSERT, (log_id, seqs, digests, envelopes))}
            if len(inserted) < len(seqs):
                # Raises (rolling the batch back) when a row differs.
                self._check_existing(conn, log_id, seqs, envelopes, inserted)
        with self._lock:
            self._shipped_seq = seqs[-1]
            self._known_seq = max(self._known_seq, seqs[-1])
            self._shipped += len(inserted)
            self._error = None
        self._overlap = False
        if len(seqs) < self._batch:
            # The read took every record written before it began.
            self._caught_up(read_at)
        return len(seqs) == self._batch

    def _check_existing(
        self,
        conn: psycopg.Connection[Any],
        log_id: str,
        seqs: list[int],
        envelopes: list[str],
        inserted: set[int],
    ) -> None:
        """Rows that were already there (another process shipping the same
        log, the overlap after a resync) must be these records; a row that is
        another record is a conflict: the batch is not shipped and the
        conflict is reported (two chains claiming one id, say a log file
        copied to a second host, or a row changed behind the triggers' back)."""
        local = {s: e for s, e in zip(seqs, envelopes, strict=True) if s not in inserted}
        rows = conn.execute(
            f"SELECT seq, envelope FROM {TABLE} WHERE log_id = %s AND seq = ANY(%s)",  # noqa: S608
            (log_id, list(local)),
        )
        differ = sorted(seq for seq, envelope in rows if envelope != local[seq])
        if not differ:
            return
        message = (
            f"conflict: {TABLE} holds a different record for log {log_id[:16]} at seq "
            f"{', '.join(map(str, differ[:10]))}; this log's records are not shipped "
            "while it does"
        )
        with self._lock:
            known = set(self._conflicts)
            new = [seq for seq in differ if seq not in known]
            self._conflicts.extend(new[: _MAX_CONFLICTS - len(self._conflicts)])
            self._error = (message, time.time())
        if new:
            log.error("execgate: shipping to %s: %s", self._target, message)
        raise ShippingConflict(message)

    def _caught_up(self, read_at: float) -> None:
        """Every record written before ``read_at`` is in the table."""
        with self._lock:
            self._caught_up_at = read_at
            self._known_seq = max(self._known_seq, self._shipped_seq or 0)


def stop_all(timeout: float = 5.0) -> None:
    """Stops every running shipper (at interpreter exit)."""
    for shipper in list(_shippers):
        shipper.stop(timeout)


def verify_postgres(
    dsn: str,
    keys: VerifyKey | Iterable[VerifyKey | str | os.PathLike[str]] = (),
    *,
    keyring: str | os.PathLike[str] | None = None,
    log_id: str | None = None,
    rows: int = 5000,
) -> list[tuple[str, VerifyReport]]:
    """Verifies every log in the table (or the one ``log_id`` names): its rows
    are streamed in seq order through the core's verifier, which checks each
    signature and the chain, that each row holds the record of its own seq,
    and that the first is the one the log id names; a report's ``line`` is
    the seq of the first missing, altered or moved record. Returns
    ``(log_id, report)`` per log, in log id order."""
    from execgate.verify import _keys

    psycopg = _psycopg()
    loaded = _keys(keys)
    ring = os.fspath(keyring) if keyring else None
    _core.ChainVerifier(loaded, ring)  # no keys: refused before connecting
    reports: list[tuple[str, VerifyReport]] = []
    try:
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            if log_id is not None:
                ids = [log_id]
            else:
                found = conn.execute(f"SELECT DISTINCT log_id FROM {TABLE} ORDER BY 1")  # noqa: S608
                ids = [str(r[0]) for r in found]
            for one in ids:
                verifier = _core.ChainVerifier(loaded, ring, log_id=one)
                with conn.cursor(name="execgate_verify") as cur:
                    cur.execute(
                        f"SELECT seq, envelope FROM {TABLE} WHERE log_id = %s ORDER BY seq",  # noqa: S608
                        (one,),
                    )
                    while batch := cur.fetchmany(rows):
                        if not verifier.push(batch):
                            break
                reports.append((one, verifier.finish()))
    except psycopg.Error as e:
        raise AuditLogError(f"cannot read {TABLE} at {_target(dsn)}: {e}") from None
    return reports
