"""`yool ps` and `yool trace`: read the store on `YOOL_HOME` directly, read-only.

A running server (or `yool run`) owns the store's one writer; these commands open the SQLite
file with `mode=ro` beside it, so a second terminal can watch agents work without going
through MCP and without ever taking a write lock. Only the standard library is imported, so
they start fast.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from yool.kernel.boots import boot_alive
from yool.kernel.store import EventRow

AGENTS_NS = "agents"  # the kv namespace `yool.tools.session` keeps agent records in
LIVE = ("running", "stopped")
RECENT_ENDED = 20  # ended agents `ps` shows without --all
POLL_S = 0.2  # how often `trace --follow` looks for new events
TURN_CHARS = 2000  # of a transcript entry's text `trace` shows (all of it with --json)


class NoStore(Exception):
    """The store is missing or unreadable; the message says what to do."""


def open_store(path: Path, *, any_thread: bool = False) -> sqlite3.Connection:
    """A read-only connection to the store at `path`, or `NoStore` saying what to do.
    `any_thread`: it may be used from a thread pool (one thread at a time)."""
    if not path.is_file():
        raise NoStore(f"no yool store at {path}: start `yool server` or `yool run` first")
    try:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=5.0, check_same_thread=not any_thread
        )
        conn.execute("SELECT 1 FROM events LIMIT 1").fetchall()
        conn.execute("SELECT 1 FROM kv LIMIT 1").fetchall()
    except sqlite3.Error as e:
        raise NoStore(f"cannot read the yool store at {path}: {e}") from None
    return conn


# -- ps ----------------------------------------------------------------------------------


def reason_text(reason: Any) -> str | None:
    """An exit reason as `yool.kernel.ExitReason` prints it: normal, quota(tokens), ..."""
    if not isinstance(reason, dict) or "kind" not in reason:
        return None
    kind = str(reason["kind"])
    if kind == "killed":
        return f"killed(by={reason.get('by')})"
    detail = reason.get("detail")
    return kind if detail is None else f"{kind}({detail})"


def agents(conn: sqlite3.Connection, *, everything: bool = False) -> list[dict[str, Any]]:
    """Agent records joined with their process rows, by pid.

    The process row wins when the record is stale: an agent whose server went away is
    `interrupted` there before any server reopens the store to mark its record. Without
    `everything`, ended agents are limited to the most recent `RECENT_ENDED`.
    """
    rows = conn.execute("SELECT value FROM kv WHERE ns = ? ORDER BY key", (AGENTS_NS,))
    records = [json.loads(value) for (value,) in rows]
    records = [r for r in records if isinstance(r, dict) and isinstance(r.get("pid"), int)]
    pids = [r["pid"] for r in records]
    procs: dict[int, tuple[str, str | None, float | None]] = {}
    steps: dict[int, int] = {}
    for chunk in _chunks(pids, 500):
        marks = ",".join("?" * len(chunk))
        for pid, status, reason, ended in conn.execute(
            f"SELECT pid, status, reason, ended FROM processes WHERE pid IN ({marks})", chunk
        ):
            procs[pid] = (status, reason, ended)
    live = [r["pid"] for r in records if r.get("status") in LIVE]
    for chunk in _chunks(live, 500):
        marks = ",".join("?" * len(chunk))
        for pid, count in conn.execute(
            "SELECT pid, count(*) FROM events WHERE kind = 'log' AND pid IN "
            f"({marks}) AND json_extract(data, '$.message') = 'turn' "
            "AND json_extract(data, '$.role') = 'assistant' GROUP BY pid",
            chunk,
        ):
            steps[pid] = count
    for pid in _orphaned(conn, [pid for pid in live if procs.get(pid, ("",))[0] == "running"]):
        status, reason, ended = procs[pid]
        procs[pid] = ("interrupted", reason or '{"kind": "interrupted"}', ended)
    out = [_row(r, procs.get(r["pid"]), steps.get(r["pid"])) for r in records]
    if not everything:
        ended = [row for row in out if row["status"] not in LIVE]
        keep = {row["pid"] for row in ended[-RECENT_ENDED:]}
        out = [row for row in out if row["status"] in LIVE or row["pid"] in keep]
    return out


def _orphaned(conn: sqlite3.Connection, pids: list[int]) -> list[int]:
    """Of these `running` pids, those whose yool process died (its boot lock is free): a
    server killed with SIGKILL never got to mark them."""
    if not pids:
        return []
    try:
        blocks = conn.execute("SELECT start, stop, boot FROM pid_blocks").fetchall()
    except sqlite3.OperationalError:  # a database from before boots were recorded
        return []
    database = Path(
        next(row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main")
    )
    alive: dict[str, bool] = {}
    out = []
    for pid in pids:
        boot = next((b for start, stop, b in blocks if start <= pid < stop), None)
        if boot is None:
            continue  # unknown owner: leave it as it is
        if boot not in alive:
            alive[boot] = boot_alive(database, boot)
        if not alive[boot]:
            out.append(pid)
    return out


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _row(
    record: dict[str, Any], proc: tuple[str, str | None, float | None] | None, steps: int | None
) -> dict[str, Any]:
    status = str(record.get("status") or "running")
    reason = record.get("reason")
    ended = record.get("ended")
    if status in LIVE and proc is not None and proc[0] != "running":
        status = "interrupted" if proc[0] == "interrupted" else "exited"
        reason = json.loads(proc[1]) if proc[1] else reason
        ended = proc[2]
    return {
        "pid": record["pid"],
        "status": status,
        "reason": reason_text(reason),
        "result": record.get("result"),
        "steps": max(int(record.get("steps") or 0), steps or 0),
        "tokens": int(record.get("tokens") or 0),
        "usd": round(float(record.get("usd") or 0.0), 6),
        "tool_calls": int(record.get("tool_calls") or 0),
        "provider": record.get("provider"),
        "model": record.get("model"),
        "persona": record.get("persona"),
        "task": str(record.get("task") or ""),
        "started": record.get("started"),
        "ended": ended,
        "origin": record.get("origin"),
    }


def ps_table(rows: list[dict[str, Any]], now: float | None = None) -> str:
    """`rows` as a fixed-width table, one agent a line, the task cut to fit."""
    if not rows:
        return "no agents yet"
    now = time.time() if now is None else now
    table = [("PID", "STATUS", "REASON", "STEPS", "TOKENS", "USD", "TIME", "TASK")]
    for row in rows:
        started = row["started"] or now
        elapsed = (row["ended"] or now) - started if row["status"] in LIVE or row["ended"] else 0
        task = " ".join(row["task"].split())
        table.append(
            (
                str(row["pid"]),
                row["status"],
                row["reason"] or "-",
                str(row["steps"]),
                str(row["tokens"]),
                f"{row['usd']:.4f}",
                _duration(elapsed),
                task[:60] + ("…" if len(task) > 60 else ""),
            )
        )
    widths = [max(len(line[column]) for line in table) for column in range(7)]
    lines = []
    for line in table:
        cells = [
            cell.rjust(width) if column in (0, 3, 4, 5, 6) else cell.ljust(width)
            for column, (cell, width) in enumerate(zip(line, widths, strict=False))
        ]
        lines.append("  ".join([*cells, line[7]]).rstrip())
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def ps(path: Path, *, everything: bool, as_json: bool, out: TextIO) -> None:
    conn = open_store(path)
    try:
        rows = agents(conn, everything=everything)
    finally:
        conn.close()
    if as_json:
        out.write(json.dumps({"store": str(path), "agents": rows}, indent=2) + "\n")
    else:
        out.write(ps_table(rows) + "\n")


# -- trace --------------------------------------------------------------------------------


def _event(row: tuple[Any, ...]) -> EventRow:
    seq, ts, kind, pid, data = row
    parsed = json.loads(data) if data else None
    return EventRow(seq, ts, kind, pid, parsed if isinstance(parsed, dict) else None)


def last_events(conn: sqlite3.Connection, n: int, pid: int | None) -> list[EventRow]:
    """The last `n` events (of `pid`, if given), oldest first."""
    where, params = ("WHERE pid = ?", [pid]) if pid is not None else ("", [])
    rows = conn.execute(
        f"SELECT seq, ts, kind, pid, data FROM events {where} ORDER BY seq DESC LIMIT ?",
        [*params, n],
    ).fetchall()
    return [_event(row) for row in reversed(rows)]


def events_after(
    conn: sqlite3.Connection, seq: int, pid: int | None, limit: int = 1000
) -> list[EventRow]:
    """Events with a sequence number above `seq` (of `pid`, if given), oldest first."""
    where, params = ("AND pid = ?", [pid]) if pid is not None else ("", [])
    rows = conn.execute(
        f"SELECT seq, ts, kind, pid, data FROM events WHERE seq > ? {where} ORDER BY seq LIMIT ?",
        [seq, *params, limit],
    ).fetchall()
    return [_event(row) for row in rows]


def max_seq(conn: sqlite3.Connection) -> int:
    value = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
    return int(value or 0)


def render(ev: EventRow) -> str:
    """One event as a person reads it; transcript entries as `[pid 7] assistant: text`."""
    clock = time.strftime("%H:%M:%S", time.localtime(ev.ts)) + f".{int(ev.ts % 1 * 1000):03d}"
    who = f"[pid {ev.pid}]" if ev.pid is not None else "[kernel]"
    data = dict(ev.data or {})
    if ev.kind == "log" and data.get("message") == "turn":
        role = data.get("role", "?")
        text = str(data.get("text") or "")
        if len(text) > TURN_CHARS:
            text = text[:TURN_CHARS] + f"…[{len(text) - TURN_CHARS} more chars]"
        tools = data.get("tools") or []
        if tools:
            text = (text + "\n" if text else "") + "→ calls: " + ", ".join(map(str, tools))
        body = text.replace("\n", "\n" + " " * (len(clock) + len(who) + 2) + "  ")
        return f"{clock} {who} {role}: {body}"
    if ev.kind == "exit":
        name = data.pop("name", None)
        reason = reason_text(data.pop("reason", None)) or "?"
        detail = f" ({name})" if name else ""
        rest = _fields(data)
        return f"{clock} {who} exit {reason}{detail}{rest}"
    if ev.kind == "log":
        message = data.pop("message", "")
        return f"{clock} {who} log {message}{_fields(data)}"
    return f"{clock} {who} {ev.kind}{_fields(data)}"


def _fields(data: dict[str, Any]) -> str:
    parts = []
    for key, value in data.items():
        if key == "reason" and reason_text(value) is not None:
            value = reason_text(value)
        shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if len(shown) > 200:
            shown = shown[:200] + "…"
        parts.append(f"{key}={shown}")
    return (" " + " ".join(parts)) if parts else ""


class _Stop:
    """Set by SIGINT or SIGTERM, so `--follow` ends its loop and exits cleanly."""

    def __init__(self) -> None:
        self.stopped = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.stopped = True


def trace(
    path: Path,
    *,
    pid: int | None,
    n: int,
    follow: bool,
    as_json: bool,
    out: TextIO,
    note: Callable[[str], None] | None = None,
) -> None:
    """Print the last `n` events; with `follow`, then every new one until SIGINT/SIGTERM."""
    show = (lambda ev: json.dumps(ev.to_json(), ensure_ascii=False)) if as_json else render
    if not follow:
        conn = open_store(path)
        try:
            for ev in last_events(conn, n, pid):
                out.write(show(ev) + "\n")
        finally:
            conn.close()
        return
    stop = _Stop()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        existed = path.is_file()
        live = _wait_for_store(path, stop, note)
        if live is None:
            return
        conn = live
        try:
            # A store that appeared while we waited is all news: show it from the start.
            backlog = last_events(conn, n, pid) if n > 0 and existed else []
            for ev in backlog:
                out.write(show(ev) + "\n")
            seq = backlog[-1].seq if backlog else (max_seq(conn) if existed else 0)
            out.flush()
            while not stop.stopped:
                fresh = events_after(conn, seq, pid)
                for ev in fresh:
                    out.write(show(ev) + "\n")
                    seq = ev.seq
                if fresh:
                    out.flush()
                else:
                    _nap(POLL_S, stop)
        finally:
            conn.close()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _wait_for_store(
    path: Path, stop: _Stop, note: Callable[[str], None] | None
) -> sqlite3.Connection | None:
    """The store once it exists (a server may not have created it yet), or None if stopped."""
    told = False
    while not stop.stopped:
        try:
            return open_store(path)
        except NoStore as e:
            if not path.is_file() or "no such table" in str(e):
                if not told and note is not None:
                    note(f"waiting for a yool store at {path} (start `yool server` or `yool run`)")
                    told = True
                _nap(POLL_S, stop)
                continue
            raise
    return None


def _nap(seconds: float, stop: _Stop) -> None:
    """Sleep in short slices, so a stop request is seen within 50 ms."""
    end = time.monotonic() + seconds
    while not stop.stopped:
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.05, left))
