"""The tuple space: Linda's `out`, `in`, `rd` and `scan` on named lanes, indexed and durable.

Each lane keeps its tuples by arity, in arrival order, and files every field value in an
equality index (`(arity, position) -> value -> tuple ids`). A template is answered from the
smallest bucket among its equality fields, so tuples that hold another value there are never
looked at. A template without one, or whose buckets are wide, is answered from a type index
(`position -> type -> ids`, in arrival order) or a sorted index (`position -> sorted (value,
id)` for numbers and for strings; a range or prefix is two bisects): the planner counts each
candidate set (O(log n)) and takes the narrowest, then checks the rest of the template on
those candidates only. So `in`/`rd` cost does not grow with the tuples that cannot match; only
an all-wildcard template walks its arity. Type and sorted indexes are built for an (arity,
position) the first time a template needs one (one pass), then kept up to date by every `out`
and take, so lanes only ever queried by equality pay nothing for them.

`in` takes the oldest matching tuple (ids grow with arrival): bucket, type and arity sources
are walked oldest first and stop at the first match; a sorted index yields value order, so
every candidate in its slice is checked and the smallest id wins (the planner prefers an
arrival-order source when counts tie). `examined` counts the candidates checked.

`in` and `rd` may block, with a timeout, until a matching tuple is `out`: an `out` first offers
its tuple to the lane's waiters in arrival order (every matching `rd` sees it, the first
matching `in` takes it). A waiter that is cancelled or times out leaves nothing behind, and a
tuple handed to a taker that was cancelled before it resumed goes back into the lane, so no
tuple is ever lost.

A lane declared durable writes every tuple to the store (`tuple_rows`) and removes it when
taken, through the store's writer thread; `load` brings durable lanes back after a restart.
`out` on a durable lane returns once the tuple is committed; a take is deleted on the next
group commit, so after a crash a durable lane is at-least-once: a tuple taken in the last
moments may come back.

Access to a lane is a capability of kind `lane` (rights `read`, `take`, `write`) over a lane
name or a `prefix*` pattern; derived capabilities may add `{"lane": pattern}` caveats. The
space checks it on every operation (`require`), so a revoked capability stops working at once.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import re
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from sortedcontainers import SortedList

from yool.kernel.errors import CapError
from yool.tuplespace.templates import TYPE_COVERS, Range, Template, check_tuple, key, type_name

if TYPE_CHECKING:
    from yool.kernel.caps import CapTable
    from yool.kernel.store import Store

__all__ = ["LANE_RIGHTS", "LaneInfo", "SpaceError", "TupleSpace", "lane_allows"]

LANE_RIGHTS: Final = ("read", "take", "write")
_LANE_NAME: Final = re.compile(r"[A-Za-z0-9_.:/\-]{1,128}")

Tup = tuple[Any, ...]
Bucket = int | OrderedDict[int, None]


class SpaceError(ValueError):
    """A lane operation the caller can fix (bad lane name, full lane)."""


def lane_allows(pattern: str, lane: str) -> bool:
    """Whether a lane capability's pattern (`name`, `prefix*` or `*`) covers `lane`."""
    if pattern.endswith("*"):
        return lane.startswith(pattern[:-1])
    return pattern == lane


@dataclass(frozen=True, slots=True)
class LaneInfo:
    name: str
    durable: bool
    tuples: int
    waiting: int


class _Waiter:
    __slots__ = ("future", "take", "tpl")

    def __init__(self, tpl: Template, take: bool, future: asyncio.Future[Tup]) -> None:
        self.tpl = tpl
        self.take = take
        self.future = future


class _Lane:
    __slots__ = ("by_arity", "count", "durable", "eq", "examined", "extra", "name", "waiters")

    def __init__(self, name: str, durable: bool) -> None:
        self.name = name
        self.durable = durable
        self.by_arity: dict[int, OrderedDict[int, Tup]] = {}
        # arity -> one index per position: value key -> tuple ids (the hot path looks an
        # arity up once, then walks its positions in step with the tuple's fields)
        self.eq: dict[int, list[dict[Any, Bucket]]] = {}
        # arity -> the type and sorted indexes built so far, kept up to date by add/remove
        self.extra: dict[int, dict[tuple[str, int], _Index]] = {}
        self.waiters: dict[int, list[_Waiter]] = {}
        self.count = 0
        self.examined = 0  # candidates checked against a template (tests, metrics)

    def add(self, tid: int, t: Tup) -> None:
        arity = len(t)
        rows = self.by_arity.get(arity)
        if rows is None:
            rows = self.by_arity[arity] = OrderedDict()
            self.eq[arity] = [{} for _ in range(arity)]
        rows[tid] = t
        for index, value in zip(self.eq[arity], t, strict=True):
            tv = type(value)
            k = value if tv is str or tv is int else key(value)
            bucket = index.get(k)
            if bucket is None:
                index[k] = tid  # most values are unique: a bare id, no container
            elif isinstance(bucket, int):
                index[k] = OrderedDict(((bucket, None), (tid, None)))
            else:
                bucket[tid] = None
        extra = self.extra.get(arity)
        if extra:
            for ix in extra.values():
                ix.add(tid, t)
        self.count += 1

    def remove(self, tid: int, t: Tup) -> None:
        del self.by_arity[len(t)][tid]
        for index, value in zip(self.eq[len(t)], t, strict=True):
            tv = type(value)
            k = value if tv is str or tv is int else key(value)
            bucket = index[k]
            if isinstance(bucket, int):
                del index[k]
            else:
                del bucket[tid]
                if not bucket:
                    del index[k]
        extra = self.extra.get(len(t))
        if extra:
            for ix in extra.values():
                ix.remove(tid, t)
        self.count -= 1

    def _index(self, arity: int, kind: str, pos: int) -> _Index:
        """The (arity, kind, position) index, built from the arity's tuples on first use."""
        extra = self.extra.setdefault(arity, {})
        ix = extra.get((kind, pos))
        if ix is None:
            ix = extra[kind, pos] = _TypeIndex(pos) if kind == "type" else _SortedIndex(pos, kind)
            for tid, t in self.by_arity[arity].items():
                ix.add(tid, t)
        return ix

    def plan(self, tpl: Template) -> tuple[Iterable[int], bool] | None:
        """Candidate ids from the most selective index, and whether they come oldest first.

        The smallest equality bucket, unless a type, range or prefix candidate set is
        narrower by count (ties go to equality, then to a source in arrival order, which can
        stop at its first match); with none of these, the whole arity. None: nothing can
        match.
        """
        rows = self.by_arity.get(tpl.arity)
        if not rows:
            return None
        choice: tuple[int, bool, Any] = (len(rows), True, None)
        if tpl.eq:
            best: OrderedDict[int, None] | None = None
            size = 0
            indexes = self.eq[tpl.arity]
            for pos, k in tpl.eq:
                bucket = indexes[pos].get(k)
                if bucket is None:
                    return None
                if isinstance(bucket, int):
                    return (bucket,), True
                if best is None or len(bucket) < size:
                    best, size = bucket, len(bucket)
            if not (tpl.types or tpl.ranges):
                return best or (), True
            choice = (size, True, best)
        for pos, name in tpl.types:
            tix = self._index(tpl.arity, "type", pos)
            assert isinstance(tix, _TypeIndex)
            n = tix.count(name)
            if n == 0:
                return None
            if n < choice[0]:
                choice = (n, True, (tix, name))
        for span in tpl.ranges:
            six = self._index(tpl.arity, span[1], span[0])
            assert isinstance(six, _SortedIndex)
            lo, hi = six.bounds(span)
            if hi <= lo:
                return None
            if hi - lo < choice[0]:
                choice = (hi - lo, False, (six, lo, hi))
        _, fifo, source = choice
        if source is None:
            return rows, True
        if isinstance(source, OrderedDict):
            return source, True
        if fifo:
            tix, name = source
            return tix.ids(name), True
        six, lo, hi = source
        return six.ids(lo, hi), False

    def candidates(self, tpl: Template) -> Iterable[int] | None:
        """The ids `plan` would try (None: nothing can match)."""
        got = self.plan(tpl)
        return None if got is None else got[0]

    def find(self, tpl: Template) -> tuple[int, Tup] | None:
        """The oldest tuple matching `tpl` (the one `in` takes), with its id."""
        got = self.plan(tpl)
        if got is None:
            return None
        ids, fifo = got
        rows = self.by_arity[tpl.arity]
        matches = tpl.matches
        n = 0
        hit: tuple[int, Tup] | None = None
        for tid in ids:
            n += 1
            t = rows[tid]
            if matches(t) and (hit is None or tid < hit[0]):
                hit = (tid, t)
                if fifo:
                    break
        self.examined += n
        return hit

    def matching(self, tpl: Template, limit: int) -> list[Tup]:
        """Up to `limit` matching tuples, oldest first."""
        got = self.plan(tpl)
        if got is None:
            return []
        ids, fifo = got
        rows = self.by_arity[tpl.arity]
        n = 0
        hits: list[tuple[int, Tup]] = []
        for tid in ids:
            n += 1
            t = rows[tid]
            if tpl.matches(t):
                hits.append((tid, t))
                if fifo and len(hits) >= limit:
                    break
        self.examined += n
        if not fifo:
            hits.sort(key=_first)
        return [t for _, t in hits[:limit]]


def _first(hit: tuple[int, Tup]) -> int:
    return hit[0]


class _TypeIndex:
    """One position's tuple ids by the type of the value there, each in arrival order."""

    __slots__ = ("by_type", "pos")

    def __init__(self, pos: int) -> None:
        self.pos = pos
        self.by_type: dict[str, OrderedDict[int, None]] = {}

    def add(self, tid: int, t: Tup) -> None:
        name = type_name(t[self.pos])
        bucket = self.by_type.get(name)
        if bucket is None:
            bucket = self.by_type[name] = OrderedDict()
        bucket[tid] = None

    def remove(self, tid: int, t: Tup) -> None:
        name = type_name(t[self.pos])
        bucket = self.by_type[name]
        del bucket[tid]
        if not bucket:
            del self.by_type[name]

    def count(self, constraint: str) -> int:
        return sum(len(self.by_type.get(n, ())) for n in TYPE_COVERS[constraint])

    def ids(self, constraint: str) -> Iterable[int]:
        buckets = [b for n in TYPE_COVERS[constraint] if (b := self.by_type.get(n))]
        return buckets[0] if len(buckets) == 1 else heapq.merge(*buckets)


class _SortedIndex:
    """One position's numbers (bools excluded) or strings, as sorted (value, id) pairs."""

    __slots__ = ("pairs", "pos", "types")

    def __init__(self, pos: int, kind: str) -> None:
        self.pos = pos
        self.types: frozenset[type] = frozenset((int, float) if kind == "num" else (str,))
        self.pairs: SortedList[tuple[Any, ...]] = SortedList()  # (value, id); (value,) bisects

    def add(self, tid: int, t: Tup) -> None:
        v = t[self.pos]
        if type(v) in self.types:
            self.pairs.add((v, tid))

    def remove(self, tid: int, t: Tup) -> None:
        v = t[self.pos]
        if type(v) in self.types:
            self.pairs.remove((v, tid))

    def bounds(self, span: Range) -> tuple[int, int]:
        """The slice of `pairs` whose values lie in the range (bisect; O(log n))."""
        _, _, lo, lo_incl, hi, hi_incl = span
        pairs = self.pairs
        start = (
            0
            if lo is None
            else (pairs.bisect_left((lo,)) if lo_incl else pairs.bisect_right((lo, math.inf)))
        )
        stop = (
            len(pairs)
            if hi is None
            else (pairs.bisect_right((hi, math.inf)) if hi_incl else pairs.bisect_left((hi,)))
        )
        return start, stop

    def ids(self, start: int, stop: int) -> Iterable[int]:
        return (tid for _, tid in self.pairs.islice(start, stop))


_Index = _TypeIndex | _SortedIndex


class TupleSpace:
    """Lanes of tuples in memory, durable ones mirrored in the store (see the module doc)."""

    def __init__(self, store: Store | None = None, *, queue_maxsize: int | None = None) -> None:
        self._store = store
        self._lanes: dict[str, _Lane] = {}
        self._next = 1
        self.queue_maxsize = queue_maxsize
        self.outs = 0
        self.takes = 0

    # -- lanes ------------------------------------------------------------------------

    def _lane(self, name: str) -> _Lane:
        lane = self._lanes.get(name)
        if lane is None:
            if type(name) is not str or not _LANE_NAME.fullmatch(name):
                raise SpaceError(
                    f"lane: {name!r} is not a lane name (1-128 of letters, digits, _.:/-)"
                )
            lane = self._lanes[name] = _Lane(name, False)
        return lane

    def declare(self, name: str, *, durable: bool = False) -> None:
        """Create a lane (idempotent); a durable one keeps its tuples across restarts.

        A lane only ever becomes durable (its tuples so far are written then), never less so.
        """
        lane = self._lane(name)
        if not durable or lane.durable:
            return
        store = self._store
        if store is None:
            raise SpaceError(f"lane {name!r}: durable lanes need a store (YOOL_HOME)")
        lane.durable = True
        rows = [(tid, t) for by in lane.by_arity.values() for tid, t in by.items()]
        store.write_later(partial(_declare, lane=name, rows=rows))

    def lanes(self) -> list[LaneInfo]:
        return [
            LaneInfo(n, lane.durable, lane.count, sum(len(w) for w in lane.waiters.values()))
            for n, lane in self._lanes.items()
        ]

    @property
    def examined(self) -> int:
        """Candidates checked against a template so far, over every lane (tests, metrics)."""
        return sum(lane.examined for lane in self._lanes.values())

    def count(self, name: str) -> int:
        lane = self._lanes.get(name)
        return 0 if lane is None else lane.count

    def is_durable(self, name: str) -> bool:
        lane = self._lanes.get(name)
        return lane is not None and lane.durable

    async def load(self) -> int:
        """Bring back every durable lane from the store; returns how many tuples came back."""
        store = self._store
        if store is None:
            return 0
        lanes, rows = await store.read(_load)
        for name in lanes:
            self._lane(name).durable = True
        for name, tid, data in rows:
            self._lanes[name].add(tid, tuple(json.loads(data)))
            self._next = max(self._next, tid + 1)
        return len(rows)

    # -- the primitives -----------------------------------------------------------------

    def out_nowait(self, name: str, values: Sequence[Any]) -> int:
        """Put a tuple; returns its id. On a durable lane it is committed in the background."""
        lane = self._lane(name)
        t = check_tuple(values)
        tid = self._next
        self._next += 1
        self.outs += 1
        if self._offer(lane, t):
            return tid  # handed straight to a waiting `in`
        limit = self.queue_maxsize
        if limit is not None and lane.count >= limit:
            raise SpaceError(f"lane {name!r} is full ({limit} tuples, YOOL_QUEUE_MAXSIZE)")
        lane.add(tid, t)
        if lane.durable and self._store is not None:
            self._store.write_later(partial(_insert, lane=name, tid=tid, data=_dumps(t)))
        return tid

    async def out(self, name: str, values: Sequence[Any]) -> int:
        """Put a tuple; on a durable lane, return once it is committed."""
        tid = self.out_nowait(name, values)
        if self._store is not None and self.is_durable(name):
            await self._store.write(_noop)
        return tid

    def _offer(self, lane: _Lane, t: Tup) -> bool:
        """Hand `t` to waiters in arrival order; True if an `in` took it."""
        waiters = lane.waiters.get(len(t))
        if not waiters:
            return False
        taken = False
        keep: list[_Waiter] = []
        for w in waiters:
            if w.future.done():
                continue  # cancelled; its task cleans up too
            if taken or not w.tpl.matches(t):
                keep.append(w)
                continue
            w.future.set_result(t)
            if w.take:
                taken = True
                self.takes += 1
        lane.waiters[len(t)] = keep
        return taken

    def inp(self, name: str, template: Template | Sequence[Any]) -> Tup | None:
        """Take a matching tuple if there is one now (Linda's `inp`)."""
        lane = self._lanes.get(name)
        if lane is None:
            return None
        hit = lane.find(_tpl(template))
        if hit is None:
            return None
        tid, t = hit
        self._taken(lane, tid, t)
        return t

    def inp_many(self, name: str, template: Template | Sequence[Any], limit: int) -> list[Tup]:
        """Take up to `limit` matching tuples at once (batched draining)."""
        lane = self._lanes.get(name)
        tpl = _tpl(template)
        out: list[Tup] = []
        while lane is not None and len(out) < limit:
            hit = lane.find(tpl)
            if hit is None:
                break
            self._taken(lane, *hit)
            out.append(hit[1])
        return out

    def _taken(self, lane: _Lane, tid: int, t: Tup) -> None:
        lane.remove(tid, t)
        self.takes += 1
        if lane.durable and self._store is not None:
            self._store.write_later(partial(_delete, lane=lane.name, tid=tid))

    def rdp(self, name: str, template: Template | Sequence[Any]) -> Tup | None:
        """A matching tuple, left in place, if there is one now (Linda's `rdp`)."""
        lane = self._lanes.get(name)
        hit = None if lane is None else lane.find(_tpl(template))
        return None if hit is None else hit[1]

    def scan(self, name: str, template: Template | Sequence[Any], limit: int = 100) -> list[Tup]:
        """Up to `limit` matching tuples, oldest first within an arity, all left in place."""
        lane = self._lanes.get(name)
        if lane is None or limit < 1:
            return []
        return lane.matching(_tpl(template), limit)

    async def in_(
        self, name: str, template: Template | Sequence[Any], wait_s: float | None = None
    ) -> Tup | None:
        """Take a matching tuple, waiting up to `wait_s` s (None: forever) for one."""
        return await self._wait(name, _tpl(template), True, wait_s)

    async def rd(
        self, name: str, template: Template | Sequence[Any], wait_s: float | None = None
    ) -> Tup | None:
        """Read a matching tuple without taking it, waiting up to `wait_s` s for one."""
        return await self._wait(name, _tpl(template), False, wait_s)

    async def _wait(self, name: str, tpl: Template, take: bool, wait_s: float | None) -> Tup | None:
        lane = self._lane(name)
        hit = lane.find(tpl)
        if hit is not None:
            if take:
                self._taken(lane, *hit)
            return hit[1]
        if wait_s is not None and wait_s <= 0:
            return None
        future: asyncio.Future[Tup] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(tpl, take, future)
        lane.waiters.setdefault(tpl.arity, []).append(waiter)
        try:
            if wait_s is None:
                return await future
            async with asyncio.timeout(wait_s):
                return await future
        except TimeoutError:
            if future.done() and not future.cancelled():
                return future.result()  # it came as the timer fired: it is ours
            self._drop(lane, waiter)
            return None
        except BaseException:
            if future.done() and not future.cancelled():
                if take:  # handed over, but we will never resume: give it back
                    t = future.result()
                    self.takes -= 1
                    self.out_nowait(name, t)
            else:
                self._drop(lane, waiter)
            raise

    def _drop(self, lane: _Lane, waiter: _Waiter) -> None:
        waiters = lane.waiters.get(waiter.tpl.arity)
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)
        if not waiter.future.done():
            waiter.future.cancel()

    def waiting(self, name: str) -> int:
        lane = self._lanes.get(name)
        return 0 if lane is None else sum(len(w) for w in lane.waiters.values())

    # -- capabilities -------------------------------------------------------------------

    @staticmethod
    def require(caps: CapTable, pid: int, ref: object, right: str, lane: str) -> None:
        """Raise CapError unless `pid` holds lane capability `ref` with `right` over `lane`."""
        cap = caps.require(pid, ref, right, "lane")
        patterns = [str(cap.target)] + [
            str(c["lane"]) for c in cap.caveats if c.get("lane") is not None
        ]
        for pattern in patterns:
            if not lane_allows(pattern, lane):
                raise CapError(f"lane capability does not cover lane {lane!r} (only {pattern!r})")


def _tpl(template: Template | Sequence[Any]) -> Template:
    return template if isinstance(template, Template) else Template(template)


_dumps: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _noop(_conn: sqlite3.Connection) -> None:
    return None


def _declare(conn: sqlite3.Connection, lane: str, rows: list[tuple[int, Tup]]) -> None:
    conn.execute("INSERT OR IGNORE INTO tuple_lanes (lane) VALUES (?)", (lane,))
    conn.executemany(
        "INSERT OR REPLACE INTO tuple_rows (lane, id, data) VALUES (?, ?, ?)",
        [(lane, tid, _dumps(t)) for tid, t in rows],
    )


def _insert(conn: sqlite3.Connection, lane: str, tid: int, data: str) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO tuple_rows (lane, id, data) VALUES (?, ?, ?)", (lane, tid, data)
    )


def _delete(conn: sqlite3.Connection, lane: str, tid: int) -> None:
    conn.execute("DELETE FROM tuple_rows WHERE lane = ? AND id = ?", (lane, tid))


def _load(conn: sqlite3.Connection) -> tuple[list[str], list[tuple[str, int, str]]]:
    lanes = [row[0] for row in conn.execute("SELECT lane FROM tuple_lanes ORDER BY lane")]
    rows = conn.execute("SELECT lane, id, data FROM tuple_rows ORDER BY id").fetchall()
    return lanes, rows
