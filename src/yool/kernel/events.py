"""The event log: a bounded in-memory ring of what the kernel did, persisted.

Lifecycle events (spawn, exit, signal, fault, charge-refused, ...) are events;
the hot per-message path only bumps counters, which `metrics` reports.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple


class Event(NamedTuple):
    seq: int
    ts: float  # wall-clock seconds
    kind: str
    pid: int | None
    data: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "ts": self.ts, "kind": self.kind, "pid": self.pid}
        if self.data:
            out.update(self.data)
        return out


Sink = Callable[[Event], None]


class EventLog:
    __slots__ = ("counts", "ring", "seq", "sinks", "wall")

    def __init__(self, size: int, wall: Callable[[], float], start_seq: int = 0) -> None:
        self.ring: deque[Event] = deque(maxlen=size)
        self.seq = start_seq
        self.counts: dict[str, int] = {}
        self.sinks: list[Sink] = []
        self.wall = wall

    def emit(self, kind: str, pid: int | None, data: dict[str, Any] | None = None) -> Event:
        self.seq += 1
        ev = Event(self.seq, self.wall(), kind, pid, data)
        self.ring.append(ev)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        for sink in self.sinks:
            sink(ev)
        return ev

    def tail(
        self, n: int = 50, pid: int | None = None, kinds: frozenset[str] | None = None
    ) -> list[Event]:
        out: list[Event] = []
        for ev in reversed(self.ring):
            if (pid is None or ev.pid == pid) and (kinds is None or ev.kind in kinds):
                out.append(ev)
                if len(out) >= n:
                    break
        out.reverse()
        return out
