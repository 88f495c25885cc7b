"""The kernel's durable state in one SQLite file, written without blocking the event loop.

Events, the driver-I/O journal, snapshots, the process table, a key-value table and
the pid counter live in `$YOOL_HOME/yool.db` (WAL). Every write goes through one
writer thread: callers only put a tuple on a queue, and the writer commits whatever
has piled up in one transaction (group commit). Reads run on separate read-only
connections, in a worker thread when called from the loop.

Payloads handed to an append (dicts, journal results, kv values) are JSON-encoded
later, in the writer thread: a caller must not mutate them after handing them over.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NamedTuple, Self, TypeVar

from yool.kernel.boots import BootLock

__all__ = [
    "LESSONS_SCHEMA",
    "SCHEMA_VERSION",
    "EventRow",
    "JournalRow",
    "ProcessRow",
    "SnapshotRow",
    "Store",
    "StoreError",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS: Final = 10_000
MAX_BATCH: Final = 50_000  # items per transaction; bounds memory, not latency
READ_WORKERS: Final = 4


class StoreError(Exception):
    """The database can't be opened, is closed, or a write failed."""


# --- rows ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventRow:
    seq: int
    ts: float
    kind: str
    pid: int | None
    data: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "kind": self.kind,
            "pid": self.pid,
            **(self.data or {}),
        }


@dataclass(frozen=True, slots=True)
class JournalRow:
    stream: int
    op: int
    digest: str
    result: Any | None
    error: str | None


@dataclass(frozen=True, slots=True)
class ProcessRow:
    pid: int
    parent: int | None
    image: str
    name: str | None
    status: str
    started: float
    ended: float | None
    reason: dict[str, Any] | None
    meta: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    snap_id: str
    pid: int
    image: str
    created: float
    data: dict[str, Any]


# --- schema -------------------------------------------------------------------------

# Long-term lessons (`yool.memory.lessons`): a row per lesson, unique per scope on its
# normalised text, and an FTS5 index over the text kept in step by triggers (external
# content: the text is stored once). Ids are never reused (AUTOINCREMENT), so a stale id
# can't forget a newer lesson. Also applied on its own to an in-memory database.
LESSONS_SCHEMA: Final[tuple[str, ...]] = (
    """CREATE TABLE lessons (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        text TEXT NOT NULL,
        norm TEXT NOT NULL,
        scope TEXT NOT NULL,
        tags TEXT NOT NULL DEFAULT '[]',
        uses INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        last_used REAL,
        source TEXT
    )""",
    "CREATE UNIQUE INDEX lessons_by_norm ON lessons (norm, scope)",
    "CREATE VIRTUAL TABLE lessons_fts USING fts5(text, content='lessons', content_rowid='id',"
    " tokenize='porter unicode61 remove_diacritics 2')",
    """CREATE TRIGGER lessons_ai AFTER INSERT ON lessons BEGIN
        INSERT INTO lessons_fts (rowid, text) VALUES (new.id, new.text);
    END""",
    """CREATE TRIGGER lessons_ad AFTER DELETE ON lessons BEGIN
        INSERT INTO lessons_fts (lessons_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END""",
    """CREATE TRIGGER lessons_au AFTER UPDATE OF text ON lessons BEGIN
        INSERT INTO lessons_fts (lessons_fts, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO lessons_fts (rowid, text) VALUES (new.id, new.text);
    END""",
)

# Each migration is applied in its own transaction; its index + 1 is the schema
# version it leaves behind. Append new ones; never edit a released one.
MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
        "INSERT INTO meta (key, value) VALUES ('next_pid', '1')",
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            kind TEXT NOT NULL,
            pid INTEGER,
            data TEXT
        )""",
        "CREATE INDEX events_by_pid ON events (pid, seq)",
        """CREATE TABLE journal (
            stream INTEGER NOT NULL,
            op INTEGER NOT NULL,
            digest TEXT NOT NULL,
            result TEXT,
            error TEXT,
            PRIMARY KEY (stream, op)
        ) WITHOUT ROWID""",
        """CREATE TABLE processes (
            pid INTEGER PRIMARY KEY,
            parent INTEGER,
            image TEXT NOT NULL,
            name TEXT,
            status TEXT NOT NULL,
            started REAL NOT NULL,
            ended REAL,
            reason TEXT,
            meta TEXT
        )""",
        "CREATE INDEX processes_by_status ON processes (status, pid)",
        "CREATE INDEX processes_by_parent ON processes (parent)",
        """CREATE TABLE snapshots (
            snap_id TEXT PRIMARY KEY,
            pid INTEGER NOT NULL,
            image TEXT NOT NULL,
            created REAL NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX snapshots_by_pid ON snapshots (pid, created)",
        """CREATE TABLE kv (
            ns TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (ns, key)
        ) WITHOUT ROWID""",
    ),
    (
        # Which boot (see `boots`) reserved each pid block: a boot marks as interrupted only
        # the unfinished processes of boots that are no longer alive.
        """CREATE TABLE pid_blocks (
            start INTEGER PRIMARY KEY,
            stop INTEGER NOT NULL,
            boot TEXT NOT NULL
        )""",
    ),
    LESSONS_SCHEMA,
    (
        # The tuple space's durable lanes and their tuples, and lazy batches' compressed
        # agents (see `yool.tuplespace`).
        "CREATE TABLE tuple_lanes (lane TEXT PRIMARY KEY) WITHOUT ROWID",
        """CREATE TABLE tuple_rows (
            lane TEXT NOT NULL,
            id INTEGER NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (lane, id)
        ) WITHOUT ROWID""",
        "CREATE TABLE batches (batch TEXT PRIMARY KEY, spec TEXT NOT NULL) WITHOUT ROWID",
        """CREATE TABLE batch_tokens (
            batch TEXT NOT NULL,
            agent INTEGER NOT NULL,
            token TEXT NOT NULL,
            PRIMARY KEY (batch, agent)
        ) WITHOUT ROWID""",
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema up to date, one transaction per migration.

    The version is re-read under the write lock so two processes opening the same
    new file don't both apply a migration.
    """
    for version, statements in enumerate(MIGRATIONS, start=1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            current = conn.execute("PRAGMA user_version").fetchone()[0]
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"database schema v{current} is newer than this yool "
                    f"(knows v{SCHEMA_VERSION}); upgrade yool"
                )
            if current < version:
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


# --- the writer's work items --------------------------------------------------------
#
# A work item is a plain tuple whose first element is an opcode, so that an append
# costs the caller one tuple and one SimpleQueue.put. Encoding happens in the writer.

_EVENT, _JOURNAL, _PROC_PUT, _PROC_END, _SNAPSHOT, _KV_PUT, _KV_DEL = range(7)
_CALL, _FLUSH, _STOP = 7, 8, 9

Item = tuple[Any, ...]
Params = tuple[Any, ...]
CallDone = Callable[[Any, BaseException | None], None]

_dumps: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_INTERRUPTED: Final = _dumps({"kind": "interrupted"})


def _opt_dumps(value: object) -> str | None:
    return None if value is None else _dumps(value)


def _opt_loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class _Op(NamedTuple):
    name: str
    table: str  # writes to different tables commute; within a table order is kept
    sql: str
    encode: Callable[[Item], Params]
    key: Callable[[Item], str]


_OPS: Final[tuple[_Op, ...]] = (
    _Op(
        "append_event",
        "events",
        # The kernel's own seq, unless another kernel on this database already stored one
        # with it: then SQLite numbers it after the last (NULL into INTEGER PRIMARY KEY).
        "INSERT INTO events (seq, ts, kind, pid, data) VALUES"
        " (CASE WHEN EXISTS (SELECT 1 FROM events WHERE seq = ?1) THEN NULL ELSE ?1 END,"
        " ?2, ?3, ?4, ?5)",
        lambda i: (i[1], i[2], i[3], i[4], _opt_dumps(i[5])),
        lambda i: f"seq={i[1]!r}",
    ),
    _Op(
        "append_journal",
        "journal",
        "INSERT OR REPLACE INTO journal (stream, op, digest, result, error) VALUES (?, ?, ?, ?, ?)",
        lambda i: (i[1], i[2], i[3], _opt_dumps(i[4]), i[5]),
        lambda i: f"stream={i[1]!r}, op={i[2]!r}",
    ),
    _Op(
        "put_process",
        "processes",
        "INSERT INTO processes (pid, parent, image, name, status, started, meta)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (pid) DO UPDATE SET parent = excluded.parent, image = excluded.image,"
        " name = excluded.name, status = excluded.status, started = excluded.started,"
        " meta = excluded.meta",
        lambda i: (i[1], i[2], i[3], i[4], i[5], i[6], _opt_dumps(i[7])),
        lambda i: f"pid={i[1]!r}",
    ),
    _Op(
        "end_process",
        "processes",
        "UPDATE processes SET status = ?, reason = ?, ended = ? WHERE pid = ?",
        lambda i: (i[2], _dumps(i[3]), i[4], i[1]),
        lambda i: f"pid={i[1]!r}",
    ),
    _Op(
        "put_snapshot",
        "snapshots",
        "INSERT OR REPLACE INTO snapshots (snap_id, pid, image, created, data)"
        " VALUES (?, ?, ?, ?, ?)",
        lambda i: (i[1], i[2], i[3], i[4], _dumps(i[5])),
        lambda i: f"snap_id={i[1]!r}",
    ),
    _Op(
        "kv_put",
        "kv",
        "INSERT OR REPLACE INTO kv (ns, key, value) VALUES (?, ?, ?)",
        lambda i: (i[1], i[2], _dumps(i[3])),
        lambda i: f"ns={i[1]!r}, key={i[2]!r}",
    ),
    _Op(
        "kv_delete",
        "kv",
        "DELETE FROM kv WHERE ns = ? AND key = ?",
        lambda i: (i[1], i[2]),
        lambda i: f"ns={i[1]!r}, key={i[2]!r}",
    ),
)


def _describe(item: Item, exc: BaseException) -> str:
    op = _OPS[item[0]]
    return f"{op.name}({op.key(item)}): {type(exc).__name__}: {exc}"


class _Writer:
    """Owns the write connection; runs in its own thread until it takes a stop item.

    Kept apart from `Store` so that the thread does not keep the store alive.
    """

    def __init__(self, conn: sqlite3.Connection, inbox: queue.SimpleQueue[Item]) -> None:
        self.conn = conn
        self.inbox = inbox
        self.errors = 0
        self.commits = 0
        self.last_error: str | None = None
        self._unreported: str | None = None  # first failure since the last flush
        self._unreported_more = 0
        self.thread = threading.Thread(target=self._run, name="yool-store-writer", daemon=True)

    # -- failure bookkeeping (writer thread only) --

    def fail(self, message: str, count: int = 1) -> None:
        log.error("store write failed: %s", message)
        self.errors += count
        self.last_error = message
        if self._unreported is None:
            self._unreported = message
            self._unreported_more += count - 1
        else:
            self._unreported_more += count

    def _take_unreported(self) -> str | None:
        message, more = self._unreported, self._unreported_more
        self._unreported, self._unreported_more = None, 0
        if message is not None and more:
            message += f" (and {more} more failed write{'s' if more > 1 else ''})"
        return message

    # -- the loop --

    def _run(self) -> None:
        inbox = self.inbox
        running = True
        while running:
            item = inbox.get()
            batch = [item]
            try:
                # Someone waits on a call (a pid block, above all): commit it with what came
                # before it, not after whatever a busy producer keeps queueing behind it.
                while item[0] != _CALL and len(batch) < MAX_BATCH:
                    item = inbox.get_nowait()
                    batch.append(item)
            except queue.Empty:
                pass
            running = self._apply(batch)
        # Anything that raced in behind the stop item still gets written.
        leftovers: list[Item] = []
        try:
            while True:
                leftovers.append(inbox.get_nowait())
        except queue.Empty:
            pass
        if leftovers:
            self._apply(leftovers)
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("PRAGMA optimize")
        self.conn.close()

    def _apply(self, batch: list[Item]) -> bool:
        """Commit one batch; returns False once a stop item was seen."""
        writes: list[tuple[Item, Params]] = []  # calls ride along with empty params
        flushes: list[Item] = []
        running = True
        durable = False
        for item in batch:
            code = item[0]
            if code == _FLUSH:
                flushes.append(item)
            elif code == _STOP:
                running = False
            elif code == _CALL:
                writes.append((item, ()))
                durable = durable or item[3]
            else:
                try:
                    writes.append((item, _OPS[code].encode(item)))
                except Exception as exc:  # unencodable payload: lose this item only
                    self.fail(_describe(item, exc))
        outcomes: list[tuple[CallDone, Any, BaseException | None]] = []
        try:
            if writes:
                outcomes = self._commit(writes, durable)
        except Exception as exc:  # e.g. the connection broke; the writer must go on
            self.fail(f"writer: {type(exc).__name__}: {exc}")
            broken = StoreError(f"write transaction failed: {type(exc).__name__}: {exc}")
            outcomes = [(item[2], None, broken) for item, _ in writes if item[0] == _CALL]
        for done, result, error in outcomes:
            try:
                done(result, error)
            except Exception as exc:
                name = getattr(done, "__qualname__", repr(done))
                self.fail(f"callback {name} raised {type(exc).__name__}: {exc}")
        report = self._take_unreported() if any(f[2] for f in flushes) else None
        for _, notify, consume in flushes:
            try:
                notify(report if consume else None)
            except Exception:  # e.g. the waiting loop is already closed
                log.exception("store: could not notify a flush waiter")
        return running

    def _commit(
        self, writes: list[tuple[Item, Params]], durable: bool
    ) -> list[tuple[CallDone, Any, BaseException | None]]:
        conn = self.conn
        if durable:  # pid reservations must survive power loss, not just a crash
            conn.execute("PRAGMA synchronous = FULL")
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
                outcomes = self._grouped(writes)
                conn.execute("COMMIT")
                self.commits += 1
            except Exception:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                outcomes = self._one_by_one(writes)
        finally:
            if durable:
                conn.execute("PRAGMA synchronous = NORMAL")
        return outcomes

    def _grouped(
        self, writes: list[tuple[Item, Params]]
    ) -> list[tuple[CallDone, Any, BaseException | None]]:
        """Fast path: one executemany per run of the same statement, per table."""
        conn = self.conn
        outcomes: list[tuple[CallDone, Any, BaseException | None]] = []
        pending: dict[str, list[tuple[int, list[Params]]]] = {}

        def drain() -> None:
            for runs in pending.values():
                for code, rows in runs:
                    conn.executemany(_OPS[code].sql, rows)
            pending.clear()

        for item, params in writes:
            if item[0] == _CALL:
                drain()  # a call may read what came before it
                outcomes.append(self._call(item))
                continue
            code = item[0]
            runs = pending.setdefault(_OPS[code].table, [])
            if runs and runs[-1][0] == code:
                runs[-1][1].append(params)
            else:
                runs.append((code, [params]))
        drain()
        return outcomes

    def _one_by_one(
        self, writes: list[tuple[Item, Params]]
    ) -> list[tuple[CallDone, Any, BaseException | None]]:
        """Slow path after a failed batch: isolate each item in a savepoint."""
        conn = self.conn
        outcomes: list[tuple[CallDone, Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for item, params in writes:
                if item[0] == _CALL:
                    outcomes.append(self._call(item))
                    continue
                conn.execute("SAVEPOINT item")
                try:
                    conn.execute(_OPS[item[0]].sql, params)
                except Exception as exc:
                    conn.execute("ROLLBACK TO item")
                    self.fail(_describe(item, exc))
                conn.execute("RELEASE item")
            conn.execute("COMMIT")
            self.commits += 1
        except Exception as exc:  # the transaction itself failed (disk full, I/O, locked)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            lost = sum(1 for item, _ in writes if item[0] != _CALL)
            self.fail(f"batch of {len(writes)} lost: {type(exc).__name__}: {exc}", max(lost, 1))
            error = StoreError(f"write transaction failed: {type(exc).__name__}: {exc}")
            return [(item[2], None, error) for item, _ in writes if item[0] == _CALL]
        return outcomes

    def _call(self, item: Item) -> tuple[CallDone, Any, BaseException | None]:
        fn: Callable[[sqlite3.Connection], Any] = item[1]
        conn = self.conn
        conn.execute("SAVEPOINT call")
        try:
            result = fn(conn)
        except Exception as exc:
            conn.execute("ROLLBACK TO call")
            conn.execute("RELEASE call")
            return item[2], None, exc
        conn.execute("RELEASE call")
        return item[2], result, None


# --- operations run inside the writer's transaction ---------------------------------


def _reserve(conn: sqlite3.Connection, count: int, boot: str) -> range:
    """The next block of pids: above the counter and above any pid ever stored."""
    start: int = conn.execute(
        "SELECT max(CAST(value AS INTEGER), coalesce((SELECT max(pid) FROM processes), 0) + 1)"
        " FROM meta WHERE key = 'next_pid'"
    ).fetchone()[0]
    conn.execute("UPDATE meta SET value = ? WHERE key = 'next_pid'", (str(start + count),))
    conn.execute(
        "INSERT INTO pid_blocks (start, stop, boot) VALUES (?, ?, ?)", (start, start + count, boot)
    )
    return range(start, start + count)


def _mark_interrupted(conn: sqlite3.Connection, ended: float, alive: list[str]) -> list[int]:
    marks = ",".join("?" * len(alive))
    rows = conn.execute(
        "UPDATE processes SET status = 'interrupted', reason = ?, ended = ?"
        " WHERE ended IS NULL AND NOT EXISTS (SELECT 1 FROM pid_blocks b"
        f" WHERE b.boot IN ({marks}) AND processes.pid >= b.start AND processes.pid < b.stop)"
        " RETURNING pid",
        (_INTERRUPTED, ended, *alive),
    ).fetchall()
    return sorted(pid for (pid,) in rows)


# --- read queries -------------------------------------------------------------------


def _events(
    conn: sqlite3.Connection, after_seq: int, limit: int, pid: int | None
) -> list[EventRow]:
    if pid is None:
        cursor = conn.execute(
            "SELECT seq, ts, kind, pid, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
    else:
        cursor = conn.execute(
            "SELECT seq, ts, kind, pid, data FROM events WHERE pid = ? AND seq > ?"
            " ORDER BY seq LIMIT ?",
            (pid, after_seq, limit),
        )
    return [EventRow(s, t, k, p, _opt_loads(d)) for s, t, k, p, d in cursor]


def _max_event_seq(conn: sqlite3.Connection) -> int:
    value: int | None = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    return value or 0


def _journal(conn: sqlite3.Connection, stream: int) -> list[JournalRow]:
    cursor = conn.execute(
        "SELECT stream, op, digest, result, error FROM journal WHERE stream = ? ORDER BY op",
        (stream,),
    )
    return [JournalRow(s, o, d, _opt_loads(r), e) for s, o, d, r, e in cursor]


def _journal_streams(conn: sqlite3.Connection) -> list[int]:
    return [s for (s,) in conn.execute("SELECT DISTINCT stream FROM journal ORDER BY stream")]


_PROCESS_COLUMNS: Final = "pid, parent, image, name, status, started, ended, reason, meta"


def _process_row(row: tuple[Any, ...]) -> ProcessRow:
    pid, parent, image, name, status, started, ended, reason, meta = row
    return ProcessRow(
        pid, parent, image, name, status, started, ended, _opt_loads(reason), _opt_loads(meta)
    )


def _processes(conn: sqlite3.Connection, status: str | None, limit: int) -> list[ProcessRow]:
    if status is None:
        cursor = conn.execute(
            f"SELECT {_PROCESS_COLUMNS} FROM processes ORDER BY pid LIMIT ?", (limit,)
        )
    else:
        cursor = conn.execute(
            f"SELECT {_PROCESS_COLUMNS} FROM processes WHERE status = ? ORDER BY pid LIMIT ?",
            (status, limit),
        )
    return [_process_row(row) for row in cursor]


def _process(conn: sqlite3.Connection, pid: int) -> ProcessRow | None:
    row = conn.execute(f"SELECT {_PROCESS_COLUMNS} FROM processes WHERE pid = ?", (pid,)).fetchone()
    return None if row is None else _process_row(row)


_SNAPSHOT_COLUMNS: Final = "snap_id, pid, image, created, data"


def _snapshot(conn: sqlite3.Connection, snap_id: str) -> SnapshotRow | None:
    row = conn.execute(
        f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE snap_id = ?", (snap_id,)
    ).fetchone()
    if row is None:
        return None
    snap, pid, image, created, data = row
    return SnapshotRow(snap, pid, image, created, json.loads(data))


def _snapshots(conn: sqlite3.Connection, pid: int | None) -> list[SnapshotRow]:
    if pid is None:
        cursor = conn.execute(f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots ORDER BY created")
    else:
        cursor = conn.execute(
            f"SELECT {_SNAPSHOT_COLUMNS} FROM snapshots WHERE pid = ? ORDER BY created", (pid,)
        )
    return [SnapshotRow(i, p, im, c, json.loads(d)) for i, p, im, c, d in cursor]


def _kv_get(conn: sqlite3.Connection, ns: str, key: str) -> Any | None:
    row = conn.execute("SELECT value FROM kv WHERE ns = ? AND key = ?", (ns, key)).fetchone()
    return None if row is None else json.loads(row[0])


def _after_prefix(prefix: str) -> str | None:
    """The least string greater than every string starting with `prefix`.

    SQLite compares TEXT as UTF-8 bytes, which orders like code points; surrogates
    cannot occur, so they are skipped.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            nxt = last + 1
            chars.append(chr(0xE000 if 0xD800 <= nxt <= 0xDFFF else nxt))
            return "".join(chars)
    return None


def _kv_keys(conn: sqlite3.Connection, ns: str, prefix: str) -> list[str]:
    upper = _after_prefix(prefix)
    if upper is None:
        cursor = conn.execute(
            "SELECT key FROM kv WHERE ns = ? AND key >= ? ORDER BY key", (ns, prefix)
        )
    else:
        cursor = conn.execute(
            "SELECT key FROM kv WHERE ns = ? AND key >= ? AND key < ? ORDER BY key",
            (ns, prefix, upper),
        )
    return [key for (key,) in cursor]


# --- the store ----------------------------------------------------------------------

_open_stores: weakref.WeakSet[Store] = weakref.WeakSet()


@atexit.register
def _close_open_stores() -> None:
    """A forgotten store still gets its queued writes committed (the writer is a daemon)."""
    for store in list(_open_stores):
        try:
            store.close()
        except Exception:
            log.exception("store: closing %s at exit", store.path)


def _set_result(fut: asyncio.Future[str | None], report: str | None) -> None:
    if not fut.done():
        fut.set_result(report)


def _settle(fut: asyncio.Future[T], result: T, error: BaseException | None) -> None:
    if fut.done():  # the caller gave up waiting; the write happened all the same
        return
    if error is None:
        fut.set_result(result)
    else:
        fut.set_exception(error)


class Store:
    """The kernel's SQLite database. Open with `Store.open(path)`; close when done.

    Appends return at once; `flush()`/`aflush()` wait until they are committed and
    report writes that failed. Reads see everything flushed before them.
    """

    path: Path

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).expanduser().absolute()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=0
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreError(f"{self.path}: cannot use WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = NORMAL")
            _migrate(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._closed = False
        self._close_lock = threading.Lock()
        self._inbox: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._put = self._inbox.put
        self._writer = _Writer(conn, self._inbox)
        self._readers: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all_readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=READ_WORKERS, thread_name_prefix="yool-store-read"
        )
        self.boot = BootLock(self.path)
        self._writer.thread.start()
        _open_stores.add(self)

    @classmethod
    def open(cls, path: Path | str) -> Store:
        """Open (creating and migrating if needed) the database at `path`."""
        return cls(path)

    # -- lifecycle --

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def errors(self) -> int:
        """Writes that failed since the store was opened."""
        return self._writer.errors

    @property
    def last_error(self) -> str | None:
        return self._writer.last_error

    @property
    def commits(self) -> int:
        """Write transactions committed; far fewer than writes, thanks to group commit."""
        return self._writer.commits

    @property
    def backlog(self) -> int:
        """Items queued for the writer and not yet taken (approximate)."""
        return self._inbox.qsize()

    def close(self) -> None:
        """Commit what is queued, stop the writer, close every connection.

        Raises `StoreError` (after closing) if writes failed since the last flush.
        """
        with self._close_lock:
            if self._closed:
                return
            report: list[str | None] = []
            done = threading.Event()

            def notify(message: str | None) -> None:
                report.append(message)
                done.set()

            self._closed = True
            self._put((_FLUSH, notify, True))
            self._put((_STOP,))
            self._writer.thread.join()
            self._executor.shutdown(wait=True)
            with self._readers_lock:
                for conn in self._all_readers:
                    conn.close()
                self._all_readers.clear()
            self.boot.release()
            _open_stores.discard(self)
        if done.is_set() and report[0] is not None:
            raise StoreError(report[0])

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except StoreError:
            if exc is None:
                raise
            # the failure is logged; don't mask the exception already on its way out

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")

    def _check_not_writer(self, what: str) -> None:
        if threading.current_thread() is self._writer.thread:
            raise StoreError(f"{what} called from the store's writer thread would deadlock")

    # -- flushing --

    def flush(self) -> None:
        """Block until everything submitted before this call is committed.

        Raises `StoreError` describing the first write that failed since the last flush.
        """
        if self._closed:
            return
        self._wait_writer("flush", consume=True)

    async def aflush(self) -> None:
        """`flush()` for the event loop: waits without blocking it."""
        if self._closed:
            return
        await self._await_writer(consume=True)

    def _wait_writer(self, what: str, *, consume: bool) -> None:
        self._check_not_writer(what)
        report: list[str | None] = []
        done = threading.Event()

        def notify(message: str | None) -> None:
            report.append(message)
            done.set()

        self._put((_FLUSH, notify, consume))
        done.wait()
        if report[0] is not None:
            raise StoreError(report[0])

    async def _await_writer(self, *, consume: bool) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str | None] = loop.create_future()

        def notify(message: str | None) -> None:
            loop.call_soon_threadsafe(_set_result, fut, message)

        self._put((_FLUSH, notify, consume))
        report = await fut
        if report is not None:
            raise StoreError(report)

    def _barrier(self) -> None:
        """Wait for queued writes without taking their failure reports from `flush()`."""
        if not self._closed:
            self._wait_writer("a read-your-writes query", consume=False)

    async def _abarrier(self) -> None:
        if not self._closed:
            await self._await_writer(consume=False)

    # -- calls run by the writer --

    def _call(self, fn: Callable[[sqlite3.Connection], T], what: str, *, durable: bool) -> T:
        """Run `fn` inside the writer's transaction, after everything queued before it."""
        self._check_open()
        self._check_not_writer(what)
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()

        def done(result: T, error: BaseException | None) -> None:
            if error is None:
                fut.set_result(result)
            else:
                fut.set_exception(error)

        self._put((_CALL, fn, done, durable))
        try:
            return fut.result()
        except sqlite3.Error as exc:
            raise StoreError(f"{what}: {type(exc).__name__}: {exc}") from exc

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` in the writer thread, after everything queued before it, and await
        its result without blocking the loop. Its changes are all or nothing: if it raises,
        they are rolled back and the exception reaches the caller (`sqlite3.Error` as
        `StoreError`); once it returns they are committed."""
        self._check_open()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def done(result: T, error: BaseException | None) -> None:
            with contextlib.suppress(RuntimeError):  # the waiting loop is already closed
                loop.call_soon_threadsafe(_settle, fut, result, error)

        self._put((_CALL, fn, done, False))
        try:
            return await fut
        except sqlite3.Error as exc:
            raise StoreError(f"write: {type(exc).__name__}: {exc}") from exc

    def write_later(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """Queue `fn(conn)` for the writer thread and return at once (e.g. a use counter).

        If it raises, its changes are rolled back; the failure is counted and reported by
        the next `flush()`."""
        self._check_open()

        def done(_result: object, error: BaseException | None) -> None:
            if error is not None:
                name = getattr(fn, "__qualname__", repr(fn))
                self._writer.fail(f"write_later({name}): {type(error).__name__}: {error}")

        self._put((_CALL, fn, done, False))

    # -- reading --

    def _reader(self) -> sqlite3.Connection:
        try:
            return self._readers.get_nowait()
        except queue.Empty:
            pass
        conn = sqlite3.connect(
            f"{self.path.as_uri()}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,  # one borrower at a time, through the pool
            timeout=BUSY_TIMEOUT_MS / 1000,
        )
        with self._readers_lock:
            if self._closed:
                conn.close()
                raise StoreError(f"store {self.path} is closed")
            self._all_readers.append(conn)
        return conn

    def _release(self, conn: sqlite3.Connection) -> None:
        if conn.in_transaction:  # fn began a transaction; don't pin an old snapshot
            conn.execute("ROLLBACK")
        self._readers.put(conn)

    def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on a read-only connection in this thread (for the CLI and boot)."""
        self._check_open()
        conn = self._reader()
        try:
            return fn(conn)
        finally:
            self._release(conn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on a read-only connection in a worker thread, off the event loop."""
        self._check_open()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, self.read_sync, fn)
        except RuntimeError as exc:  # the executor was shut down by close()
            if self._closed:
                raise StoreError(f"store {self.path} is closed") from exc
            raise

    # -- events --

    def append_event(
        self, seq: int, ts: float, kind: str, pid: int | None, data: dict[str, Any] | None
    ) -> None:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        self._put((_EVENT, seq, ts, kind, pid, data))

    def events(
        self, after_seq: int = 0, limit: int = 1000, pid: int | None = None
    ) -> list[EventRow]:
        """Events with seq > after_seq in order; page by passing the last seq seen."""
        return self.read_sync(partial(_events, after_seq=after_seq, limit=limit, pid=pid))

    async def aevents(
        self, after_seq: int = 0, limit: int = 1000, pid: int | None = None
    ) -> list[EventRow]:
        return await self.read(partial(_events, after_seq=after_seq, limit=limit, pid=pid))

    def max_event_seq(self) -> int:
        """The last committed seq (0 if none), so a restarted kernel continues after it."""
        return self.read_sync(_max_event_seq)

    # -- journal --

    def append_journal(
        self, stream: int, op: int, digest: str, result: Any | None, error: str | None
    ) -> None:
        """Record one driver I/O; re-appending the same (stream, op) replaces it."""
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        self._put((_JOURNAL, stream, op, digest, result, error))

    def journal(self, stream: int) -> list[JournalRow]:
        return self.read_sync(partial(_journal, stream=stream))

    async def ajournal(self, stream: int) -> list[JournalRow]:
        return await self.read(partial(_journal, stream=stream))

    def journal_streams(self) -> list[int]:
        return self.read_sync(_journal_streams)

    async def ajournal_streams(self) -> list[int]:
        return await self.read(_journal_streams)

    # -- processes --

    def put_process(
        self,
        pid: int,
        parent: int | None,
        image: str,
        name: str | None,
        status: str,
        started: float,
        meta: dict[str, Any] | None = None,
    ) -> None:
        """Insert or update a process row; its end (`ended`, `reason`) is left as it was."""
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        self._put((_PROC_PUT, pid, parent, image, name, status, started, meta))

    def end_process(self, pid: int, status: str, reason: dict[str, Any], ended: float) -> None:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        self._put((_PROC_END, pid, status, reason, ended))

    def processes(self, status: str | None = None, limit: int = 1000) -> list[ProcessRow]:
        return self.read_sync(partial(_processes, status=status, limit=limit))

    async def aprocesses(self, status: str | None = None, limit: int = 1000) -> list[ProcessRow]:
        return await self.read(partial(_processes, status=status, limit=limit))

    def process(self, pid: int) -> ProcessRow | None:
        return self.read_sync(partial(_process, pid=pid))

    async def aprocess(self, pid: int) -> ProcessRow | None:
        return await self.read(partial(_process, pid=pid))

    def mark_interrupted(self, ended: float | None = None) -> list[int]:
        """At boot: every process not ended becomes `interrupted`, except those of boots
        still running on this database (see `boots`); returns their pids.

        Runs after every write queued before it.
        """
        when = time.time() if ended is None else ended
        alive = sorted(self.boot.alive())
        return self._call(
            partial(_mark_interrupted, ended=when, alive=alive), "mark_interrupted", durable=False
        )

    # -- snapshots --

    def put_snapshot(
        self, snap_id: str, pid: int, image: str, created: float, data: dict[str, Any]
    ) -> None:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        self._put((_SNAPSHOT, snap_id, pid, image, created, data))

    def snapshot(self, snap_id: str) -> SnapshotRow | None:
        return self.read_sync(partial(_snapshot, snap_id=snap_id))

    async def asnapshot(self, snap_id: str) -> SnapshotRow | None:
        return await self.read(partial(_snapshot, snap_id=snap_id))

    def snapshots(self, pid: int | None = None) -> list[SnapshotRow]:
        return self.read_sync(partial(_snapshots, pid=pid))

    async def asnapshots(self, pid: int | None = None) -> list[SnapshotRow]:
        return await self.read(partial(_snapshots, pid=pid))

    # -- key-value --
    #
    # kv_get/kv_keys first wait for queued writes (without consuming failure reports),
    # so a get right after a put sees it.

    def kv_put(self, ns: str, key: str, value: Any) -> None:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        self._put((_KV_PUT, ns, key, value))

    def kv_delete(self, ns: str, key: str) -> None:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        self._put((_KV_DEL, ns, key))

    def kv_get(self, ns: str, key: str) -> Any | None:
        self._barrier()
        return self.read_sync(partial(_kv_get, ns=ns, key=key))

    async def akv_get(self, ns: str, key: str) -> Any | None:
        await self._abarrier()
        return await self.read(partial(_kv_get, ns=ns, key=key))

    def kv_keys(self, ns: str, prefix: str = "") -> list[str]:
        self._barrier()
        return self.read_sync(partial(_kv_keys, ns=ns, prefix=prefix))

    async def akv_keys(self, ns: str, prefix: str = "") -> list[str]:
        await self._abarrier()
        return await self.read(partial(_kv_keys, ns=ns, prefix=prefix))

    # -- pids --

    def reserve_pids(self, count: int) -> range:
        """A fresh block of `count` pids, committed (and synced) before it is returned.

        Every block is above every block ever returned from this file and above every
        pid in the process table, so pids are never reused across restarts.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        return self._call(
            partial(_reserve, count=count, boot=self.boot.id), "reserve_pids", durable=True
        )

    def reserve_pids_later(self, count: int, callback: Callable[[range], None]) -> None:
        """Reserve a block in the writer thread and hand it to `callback` there, once durable.

        If the reservation fails, `callback` is not called; the failure is counted and
        reported by the next `flush()`.
        """
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self._check_open()

        def done(block: range | None, error: BaseException | None) -> None:
            if error is not None:
                self._writer.fail(f"reserve_pids_later({count}): {type(error).__name__}: {error}")
            elif block is not None:
                try:
                    callback(block)
                except Exception as exc:  # the block stays reserved: never handed out again
                    self._writer.fail(
                        f"reserve_pids_later({count}) callback raised {type(exc).__name__}: {exc}"
                    )

        self._put((_CALL, partial(_reserve, count=count, boot=self.boot.id), done, True))
