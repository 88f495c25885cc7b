"""Lanes: admission to scarce driver slots (an LLM provider, tool runners, the sandbox).

The event loop runs the coroutines; yool applies scheduling order where it
matters, at the door of a scarce resource. A lane has `concurrency` slots.

Fast path: when a slot is free and nobody is waiting, `acquire` takes it at
once without suspending (no heap, no future). Otherwise the caller waits, and
each time a slot frees one waiter is admitted by this rule:

1. Two candidates are considered: the *best* waiter by static key
   (highest priority, then earliest deadline, None = never, then enqueue order)
   and the *oldest* waiter (earliest enqueued).
2. Each candidate's effective priority is
   ``priority + floor((now - enqueued_at) / aging_s)``: one level per `aging_s`
   seconds waited.
3. The candidate with the higher effective priority is admitted; on a tie, the
   earlier deadline, then the earlier enqueue.

With no aging in play (waits shorter than `aging_s`) this is exactly
priority, then earliest-deadline-first, then FIFO. Once waits are long, only
the oldest waiter is re-ranked by age (waiters in between are not); that is
what keeps admission O(log n) and is enough against starvation. Aging guarantees nothing
starves: the oldest waiter's effective priority grows without bound, while any
waiter enqueued more than ``(p_max - p_oldest + 2) * aging_s`` after it ranks
below it, so once the finitely many waiters that arrived before that point are
served, the oldest is admitted. Each admission is O(log n) (a heap pop or a
deque pop, plus amortised O(1) to drop stale entries lazily), never a scan.

The deadline (an absolute `loop.time()`) only orders admission; it does not
time the wait out (wrap the wait in `asyncio.timeout` for that). Time comes from
the running loop, so the virtual clock drives aging in tests.

A waiter cancelled while waiting is never admitted. A waiter granted a slot but
cancelled before it resumed passes the slot on, so no slot leaks.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import math
from collections import deque
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType

__all__ = ["ADMISSION", "Admission", "Lane", "LaneStats", "Lanes"]

# Waiter states.
_WAITING = 0
_GRANTED = 1
_GONE = 2

_COMPACT_SLACK = 64
"""Stale entries tolerated beyond the live ones before the queues are rebuilt."""


@dataclass(frozen=True, slots=True)
class LaneStats:
    """A lane's state at one instant (for `ps`, metrics and adaptive concurrency)."""

    name: str
    concurrency: int
    in_use: int
    waiting: int
    admitted_total: int
    max_wait_s: float  # longest wait of any admitted waiter so far


@dataclass(frozen=True, slots=True)
class Admission:
    """The lane a self-admitting driver's call must queue for, with the caller's order keys.

    The kernel sets `ADMISSION` around each operation of a driver that `admits_itself`; the
    driver takes `lane.slot(priority, deadline)` around each attempt it sends, so what it does
    between attempts (a retry backoff, waiting on a coalesced call) holds no slot.
    """

    lane: Lane
    priority: int
    deadline: float | None

    def slot(self) -> AbstractAsyncContextManager[None]:
        return _Slot(self.lane, self.priority, self.deadline)


ADMISSION: contextvars.ContextVar[Admission | None] = contextvars.ContextVar(
    "yool_admission", default=None
)


class _Waiter:
    __slots__ = ("deadline", "enqueued", "future", "priority", "seq", "state")

    def __init__(
        self,
        priority: int,
        deadline: float,
        seq: int,
        enqueued: float,
        future: asyncio.Future[None],
    ) -> None:
        self.priority = priority
        self.deadline = deadline  # math.inf when none
        self.seq = seq
        self.enqueued = enqueued
        self.future = future
        self.state = _WAITING


class _Slot:
    """`async with lane.slot(...)`: holds one slot for the body."""

    __slots__ = ("_deadline", "_lane", "_priority")

    def __init__(self, lane: Lane, priority: int, deadline: float | None) -> None:
        self._lane = lane
        self._priority = priority
        self._deadline = deadline

    async def __aenter__(self) -> None:
        lane = self._lane
        if lane._in_use < lane._limit and not lane._waiting:  # acquire's fast path, inlined
            lane._in_use += 1
            lane._admitted += 1
            return
        await lane.acquire(self._priority, self._deadline)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lane.release()


class Lane:
    """A pool of `concurrency` slots with priority, deadline, FIFO and aging admission."""

    __slots__ = (
        "_admitted",
        "_aging_s",
        "_fifo",
        "_heap",
        "_in_use",
        "_limit",
        "_max_wait",
        "_seq",
        "_waiting",
        "name",
    )

    def __init__(self, name: str, concurrency: int, *, aging_s: float = 1.0) -> None:
        _check_concurrency(name, concurrency)
        if not aging_s > 0:
            raise ValueError(f"lane {name!r}: aging_s must be > 0 seconds, got {aging_s!r}")
        self.name = name
        self._limit = concurrency
        self._aging_s = float(aging_s)
        self._in_use = 0
        self._waiting = 0  # live waiters, i.e. state _WAITING
        self._heap: list[tuple[int, float, int, _Waiter]] = []  # (-priority, deadline, seq, w)
        self._fifo: deque[_Waiter] = deque()
        self._seq = itertools.count()
        self._admitted = 0
        self._max_wait = 0.0

    @property
    def concurrency(self) -> int:
        return self._limit

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def waiting(self) -> int:
        return self._waiting

    def slot(
        self, priority: int = 0, deadline: float | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Hold a slot for an `async with` body; higher priority is admitted first."""
        return _Slot(self, priority, deadline)

    async def acquire(self, priority: int = 0, deadline: float | None = None) -> None:
        """Take a slot, waiting if none is free; pair with `release()`."""
        # Granted-but-not-resumed waiters count in `_in_use`, so a newcomer never barges.
        if self._in_use < self._limit and not self._waiting:
            self._in_use += 1
            self._admitted += 1
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        waiter = _Waiter(
            priority,
            math.inf if deadline is None else deadline,
            next(self._seq),
            loop.time(),
            future,
        )
        heapq.heappush(self._heap, (-priority, waiter.deadline, waiter.seq, waiter))
        self._fifo.append(waiter)
        self._waiting += 1
        try:
            await future
        except BaseException:
            if waiter.state == _GRANTED:
                # Admitted, but cancelled before it could run: hand the slot on.
                self.release()
            elif waiter.state == _WAITING:
                waiter.state = _GONE
                self._waiting -= 1
                self._compact()
            raise

    def release(self) -> None:
        """Give back a slot taken by `acquire`; admits the next waiter if there is room."""
        if self._in_use <= 0:
            raise RuntimeError(f"lane {self.name!r}: release() without a matching acquire()")
        self._in_use -= 1
        if self._waiting:
            self._admit()

    def resize(self, concurrency: int) -> None:
        """Change the number of slots; holders above a smaller limit finish normally."""
        _check_concurrency(self.name, concurrency)
        self._limit = concurrency
        if self._waiting:
            self._admit()

    def stats(self) -> LaneStats:
        return LaneStats(
            name=self.name,
            concurrency=self._limit,
            in_use=self._in_use,
            waiting=self._waiting,
            admitted_total=self._admitted,
            max_wait_s=self._max_wait,
        )

    def _live(self, waiter: _Waiter) -> bool:
        """Is this queue entry still a candidate? Drops waiters whose task was cancelled."""
        if waiter.state != _WAITING:
            return False
        if waiter.future.cancelled():
            # Cancelled, but its task has not run its cleanup yet: do it here.
            waiter.state = _GONE
            self._waiting -= 1
            return False
        return True

    def _admit(self) -> None:
        heap, fifo = self._heap, self._fifo
        while self._in_use < self._limit:
            while heap and not self._live(heap[0][3]):
                heapq.heappop(heap)
            if not heap:
                break
            best = heap[0][3]
            while not self._live(fifo[0]):
                fifo.popleft()
            oldest = fifo[0]
            now = best.future.get_loop().time()
            if oldest is best:
                heapq.heappop(heap)
                fifo.popleft()
            elif self._ranks_before(oldest, best, now):
                fifo.popleft()  # its heap entry goes stale and is dropped lazily
                best = oldest
            else:
                heapq.heappop(heap)  # its fifo entry goes stale and is dropped lazily
            best.state = _GRANTED
            self._waiting -= 1
            self._in_use += 1
            self._admitted += 1
            waited = now - best.enqueued
            if waited > self._max_wait:
                self._max_wait = waited
            best.future.set_result(None)
        self._compact()

    def _ranks_before(self, a: _Waiter, b: _Waiter, now: float) -> bool:
        aging = self._aging_s
        a_eff = a.priority + int((now - a.enqueued) // aging)
        b_eff = b.priority + int((now - b.enqueued) // aging)
        return (-a_eff, a.deadline, a.seq) < (-b_eff, b.deadline, b.seq)

    def _compact(self) -> None:
        # Stale entries are normally dropped when they reach the front; rebuild only
        # when they dominate, so memory stays O(live waiters), amortised O(1) each.
        bound = 2 * self._waiting + _COMPACT_SLACK
        if len(self._heap) > bound:
            self._heap = [e for e in self._heap if e[3].state == _WAITING]
            heapq.heapify(self._heap)
        if len(self._fifo) > bound:
            self._fifo = deque(w for w in self._fifo if w.state == _WAITING)

    def __repr__(self) -> str:
        return (
            f"Lane({self.name!r}, concurrency={self._limit}, in_use={self._in_use}, "
            f"waiting={self._waiting})"
        )


class Lanes:
    """The registry of lanes: created on first use, sized by policy, capped by a ceiling."""

    def __init__(self, default_concurrency: int, ceiling: int, aging_s: float = 1.0) -> None:
        if ceiling < 1:
            raise ValueError(f"lanes: ceiling must be >= 1, got {ceiling!r}")
        _check_concurrency("default", default_concurrency)
        if default_concurrency > ceiling:
            raise ValueError(
                f"lanes: default_concurrency {default_concurrency} exceeds the ceiling {ceiling}"
            )
        self.default_concurrency = default_concurrency
        self.ceiling = ceiling
        self.aging_s = aging_s
        self._lanes: dict[str, Lane] = {}

    def get(self, name: str) -> Lane:
        """The lane called `name`, created with the default concurrency if new."""
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = Lane(name, self.default_concurrency, aging_s=self.aging_s)
        return lane

    def configure(self, name: str, concurrency: int) -> Lane:
        """Set a lane's concurrency (creating the lane if new); never above the ceiling."""
        if concurrency > self.ceiling:
            raise ValueError(
                f"lane {name!r}: concurrency {concurrency} exceeds the ceiling {self.ceiling}"
                " (raise the ceiling or ask for fewer slots)"
            )
        lane = self._lanes.get(name)
        if lane is None:
            lane = self._lanes[name] = Lane(name, concurrency, aging_s=self.aging_s)
        else:
            lane.resize(concurrency)
        return lane

    def stats(self) -> list[LaneStats]:
        """Every lane's stats, in creation order."""
        return [lane.stats() for lane in self._lanes.values()]

    def __iter__(self) -> Iterator[Lane]:
        return iter(list(self._lanes.values()))

    def __len__(self) -> int:
        return len(self._lanes)

    def __contains__(self, name: object) -> bool:
        return name in self._lanes


def _check_concurrency(name: str, concurrency: int) -> None:
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"lane {name!r}: concurrency must be an integer >= 1, got {concurrency!r}")
