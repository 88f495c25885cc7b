"""The tuple space: Linda's `out`, `in`, `rd` and `scan` on named lanes, indexed and durable.

Each lane keeps its tuples by arity, in arrival order, and files every field value in an
equality index (`(arity, position) -> value -> tuple ids`). A template is answered from the
smallest bucket among its equality fields, so tuples that hold another value there are never
looked at. A template without one, or whose buckets are wide, is answered from a type index
(`position -> type -> ids`, in arrival order) or a sorted index (`position -> sorted (value,
id)` for numbers and for strings; a range or prefix is two bisects): the planner counts each
candidate set (O(log n)) and takes the narrowest, then checks the rest of the template on
those candidates only. So `in`/`rd` cost does not grow with the tuples that cannot match; only
an all-wildcard template walks its arity. Type and sorted indexes are made for an (arity,
position) the first time a template needs one, then kept up to date by every `out` and take,
so lanes only ever queried by equality pay nothing for them. On a big lane that first build
runs as a task in time-boxed slices (`_Lane.index`), never in one pass on the event loop;
until it is ready, queries are answered exactly from the other sources, and `in_`, `rd` and
`prepare` wait for it without blocking.

`in` takes the oldest matching tuple (ids grow with arrival): bucket, type and arity sources
are walked oldest first and stop at the first match. A sorted index keeps, over its blocks,
each block's count and smallest id in a segment tree, so a wide range's tuples also come
oldest first (O(log n) each) and `in` on a range costs the same however many tuples it holds
(`examined` counts the candidates checked).

`in` and `rd` may block, with a timeout, until a matching tuple is `out`: an `out` first offers
its tuple to the lane's waiters in arrival order (every matching `rd` sees it, the first
matching `in` takes it). A waiter that is cancelled or times out leaves nothing behind, and a
tuple handed to a taker that was cancelled before it resumed goes back into the lane, so no
tuple is ever lost.

A lane declared durable writes every tuple to the store (`tuple_rows`) and removes it when
taken, through the store's writer thread; `load` brings durable lanes back after a restart.
`out` on a durable lane returns once the tuple is committed, and so does `in_`: the take is on
disk before the taker sees the tuple, so after a crash it is never handed out a second time
(a taker cancelled while it commits gives it back). The synchronous `inp`/`inp_many` commit
their takes with the next group commit (a take in the last milliseconds before a crash may
come back); work that must not run twice is claimed instead (`claim_many`: the task moves to
a claims lane in one write, and `settle` drops the claim and puts the result in one write).

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
import time
from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from heapq import heapify, heappop, heappush
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final

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

INLINE_BUILD: Final = 2048  # an index over at most this many tuples is built at once
BUILD_SLICE_S: Final = 0.004  # else in slices of at most this long, yielding to the loop
BUILD_STEP: Final = 64  # tuples put between two looks at the clock
_BLOCK: Final = 512  # a sorted index's blocks hold 512..1024 pairs
_FEW: Final = 64  # a range holding at most this many is checked whole, in value order
_INF: Final = math.inf
_second: Final = itemgetter(1)


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
    __slots__ = (
        "building",
        "by_arity",
        "count",
        "durable",
        "eq",
        "examined",
        "extra",
        "name",
        "space",
        "waiters",
    )

    def __init__(self, space: TupleSpace, name: str, durable: bool) -> None:
        self.space = space
        self.name = name
        self.durable = durable
        self.building: dict[tuple[int, str, int], asyncio.Task[None]] = {}
        self.by_arity: dict[int, OrderedDict[int, Tup]] = {}
        # arity -> one index per position: value key -> tuple ids (the hot path looks an
        # arity up once, then walks its positions in step with the tuple's fields)
        self.eq: dict[int, list[dict[Any, Bucket]]] = {}
        # arity -> the type and sorted indexes made so far, kept up to date by add/remove
        self.extra: dict[int, dict[tuple[str, int], _Index]] = {}
        self.waiters: dict[int, list[_Waiter]] = {}
        self.count = 0
        self.examined = 0  # candidates checked against a template (tests, metrics)

    def add(self, tid: int, t: Tup) -> None:
        arity = len(t)
        rows = self.by_arity.get(arity)
        if rows is None:
            rows = self.rows(arity)
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

    def rows(self, arity: int) -> OrderedDict[int, Tup]:
        rows = self.by_arity.get(arity)
        if rows is None:
            rows = self.by_arity[arity] = OrderedDict()
            self.eq[arity] = [{} for _ in range(arity)]
        return rows

    def index(self, arity: int, kind: str, pos: int) -> _Index | None:
        """The (arity, kind, position) index if it is ready; else None, and it is being built.

        A missing index over at most `inline` tuples is built here and now (cheap, and from
        then on kept up by every add and remove). A bigger one is built by a task on the loop
        in time-boxed slices with a yield between them, so the loop never stalls: the
        snapshot is the arity's ids at the start (their range when dense); while the build runs
        the index takes adds into its `tail` (in arrival order) and applies removes to what
        it holds (a tuple it has not reached yet is skipped when the build finds it gone);
        the snapshot's tuples still present, then the tail, are put in slice by slice (each
        at most `build_slice_s` long), and the index is ready once the tail is empty. Every
        tuple is thus put exactly once.
        With no running loop (plain synchronous use) the build is done at once.
        """
        extra = self.extra.get(arity)
        if extra is None:
            extra = self.extra[arity] = {}
        ix = extra.get((kind, pos))
        if ix is not None:
            return None if ix.tail is not None else ix
        rows = self.rows(arity)
        ix = extra[kind, pos] = _TypeIndex(pos) if kind == "type" else _SortedIndex(pos, kind)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or len(rows) <= self.space.inline_build:
            for tid, t in rows.items():
                ix.put(tid, t)
            ix.ready()
            return ix
        ix.tail = OrderedDict()
        # The snapshot: the arity's ids now. Where they are dense (the usual case) it is just
        # their range, walked with lookups (no copy at all); else one C-level copy of them.
        lo, hi = next(iter(rows)), next(reversed(rows))
        ids: Sequence[int] = range(lo, hi + 1) if hi - lo < 4 * len(rows) else list(rows)
        task = loop.create_task(self._build(arity, (kind, pos), ix, ids))
        self.building[arity, kind, pos] = task
        return None

    async def _build(
        self, arity: int, name: tuple[str, int], ix: _Index, ids: Sequence[int]
    ) -> None:
        step, budget = self.space.build_slice, self.space.build_slice_s
        rows = self.by_arity[arity]
        tail = ix.tail
        assert tail is not None
        clock = time.perf_counter
        done = False
        try:
            at = 0
            while at < len(ids):
                await asyncio.sleep(0)
                end = clock() + budget
                while at < len(ids) and clock() < end:
                    for tid in ids[at : at + step]:
                        t = rows.get(tid)
                        if t is not None:
                            ix.put(tid, t)
                    at += step
            del ids
            while tail:
                await asyncio.sleep(0)
                end = clock() + budget
                while tail and clock() < end:
                    for _ in range(min(step, len(tail))):
                        ix.put(*tail.popitem(last=False))
            ix.ready()  # adds and removes go straight to it from now on
            done = True
        finally:
            self.building.pop((arity, *name), None)
            if not done:  # cancelled (its loop is closing): the next query starts afresh
                self.extra[arity].pop(name, None)

    def pending(self, tpl: Template) -> list[asyncio.Task[None]]:
        """The builds `tpl` waits for (starting any it needs); empty when it can be answered."""
        arity = tpl.arity
        need = [(arity, "type", pos) for pos, _ in tpl.types]
        need += [(arity, kind, pos) for pos, kind, *_ in tpl.ranges]
        out = []
        for _, kind, pos in need:
            if self.index(arity, kind, pos) is None:
                out.append(self.building[arity, kind, pos])
        return out

    def plan(self, tpl: Template) -> tuple[Iterable[int], bool] | None:
        """Candidate ids from the most selective index, and whether they come oldest first.

        The smallest equality bucket, unless a type, range or prefix candidate set is
        narrower by count (ties go to equality, then to a source in arrival order); with none
        of these, the whole arity. An index still being built is passed over (so an answer is
        always exact, if slower until it is ready). A range's ids come in value order when it
        holds at most `_FEW` (all checked, the oldest match wins), else oldest first from the
        index's tree (stopping at the first match), so a wide range costs what a narrow one
        does. None: nothing can match.
        """
        rows = self.by_arity.get(tpl.arity)
        if not rows:
            return None
        choice: tuple[int, Any] = (len(rows), None)
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
            choice = (size, best)
        for pos, name in tpl.types:
            tix = self.index(tpl.arity, "type", pos)
            if tix is None:
                continue
            assert isinstance(tix, _TypeIndex)
            n = tix.count(name)
            if n == 0:
                return None
            if n < choice[0]:
                choice = (n, (tix, name))
        for rng in tpl.ranges:
            six = self.index(tpl.arity, rng[1], rng[0])
            if six is None:
                continue
            assert isinstance(six, _SortedIndex)
            sp = six.span(rng)
            n = six.count(sp)
            if n == 0:
                return None
            if n < choice[0]:
                choice = (n, (six, sp))
        n, source = choice
        if source is None:
            return rows, True
        if isinstance(source, OrderedDict):
            return source, True
        ix, arg = source
        if isinstance(ix, _TypeIndex):
            return ix.ids(arg), True
        if n <= _FEW:
            return ix.ids(arg), False
        return ix.oldest(arg), True

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

    __slots__ = ("by_type", "pos", "tail")

    def __init__(self, pos: int) -> None:
        self.pos = pos
        self.by_type: dict[str, OrderedDict[int, None]] = {}
        self.tail: OrderedDict[int, Tup] | None = None  # see `_Lane.index`: set while building

    def add(self, tid: int, t: Tup) -> None:
        tail = self.tail
        if tail is not None:
            tail[tid] = t  # after the snapshot's ids, so buckets stay in arrival order
            return
        self.put(tid, t)

    def ready(self) -> None:
        self.tail = None

    def put(self, tid: int, t: Tup) -> None:
        name = type_name(t[self.pos])
        bucket = self.by_type.get(name)
        if bucket is None:
            bucket = self.by_type[name] = OrderedDict()
        bucket[tid] = None

    def remove(self, tid: int, t: Tup) -> None:
        tail = self.tail
        if tail is not None and tail.pop(tid, None) is not None:
            return
        name = type_name(t[self.pos])
        bucket = self.by_type.get(name)
        if bucket is None or tid not in bucket:
            return  # not indexed yet (a build has not reached it): nothing to undo
        del bucket[tid]
        if not bucket:
            del self.by_type[name]

    def count(self, constraint: str) -> int:
        return sum(len(self.by_type.get(n, ())) for n in TYPE_COVERS[constraint])

    def ids(self, constraint: str) -> Iterable[int]:
        buckets = [b for n in TYPE_COVERS[constraint] if (b := self.by_type.get(n))]
        return buckets[0] if len(buckets) == 1 else heapq.merge(*buckets)


class _SortedIndex:
    """One position's numbers (bools excluded) or strings, as sorted (value, id) pairs.

    The pairs sit in blocks of `_BLOCK`..`2 * _BLOCK` (a block list, like `sortedcontainers`'
    `SortedList`, which cannot carry the per-block smallest id this needs; bisects find a
    value in O(log n)); over the blocks a segment tree keeps each subtree's
    pair count and smallest id. So a range is counted in O(log n) (bisect its two ends, sum the
    whole blocks between), and its tuples come out oldest first lazily (`oldest`): a heap over
    the tree's nodes by smallest id yields the next oldest id in O(log n) plus one block sort,
    however many tuples the range holds. `in` on a wide range therefore looks at its oldest
    candidate first and stops at the first that fits.
    """

    __slots__ = (
        "block",
        "blocks",
        "cnt",
        "dirty",
        "leaves",
        "maxes",
        "mins",
        "mn",
        "pos",
        "stale",
        "tail",
        "types",
    )

    def __init__(self, pos: int, kind: str, block: int = _BLOCK) -> None:
        self.pos = pos
        self.types: frozenset[type] = frozenset((int, float) if kind == "num" else (str,))
        self.block = block  # blocks hold block..2 * block pairs (fewer after removals)
        self.blocks: list[list[tuple[Any, int]]] = []
        self.maxes: list[tuple[Any, int]] = []  # each block's last pair: bisect these first
        self.mins: list[int] = []  # each block's smallest id
        self.leaves = 1  # the segment tree's leaf count (a power of two >= len(blocks))
        self.cnt: list[int] = [0, 0]
        self.mn: list[float] = [_INF, _INF]
        self.tail: OrderedDict[int, Tup] | None = None  # see `_Lane.index`: set while building
        self.dirty = True  # the tree must be remade before it is used (see `_tree`)
        self.stale: set[int] = set()  # blocks whose leaves in the tree are out of date

    # -- upkeep --

    def ready(self) -> None:
        self.tail = None

    def add(self, tid: int, t: Tup) -> None:
        tail = self.tail
        if tail is not None:
            tail[tid] = t
            return
        v = t[self.pos]
        if type(v) in self.types:
            self._add((v, tid))

    def remove(self, tid: int, t: Tup) -> None:
        tail = self.tail
        if tail is not None and tail.pop(tid, None) is not None:
            return
        v = t[self.pos]
        if type(v) in self.types:
            self._discard((v, tid))

    def put(self, tid: int, t: Tup) -> None:
        """Index a tuple now, even while building (the builder's own adds)."""
        v = t[self.pos]
        if type(v) in self.types:
            self._add((v, tid))

    # The tree is brought up to date lazily, by the queries that use it (`_tree`): an add or
    # a discard only notes its block in `stale` (a split or a merge, which moves blocks,
    # sets `dirty`), so outs and takes answered within a block or two never pay for it.

    def _add(self, pair: tuple[Any, int]) -> None:
        maxes = self.maxes
        if not maxes:
            self.blocks.append([pair])
            maxes.append(pair)
            self.mins.append(pair[1])
            self.dirty = True
            return
        b = bisect_left(maxes, pair)
        if b == len(maxes):
            b -= 1
        block = self.blocks[b]
        insort(block, pair)
        maxes[b] = block[-1]
        if pair[1] < self.mins[b]:
            self.mins[b] = pair[1]
        if len(block) > 2 * self.block:
            self._split(b)
        elif not self.dirty:
            self.stale.add(b)

    def _discard(self, pair: tuple[Any, int]) -> None:
        maxes = self.maxes
        b = bisect_left(maxes, pair)
        if b == len(maxes):
            return
        block = self.blocks[b]
        i = bisect_left(block, pair)
        if i == len(block) or block[i] != pair:
            return  # not indexed yet (a build has not reached it): nothing to undo
        del block[i]
        if len(block) < max(1, self.block // 4):
            if len(maxes) > 1:
                self._merge(b)
            elif not block:
                self.blocks, self.maxes, self.mins = [], [], []
                self.dirty = True
            return
        maxes[b] = block[-1]
        # The block's smallest id may have gone: `mins` and the tree keep a lower bound, made
        # exact again when a query opens the block (`oldest`), so a take never rescans one.
        if not self.dirty:
            self.stale.add(b)

    def _split(self, b: int) -> None:
        block = self.blocks[b]
        half = block[self.block :]
        del block[self.block :]
        self.blocks.insert(b + 1, half)
        self.maxes[b] = block[-1]
        self.maxes.insert(b + 1, half[-1])
        self.mins[b] = min(map(_second, block))
        self.mins.insert(b + 1, min(map(_second, half)))
        self.dirty = True

    def _merge(self, b: int) -> None:
        """Fold a block that has shrunk (or emptied) into a neighbour, splitting if too big."""
        blocks = self.blocks
        a = b - 1 if b == len(blocks) - 1 else b  # merge blocks a and a + 1
        joined = blocks[a] + blocks[a + 1]
        del blocks[a + 1], self.maxes[a + 1], self.mins[a + 1]
        blocks[a] = joined
        self.maxes[a] = joined[-1]
        self.mins[a] = min(map(_second, joined))
        if len(joined) > 2 * self.block:
            self._split(a)
        self.dirty = True

    def _tree(self) -> None:
        """Bring the tree up to date: remade after a split or merge, else its stale leaves."""
        if self.dirty:
            self._rebuild()
            return
        stale = self.stale
        if not stale:
            return
        leaves, cnt, mn, blocks, mins = self.leaves, self.cnt, self.mn, self.blocks, self.mins
        for b in stale:
            i = leaves + b
            cnt[i] = len(blocks[b])
            mn[i] = mins[b]
            i >>= 1
            while i:
                cnt[i] = cnt[2 * i] + cnt[2 * i + 1]
                left, right = mn[2 * i], mn[2 * i + 1]
                mn[i] = left if left < right else right
                i >>= 1
        stale.clear()

    def _rebuild(self) -> None:
        n = len(self.blocks)
        leaves = 1
        while leaves < n:
            leaves *= 2
        cnt = [0] * (2 * leaves)
        mn: list[float] = [_INF] * (2 * leaves)
        cnt[leaves : leaves + n] = [len(b) for b in self.blocks]
        mn[leaves : leaves + n] = self.mins
        for i in range(leaves - 1, 0, -1):
            cnt[i] = cnt[2 * i] + cnt[2 * i + 1]
            left, right = mn[2 * i], mn[2 * i + 1]
            mn[i] = left if left < right else right
        self.leaves, self.cnt, self.mn = leaves, cnt, mn
        self.dirty = False
        self.stale.clear()

    # -- queries --

    def __len__(self) -> int:
        return sum(map(len, self.blocks))

    def _at(self, k: tuple[Any, ...]) -> tuple[int, int]:
        """(block, offset) of the first pair >= k; (len(blocks), 0) past the end."""
        b = bisect_left(self.maxes, k)
        if b == len(self.maxes):
            return b, 0
        return b, bisect_left(self.blocks[b], k)

    def span(self, rng: Range) -> tuple[int, int, int, int]:
        """The pairs whose values lie in the range, as (block, offset) of each end (O(log n))."""
        _, _, lo, lo_incl, hi, hi_incl = rng
        bl, i = (0, 0) if lo is None else self._at((lo,) if lo_incl else (lo, _INF))
        br, j = (len(self.blocks), 0) if hi is None else self._at((hi, _INF) if hi_incl else (hi,))
        return bl, i, br, j

    def count(self, sp: tuple[int, int, int, int]) -> int:
        bl, i, br, j = sp
        if (bl, i) >= (br, j):
            return 0
        if bl == br:
            return j - i
        if br == bl + 1:
            return len(self.blocks[bl]) - i + j
        self._tree()
        return len(self.blocks[bl]) - i + self._sum(bl + 1, br) + j

    def _sum(self, a: int, b: int) -> int:
        """Pairs in blocks a..b-1 (whole blocks), from the tree."""
        cnt, total = self.cnt, 0
        a += self.leaves
        b += self.leaves
        while a < b:
            if a & 1:
                total += cnt[a]
                a += 1
            if b & 1:
                b -= 1
                total += cnt[b]
            a >>= 1
            b >>= 1
        return total

    def ids(self, sp: tuple[int, int, int, int]) -> Iterator[int]:
        """The range's ids in value order."""
        bl, i, br, j = sp
        blocks = self.blocks
        for b in range(bl, min(br + 1, len(blocks))):
            block = blocks[b]
            for pair in block[i if b == bl else 0 : j if b == br else len(block)]:
                yield pair[1]

    def oldest(self, sp: tuple[int, int, int, int]) -> Iterator[int]:
        """The range's ids, smallest (oldest) first, each found in O(log n) (see the class).

        A best-first walk of the tree: a node's key is a lower bound of its smallest id, so an
        id is yielded only when nothing unopened can hold a smaller one. Opening a block makes
        its bound exact again (a take may have left it low).
        """
        bl, i, br, j = sp
        if bl >= len(self.blocks):
            return
        if br > bl + 1:
            self._tree()
        blocks, leaves, cnt, mn, mins = self.blocks, self.leaves, self.cnt, self.mn, self.mins
        heap: list[tuple[float, int, int, list[int] | None]] = []
        seq = 0

        def push_ids(pairs: list[tuple[Any, int]]) -> int:
            nonlocal seq
            ids: list[int] = list(map(_second, pairs))
            if not ids:
                return 0
            heapify(ids)
            seq += 1
            heappush(heap, (ids[0], seq, 0, ids))
            return ids[0]

        if bl == br:
            push_ids(blocks[bl][i:j])
        else:
            push_ids(blocks[bl][i:])
            if br < len(blocks) and j:
                push_ids(blocks[br][:j])
            a, b = bl + 1 + leaves, br + leaves  # the tree nodes covering the whole blocks
            while a < b:
                if a & 1:
                    if cnt[a]:
                        seq += 1
                        heappush(heap, (mn[a], seq, a, None))
                    a += 1
                if b & 1:
                    b -= 1
                    if cnt[b]:
                        seq += 1
                        heappush(heap, (mn[b], seq, b, None))
                a >>= 1
                b >>= 1
        while heap:
            _, _, node, ids = heappop(heap)
            if ids is not None:
                yield heappop(ids)
                if ids:
                    seq += 1
                    heappush(heap, (ids[0], seq, 0, ids))
            elif node >= leaves:
                low = push_ids(blocks[node - leaves])
                if low != mins[node - leaves]:
                    self._tighten(node - leaves, low)
            else:
                for child in (2 * node, 2 * node + 1):
                    if cnt[child]:
                        seq += 1
                        heappush(heap, (mn[child], seq, child, None))

    def _tighten(self, b: int, low: int) -> None:
        """Block b's exact smallest id is `low`: raise the bounds on its path to the root."""
        self.mins[b] = low
        mn = self.mn
        i = self.leaves + b
        mn[i] = low
        i >>= 1
        while i:
            left, right = mn[2 * i], mn[2 * i + 1]
            mn[i] = left if left < right else right
            i >>= 1


_Index = _TypeIndex | _SortedIndex


class TupleSpace:
    """Lanes of tuples in memory, durable ones mirrored in the store (see the module doc)."""

    def __init__(
        self,
        store: Store | None = None,
        *,
        queue_maxsize: int | None = None,
        inline_build: int = INLINE_BUILD,
        build_slice: int = BUILD_STEP,
        build_slice_s: float = BUILD_SLICE_S,
    ) -> None:
        self._store = store
        self.inline_build = inline_build
        self.build_slice = build_slice
        self.build_slice_s = build_slice_s
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
            lane = self._lanes[name] = _Lane(self, name, False)
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

    async def committed(self) -> None:
        """Return once every durable change made so far is committed (a no-op without one)."""
        if self._store is not None:
            await self._store.write(_noop)

    # -- claims: a task on exactly one of its lane and its claims lane --------------------

    def claim_many(
        self, name: str, template: Template | Sequence[Any], limit: int, claims: str
    ) -> list[Tup]:
        """Take up to `limit` matching tuples and keep each on lane `claims` as `(*t, 1)`.

        The `1` counts the task's starts. On a durable lane each move (delete from `name`,
        insert into `claims`) is one write, so across a crash a task is on one lane or the
        other, never both and never neither; `await committed()` before starting the work
        makes sure a claim is on disk before anything is done for it. Claims are not offered
        to waiters: only `settle`, `reclaim` and `unclaim` move them on.
        """
        src = self._lanes.get(name)
        if src is None:
            return []
        tpl = _tpl(template)
        if src.durable:
            self.declare(claims, durable=True)
        dst = self._lane(claims)
        got: list[Tup] = []
        dels: list[tuple[str, int]] = []
        ins: list[tuple[str, int, str]] = []
        while len(got) < limit:
            hit = src.find(tpl)
            if hit is None:
                break
            tid, t = hit
            src.remove(tid, t)
            self.takes += 1
            c = (*t, 1)
            cid = self._next
            self._next += 1
            dst.add(cid, c)
            got.append(t)
            dels.append((name, tid))
            ins.append((claims, cid, _dumps(c)))
        if ins and dst.durable and self._store is not None:
            self._store.write_later(partial(_apply, dels=dels, ins=ins))
        return got

    def _unkeep(self, claims: str, claim: Tup) -> tuple[_Lane, int] | None:
        """Remove one claim equal to `claim` from memory; its lane and id (None: no such)."""
        lane = self._lanes.get(claims)
        hit = None if lane is None else lane.find(Template(_exact(claim)))
        if lane is None or hit is None:
            return None
        lane.remove(*hit)
        return lane, hit[0]

    def settle(
        self, claims: str, claim: Tup, into: str | None = None, put: Sequence[Any] | None = None
    ) -> bool:
        """Drop a claim and (optionally) put its result on lane `into`, in one write.

        False if there was no such claim (it was settled already): then nothing is put.
        """
        got = self._unkeep(claims, claim)
        if got is None:
            return False
        lane, cid = got
        dels, ins = [(claims, cid)], []
        if into is not None and put is not None:
            dst = self._lane(into)
            t = check_tuple(put)
            tid = self._next
            self._next += 1
            self.outs += 1
            if not self._offer(dst, t):
                dst.add(tid, t)
                if dst.durable:
                    ins.append((into, tid, _dumps(t)))
        if lane.durable and self._store is not None:
            self._store.write_later(partial(_apply, dels=dels, ins=ins))
        return True

    def reclaim(self, claims: str, claim: Tup) -> Tup | None:
        """A claim started once more: `(*t, starts)` becomes `(*t, starts + 1)`, in one write."""
        got = self._unkeep(claims, claim)
        if got is None:
            return None
        lane, cid = got
        again = (*claim[:-1], int(claim[-1]) + 1)
        nid = self._next
        self._next += 1
        lane.add(nid, again)
        if lane.durable and self._store is not None:
            ins = [(claims, nid, _dumps(again))]
            self._store.write_later(partial(_apply, dels=[(claims, cid)], ins=ins))
        return again

    def unclaim(self, claims: str, claim: Tup, back: str) -> bool:
        """Put a claimed task that was never started back on lane `back`, in one write."""
        got = self._unkeep(claims, claim)
        if got is None:
            return False
        lane, cid = got
        t = claim[:-1]
        dst = self._lane(back)
        tid = self._next
        self._next += 1
        ins = []
        if not self._offer(dst, t):
            dst.add(tid, t)
            if dst.durable:
                ins.append((back, tid, _dumps(t)))
        if lane.durable and self._store is not None:
            self._store.write_later(partial(_apply, dels=[(claims, cid)], ins=ins))
        return True

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

    async def prepare(self, name: str, template: Template | Sequence[Any]) -> Template:
        """Wait (never blocking the loop) until the indexes `template` needs are ready.

        `in_` and `rd` do this themselves; code on the loop calls it before `scan`, `inp`,
        `rdp` or `inp_many` with a type, range or prefix template, which would otherwise
        answer from a slower source while an index is still being built.
        """
        tpl = _tpl(template)
        if tpl.types or tpl.ranges:
            lane = self._lane(name)
            while builds := lane.pending(tpl):
                await asyncio.gather(*map(asyncio.shield, builds))
        return tpl

    async def _wait(self, name: str, tpl: Template, take: bool, wait_s: float | None) -> Tup | None:
        lane = self._lane(name)
        if tpl.types or tpl.ranges:
            await self.prepare(name, tpl)
        hit = lane.find(tpl)
        if hit is not None:
            if not take:
                return hit[1]
            self._taken(lane, *hit)
            if lane.durable and self._store is not None:
                # Committed before the taker sees it: after a crash it is not handed out again.
                try:
                    await self._store.write(_noop)
                except BaseException:
                    self.takes -= 1
                    self.out_nowait(name, hit[1])  # nobody got it: it goes back (new id)
                    raise
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


def _exact(t: Tup) -> list[Any]:
    """A template matching exactly the tuples equal to `t` (objects and nulls by `eq`)."""
    return [{"eq": v} if v is None or type(v) is dict else v for v in t]


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


def _apply(
    conn: sqlite3.Connection, dels: list[tuple[str, int]], ins: list[tuple[str, int, str]]
) -> None:
    """Deletes and inserts in one transaction: a move between lanes is all or nothing."""
    conn.executemany("DELETE FROM tuple_rows WHERE lane = ? AND id = ?", dels)
    conn.executemany("INSERT OR REPLACE INTO tuple_rows (lane, id, data) VALUES (?, ?, ?)", ins)


def _load(conn: sqlite3.Connection) -> tuple[list[str], list[tuple[str, int, str]]]:
    lanes = [row[0] for row in conn.execute("SELECT lane FROM tuple_lanes ORDER BY lane")]
    rows = conn.execute("SELECT lane, id, data FROM tuple_rows ORDER BY id").fetchall()
    return lanes, rows
