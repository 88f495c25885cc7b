"""The kernel's SQLite store: durability, group commit, failure reporting, pids, reads."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from yool.kernel.store import SCHEMA_VERSION, EventRow, Store, StoreError


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "home" / "yool.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    s = Store.open(db)
    yield s
    s.close()


@contextmanager
def write_lock_held(path: Path) -> Iterator[None]:
    """Another connection holds the write lock, so the writer stalls and its queue fills."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.001)


def raw_count(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return count
    finally:
        conn.close()


# --- opening, schema ----------------------------------------------------------------


def test_open_creates_parent_dirs_and_uses_wal(db: Path) -> None:
    with Store.open(db) as store:
        assert db.exists()
        mode = store.read_sync(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        assert mode == "wal"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_migrations_run_on_an_empty_file(db: Path) -> None:
    db.parent.mkdir(parents=True)
    db.touch()
    with Store.open(db) as store:
        version = store.read_sync(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
        tables = store.read_sync(
            lambda c: {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        )
    assert version == SCHEMA_VERSION
    assert {"meta", "events", "journal", "processes", "snapshots", "kv"} <= tables


def test_opening_a_newer_schema_says_upgrade_yool(db: Path) -> None:
    Store.open(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    newer, known = SCHEMA_VERSION + 1, SCHEMA_VERSION
    message = f"database schema v{newer} is newer than this yool \\(knows v{known}\\); upgrade yool"
    with pytest.raises(StoreError, match=message):
        Store.open(db)


def test_opening_a_file_that_is_not_a_database_raises_store_error(tmp_path: Path) -> None:
    path = tmp_path / "yool.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        Store.open(path)


def test_read_connections_cannot_write(store: Store) -> None:
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        store.read_sync(lambda c: c.execute("INSERT INTO meta VALUES ('x', 'y')"))


# --- persistence, close ---------------------------------------------------------------


def test_everything_survives_close_and_reopen(db: Path) -> None:
    with Store.open(db) as store:
        store.append_event(1, 10.0, "spawn", 5, {"image": "react"})
        store.append_journal(3, 0, "abc", {"text": "hi"}, None)
        store.put_process(5, 1, "react", "worker", "running", 10.0, {"lane": "llm"})
        store.put_snapshot("s1", 5, "react", 11.0, {"context": ["a", "b"]})
        store.kv_put("ns", "k", {"v": [1, 2]})
        block = store.reserve_pids(4)
    with Store.open(db) as store:
        assert store.events() == [EventRow(1, 10.0, "spawn", 5, {"image": "react"})]
        assert store.journal(3)[0].result == {"text": "hi"}
        row = store.process(5)
        assert row is not None
        assert (row.parent, row.image, row.name, row.status) == (1, "react", "worker", "running")
        assert row.meta == {"lane": "llm"}
        snap = store.snapshot("s1")
        assert snap is not None and snap.data == {"context": ["a", "b"]}
        assert store.kv_get("ns", "k") == {"v": [1, 2]}
        assert store.reserve_pids(1).start >= block.stop


def test_close_flushes_and_is_idempotent(db: Path) -> None:
    store = Store.open(db)
    for seq in range(1, 1001):
        store.append_event(seq, float(seq), "tick", None, None)
    store.close()
    store.close()
    assert store.closed
    assert raw_count(db, "events") == 1000
    store.flush()  # nothing can be pending any more
    with pytest.raises(StoreError, match="closed"):
        store.append_event(1001, 0.0, "tick", None, None)
    with pytest.raises(StoreError, match="closed"):
        store.events()


def test_context_manager_closes_the_store(db: Path) -> None:
    with Store.open(db) as store:
        store.kv_put("a", "b", 1)
    assert store.closed
    assert raw_count(db, "kv") == 1


def test_close_reports_a_failure_nobody_flushed(db: Path) -> None:
    store = Store.open(db)
    store.append_event(1, 0.0, "bad", None, {"x": object()})
    with pytest.raises(StoreError, match=r"append_event\(seq=1\)"):
        store.close()
    assert store.closed
    store.close()


# --- group commit and flush -------------------------------------------------------------


def test_appends_queued_behind_a_busy_writer_commit_in_one_transaction(
    db: Path, store: Store
) -> None:
    store.flush()
    before = store.commits
    with write_lock_held(db):
        store.append_event(1, 0.0, "first", None, None)
        wait_until(lambda: store.backlog == 0)  # the writer took it and is stuck on the lock
        for seq in range(2, 10_001):
            store.append_event(seq, 0.0, "tick", seq % 7, {"n": seq})
    store.flush()
    assert store.commits - before <= 2
    assert store.max_event_seq() == 10_000


def test_flush_makes_every_earlier_append_visible_to_a_new_connection(
    db: Path, store: Store
) -> None:
    failures: list[str] = []

    def worker(stream: int) -> None:
        for op in range(500):
            store.append_journal(stream, op, f"d{op}", op, None)
        store.flush()
        conn = sqlite3.connect(db)
        seen = conn.execute("SELECT count(*) FROM journal WHERE stream = ?", (stream,)).fetchone()
        conn.close()
        if seen[0] != 500:
            failures.append(f"stream {stream} saw {seen[0]}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert raw_count(db, "journal") == 8 * 500


def test_aflush_waits_for_the_writer_without_blocking_the_loop(db: Path, store: Store) -> None:
    async def main() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.create_task(ticker())
        with write_lock_held(db):
            store.append_event(1, 0.0, "held", None, None)
            flushed = asyncio.create_task(store.aflush())
            await asyncio.sleep(0.3)
            assert not flushed.done()
        await flushed
        task.cancel()
        return ticks

    ticks = asyncio.run(main())
    assert ticks >= 10
    assert raw_count(db, "events") == 1


# --- failures -----------------------------------------------------------------------


def test_an_unencodable_payload_loses_only_its_own_item_and_flush_reports_it(
    store: Store,
) -> None:
    store.append_event(1, 0.0, "ok", None, {"n": 1})
    store.append_event(2, 0.0, "bad", None, {"n": object()})
    store.append_event(3, 0.0, "ok", None, {"n": 3})
    with pytest.raises(StoreError, match=r"append_event\(seq=2\): TypeError"):
        store.flush()
    assert [e.seq for e in store.events()] == [1, 3]
    assert store.errors == 1
    assert store.last_error is not None and "seq=2" in store.last_error
    store.flush()  # reported once
    store.append_event(4, 0.0, "after", None, None)
    store.flush()
    assert store.max_event_seq() == 4


def test_a_constraint_violation_rolls_back_and_retries_the_rest_of_its_batch(
    db: Path, store: Store
) -> None:
    store.append_event(1, 0.0, "first", None, None)
    store.flush()
    before = store.commits
    with write_lock_held(db):
        store.append_event(10, 0.0, "alone", None, None)
        wait_until(lambda: store.backlog == 0)
        # One batch: the event without a kind fails, the others must survive it.
        store.append_event(11, 0.0, "ok", None, None)
        store.append_event(13, 0.0, None, None, None)  # type: ignore[arg-type]
        store.append_journal(1, 0, "j", "kept", None)
        store.append_event(12, 0.0, "ok", None, None)
    with pytest.raises(StoreError, match=r"append_event\(seq=13\).*NOT NULL"):
        store.flush()
    assert store.commits - before <= 2
    assert [(e.seq, e.kind) for e in store.events()] == [
        (1, "first"),
        (10, "alone"),
        (11, "ok"),
        (12, "ok"),
    ]
    assert store.journal(1)[0].result == "kept"
    assert store.errors == 1


def test_an_event_whose_seq_another_kernel_took_is_stored_after_the_last(store: Store) -> None:
    store.append_event(1, 0.0, "mine", None, None)
    store.append_event(2, 0.0, "mine", None, None)
    store.append_event(1, 0.0, "theirs", None, None)  # a second kernel on the same database
    store.flush()
    assert [(e.seq, e.kind) for e in store.events()] == [(1, "mine"), (2, "mine"), (3, "theirs")]


def test_flush_reports_the_first_failure_and_counts_the_rest(store: Store) -> None:
    for seq in range(1, 4):
        store.append_event(seq, 0.0, "bad", None, {"x": {1, 2}})
    with pytest.raises(StoreError, match=r"seq=1\).*and 2 more failed writes"):
        store.flush()
    assert store.errors == 3
    assert store.last_error is not None and "seq=3" in store.last_error


def test_aflush_raises_for_a_failed_write(store: Store) -> None:
    store.kv_put("ns", "bad", object())

    async def main() -> None:
        with pytest.raises(StoreError, match=r"kv_put\(ns='ns', key='bad'\)"):
            await store.aflush()
        await store.aflush()

    asyncio.run(main())


def test_a_read_your_writes_get_leaves_the_failure_for_flush(store: Store) -> None:
    store.kv_put("ns", "bad", object())
    store.kv_put("ns", "good", 1)
    assert store.kv_get("ns", "good") == 1
    with pytest.raises(StoreError, match="key='bad'"):
        store.flush()


# --- reads ----------------------------------------------------------------------------


def test_async_read_runs_off_the_event_loop(store: Store) -> None:
    def slow(conn: sqlite3.Connection) -> int:
        time.sleep(0.3)
        value: int = conn.execute("SELECT 41 + 1").fetchone()[0]
        return value

    async def main() -> tuple[int, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        task = asyncio.create_task(ticker())
        result = await store.read(slow)
        task.cancel()
        return result, ticks

    result, ticks = asyncio.run(main())
    assert result == 42
    assert ticks >= 10


def test_async_typed_reads_match_the_sync_ones(store: Store) -> None:
    store.append_event(1, 1.0, "spawn", 2, None)
    store.put_process(2, 1, "img", None, "running", 1.0)
    store.put_snapshot("s", 2, "img", 1.0, {})
    store.append_journal(9, 0, "d", None, None)
    store.kv_put("n", "k", "v")
    store.flush()

    async def main() -> None:
        assert await store.aevents(pid=2) == store.events(pid=2)
        assert await store.aprocesses(status="running") == store.processes(status="running")
        assert await store.aprocess(2) == store.process(2)
        assert await store.asnapshots(2) == store.snapshots(2)
        assert await store.asnapshot("s") == store.snapshot("s")
        assert await store.ajournal(9) == store.journal(9)
        assert await store.ajournal_streams() == [9]
        assert await store.akv_get("n", "k") == "v"
        assert await store.akv_keys("n") == ["k"]

    asyncio.run(main())


def test_reads_after_close_raise_store_error(db: Path) -> None:
    store = Store.open(db)
    store.close()

    async def main() -> None:
        with pytest.raises(StoreError, match="closed"):
            await store.read(lambda c: 1)

    asyncio.run(main())


# --- events -----------------------------------------------------------------------------


def test_events_page_by_after_seq_and_filter_by_pid(db: Path) -> None:
    with Store.open(db) as store:
        assert store.max_event_seq() == 0
        for seq in range(1, 26):
            store.append_event(seq, float(seq), "tick", seq % 2, {"seq": seq})
        store.flush()
        pages: list[list[int]] = []
        after = 0
        while page := store.events(after_seq=after, limit=10):
            pages.append([e.seq for e in page])
            after = page[-1].seq
        assert pages == [list(range(1, 11)), list(range(11, 21)), list(range(21, 26))]
        odd = store.events(after_seq=5, limit=3, pid=1)
        assert [(e.seq, e.data) for e in odd] == [
            (7, {"seq": 7}),
            (9, {"seq": 9}),
            (11, {"seq": 11}),
        ]
    with Store.open(db) as store:
        assert store.max_event_seq() == 25


# --- journal ----------------------------------------------------------------------------


def test_journal_orders_by_op_and_reappending_replaces(store: Store) -> None:
    store.append_journal(7, 2, "c", None, "boom")
    store.append_journal(7, 0, "a", {"x": 1}, None)
    store.append_journal(7, 1, "b", [1, 2], None)
    store.append_journal(8, 0, "z", None, None)
    store.append_journal(7, 0, "a2", "again", None)
    store.flush()
    rows = store.journal(7)
    assert [(r.op, r.digest, r.result, r.error) for r in rows] == [
        (0, "a2", "again", None),
        (1, "b", [1, 2], None),
        (2, "c", None, "boom"),
    ]
    assert store.journal_streams() == [7, 8]
    assert store.journal(99) == []


# --- processes ------------------------------------------------------------------------


def test_put_process_upserts_and_end_process_records_the_reason(store: Store) -> None:
    store.put_process(3, 1, "react", None, "running", 5.0, {"a": 1})
    store.put_process(3, 1, "react", "named", "waiting", 5.0, {"a": 2})
    store.end_process(3, "exited", {"kind": "fault", "detail": "ValueError"}, 9.0)
    store.put_process(4, 3, "react", None, "running", 6.0)
    store.flush()
    row = store.process(3)
    assert row is not None
    assert (row.name, row.status, row.meta) == ("named", "exited", {"a": 2})
    assert (row.ended, row.reason) == (9.0, {"kind": "fault", "detail": "ValueError"})
    assert [r.pid for r in store.processes()] == [3, 4]
    assert [r.pid for r in store.processes(status="running")] == [4]
    assert store.processes(limit=1)[0].pid == 3
    assert store.process(99) is None


def test_mark_interrupted_ends_every_process_that_had_not_ended(db: Path) -> None:
    with Store.open(db) as store:
        store.put_process(1, None, "init", "init", "running", 1.0)
        store.put_process(2, 1, "react", None, "waiting", 2.0)
        store.put_process(3, 1, "react", None, "stopped", 3.0)
        store.put_process(4, 1, "react", None, "running", 4.0)
        store.end_process(4, "exited", {"kind": "normal"}, 5.0)
    with Store.open(db) as store:
        assert store.mark_interrupted(ended=100.0) == [1, 2, 3]
        for pid in (1, 2, 3):
            row = store.process(pid)
            assert row is not None
            assert (row.status, row.reason, row.ended) == (
                "interrupted",
                {"kind": "interrupted"},
                100.0,
            )
        ended = store.process(4)
        assert ended is not None and (ended.status, ended.reason) == ("exited", {"kind": "normal"})
        assert store.mark_interrupted() == []


def test_mark_interrupted_sees_process_rows_queued_before_it(store: Store) -> None:
    store.put_process(7, None, "x", None, "running", 1.0)
    assert store.mark_interrupted() == [7]


# --- snapshots ------------------------------------------------------------------------


def test_snapshots_round_trip_and_list_by_pid_in_creation_order(store: Store) -> None:
    store.put_snapshot("b", 1, "react", 2.0, {"step": 2})
    store.put_snapshot("a", 1, "react", 1.0, {"step": 1})
    store.put_snapshot("c", 2, "chat", 3.0, {"mailbox": [{"m": "hi"}]})
    store.flush()
    snap = store.snapshot("c")
    assert snap is not None
    assert (snap.pid, snap.image, snap.created, snap.data) == (
        2,
        "chat",
        3.0,
        {"mailbox": [{"m": "hi"}]},
    )
    assert [s.snap_id for s in store.snapshots(pid=1)] == ["a", "b"]
    assert [s.snap_id for s in store.snapshots()] == ["a", "b", "c"]
    assert store.snapshot("nope") is None


# --- key-value ------------------------------------------------------------------------


def test_kv_get_sees_a_put_made_just_before_it(store: Store) -> None:
    store.kv_put("ns", "k", {"deep": [1, {"x": None}]})
    assert store.kv_get("ns", "k") == {"deep": [1, {"x": None}]}
    store.kv_put("ns", "k", 2)
    assert store.kv_get("ns", "k") == 2
    store.kv_delete("ns", "k")
    assert store.kv_get("ns", "k") is None
    assert store.kv_get("ns", "never") is None


def test_kv_keys_match_a_prefix_within_a_namespace(store: Store) -> None:
    top = chr(0x10FFFF)
    for key in ["a", "ab", "abc", "ab" + top, "ac", "b", top, top + "x"]:
        store.kv_put("ns", key, key)
    store.kv_put("other", "ab", 0)
    assert store.kv_keys("ns", "ab") == ["ab", "abc", "ab" + top]
    assert store.kv_keys("ns", top) == [top, top + "x"]
    assert store.kv_keys("ns") == sorted(["a", "ab", "abc", "ab" + top, "ac", "b", top, top + "x"])
    assert store.kv_keys("other") == ["ab"]
    assert store.kv_keys("none") == []


# --- pids -------------------------------------------------------------------------------


def test_reserved_pid_blocks_never_overlap_even_across_reopen(db: Path) -> None:
    with Store.open(db) as store:
        assert store.reserve_pids(10) == range(1, 11)
        assert store.reserve_pids(5) == range(11, 16)
    with Store.open(db) as store:
        assert store.reserve_pids(3) == range(16, 19)
    with pytest.raises(ValueError, match="at least 1"), Store.open(db) as store:
        store.reserve_pids(0)


def test_blocks_reserved_later_are_durable_and_never_reused(db: Path) -> None:
    got: list[range] = []
    done = threading.Event()

    def take(block: range) -> None:
        assert threading.current_thread().name == "yool-store-writer"
        got.append(block)
        if len(got) == 3:
            done.set()

    with Store.open(db) as store:
        first = store.reserve_pids(2)
        for _ in range(3):
            store.reserve_pids_later(100, take)
        assert done.wait(5)
    assert [b.start for b in got] == [first.stop, first.stop + 100, first.stop + 200]
    with Store.open(db) as store:
        assert store.reserve_pids(1).start == got[-1].stop


def test_pid_blocks_start_above_any_stored_process(store: Store) -> None:
    store.put_process(500, None, "x", None, "running", 1.0)
    assert store.reserve_pids(1) == range(501, 502)


def test_reserving_synchronously_from_the_writer_thread_raises_instead_of_deadlocking(
    store: Store,
) -> None:
    seen: list[BaseException] = []
    done = threading.Event()

    def take(block: range) -> None:
        try:
            store.reserve_pids(1)
        except StoreError as exc:
            seen.append(exc)
        done.set()

    store.reserve_pids_later(1, take)
    assert done.wait(5)
    assert "deadlock" in str(seen[0])


def test_a_failing_reserve_later_callback_is_reported_by_flush(store: Store) -> None:
    def broken(block: range) -> None:
        raise RuntimeError(f"kernel bug with {block}")

    store.reserve_pids_later(2, broken)
    with pytest.raises(StoreError, match=r"reserve_pids_later\(2\) callback raised RuntimeError"):
        store.flush()
    assert store.reserve_pids(1) == range(3, 4)


def test_concurrent_reservations_and_appends_hand_out_disjoint_blocks(db: Path) -> None:
    blocks: list[range] = []
    lock = threading.Lock()

    def keep(block: range) -> None:
        with lock:
            blocks.append(block)

    with Store.open(db) as store:

        def reserver() -> None:
            for n in range(40):
                keep(store.reserve_pids(1 + n % 5))
                store.reserve_pids_later(3, keep)

        def appender(stream: int) -> None:
            for op in range(2000):
                store.append_journal(stream, op, "d", op, None)
                if op % 100 == 0:
                    store.put_process(10_000_000 + stream * 10_000 + op, None, "x", None, "new", 0)

        threads = [threading.Thread(target=reserver) for _ in range(4)]
        threads += [threading.Thread(target=appender, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        store.flush()
        assert raw_count(db, "journal") == 4 * 2000

    assert len(blocks) == 4 * 40 * 2
    pids = [pid for block in blocks for pid in block]
    assert len(pids) == len(set(pids))
    with Store.open(db) as store:
        assert store.reserve_pids(1).start > max(pids)
