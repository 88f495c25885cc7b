"""The tuple space: template matching (property-tested), the index, blocking and timeouts,
cancellation, lane capabilities, and durable lanes across a restart of a real session."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yool.drivers.tuples import TuplesDriver
from yool.kernel import CapError, KernelError
from yool.kernel.store import Store
from yool.policy import RuntimePolicy
from yool.tools import Session
from yool.tuplespace import SpaceError, Template, TemplateError, TupleError, TupleSpace
from yool.tuplespace.templates import key

# -- matching, against an independent reading of the rules --------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.sampled_from([0.5, -1.5, 2.0]),
    st.text("ab/", max_size=3),
)
values = st.one_of(scalars, st.lists(st.integers(0, 2), max_size=2))
tuples = st.lists(values, min_size=1, max_size=3)


def _type_of(v: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "object"}.get(
        type(v), "null"
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return (type(a) in (int, float) and type(b) in (int, float) and a == b) or (
        type(a) is type(b) and a == b
    )


def _fits(field: Any, v: Any) -> bool:
    if field is None:
        return True
    if not isinstance(field, dict):
        return _same(field, v)
    ok = True
    if "type" in field:
        t = _type_of(v)
        ok &= t == field["type"] or (field["type"] == "number" and t in ("int", "float"))
    if "prefix" in field:
        ok &= isinstance(v, str) and v.startswith(field["prefix"])
    num = type(v) in (int, float)
    for k, test in (("gte", "__ge__"), ("lt", "__lt__")):
        if k in field:
            ok &= num and getattr(v, test)(field[k])
    return ok


@st.composite
def field_for(draw: st.DrawFn, v: Any) -> Any:
    kind = draw(st.sampled_from(["any", "eq", "eq_other", "type", "range", "prefix"]))
    if kind == "any":
        return None
    if kind == "eq":
        return v
    if kind == "eq_other":
        return draw(values)
    if kind == "type":
        return {"type": draw(st.sampled_from(["str", "int", "float", "number", "bool", "list"]))}
    if kind == "range":
        lo = draw(st.integers(-5, 5))
        return {"gte": lo, "lt": lo + draw(st.integers(0, 4))}
    return {"prefix": draw(st.text("ab/", max_size=2))}


@st.composite
def space_and_template(draw: st.DrawFn) -> tuple[list[list[Any]], list[Any]]:
    stored = draw(st.lists(tuples, max_size=25))
    shape = draw(tuples)
    template = [draw(field_for(v)) for v in shape]
    return stored, template


@settings(max_examples=300, deadline=None)
@given(space_and_template())
def test_scan_finds_exactly_the_tuples_every_field_fits(case: tuple[list[Any], list[Any]]) -> None:
    stored, template = case
    space = TupleSpace()
    for t in stored:
        space.out_nowait("l", t)
    want = [
        t
        for t in stored
        if len(t) == len(template) and all(_fits(f, v) for f, v in zip(template, t, strict=True))
    ]
    got = space.scan("l", template, limit=1000)
    assert sorted(map(repr, got)) == sorted(repr(tuple(t)) for t in want)
    assert all(Template(template).matches(t) for t in got)


@settings(max_examples=200, deadline=None)
@given(st.lists(tuples, max_size=20), tuples)
def test_in_takes_each_matching_tuple_once_and_leaves_the_others(
    stored: list[list[Any]], shape: list[Any]
) -> None:
    space = TupleSpace()
    for t in [*stored, shape]:
        space.out_nowait("l", t)
    template = list(shape)  # all equality: answered from the index
    taken = []
    while (t := space.inp("l", template)) is not None:
        taken.append(t)
    assert taken and all(Template(template).matches(t) for t in taken)
    left = space.scan("l", [None] * len(shape), 1000)
    assert not any(Template(template).matches(t) for t in left)
    assert space.count("l") + len(taken) == len(stored) + 1


def test_equal_numbers_match_but_bools_are_not_numbers() -> None:
    assert key(1) == key(1.0) and key(True) != key(1) and key([1]) == key([1.0])
    space = TupleSpace()
    space.out_nowait("l", [True])
    space.out_nowait("l", [1.0])
    assert space.scan("l", [1]) == [(1.0,)]
    assert space.scan("l", [{"type": "bool"}]) == [(True,)]
    assert space.scan("l", [{"gte": 0}]) == [(1.0,)]  # a bool is never in a numeric range


def test_bad_templates_and_tuples_are_refused_naming_the_field() -> None:
    with pytest.raises(TemplateError, match=r"template\[1\].*unknown constraint regex"):
        Template(["a", {"regex": "x"}])
    with pytest.raises(TemplateError, match=r"template\[0\]: range bounds mix"):
        Template([{"gte": 1, "lt": "z"}])
    with pytest.raises(TemplateError, match=r"type: 'text' is not one of"):
        Template([{"type": "text"}])
    with pytest.raises(TupleError, match=r"tuple\[0\].*finite"):
        TupleSpace().out_nowait("l", [float("nan")])
    with pytest.raises(TupleError, match="1 to 64 fields"):
        TupleSpace().out_nowait("l", [])
    with pytest.raises(SpaceError, match="not a lane name"):
        TupleSpace().out_nowait("bad lane!", [1])


def test_an_equality_template_looks_only_at_tuples_holding_its_value() -> None:
    space = TupleSpace()
    for i in range(50_000):
        space.out_nowait("jobs", ["job", i % 1000, i])
    space.out_nowait("jobs", ["job", 7, -1])
    lane = space._lanes["jobs"]
    # The smallest equality bucket is tried: 51 tuples hold 7, not the 50,001 holding "job".
    ids = lane.candidates(Template(["job", 7, None]))
    assert ids is not None and len(list(ids)) == 51
    assert lane.candidates(Template(["job", 5000, None])) is None  # no such value: no work
    assert space.inp("jobs", ["job", 7, {"lt": 0}]) == ("job", 7, -1)


# -- blocking, timeouts, cancellation -------------------------------------------------------


def test_in_waits_for_a_matching_out_and_other_tuples_do_not_wake_it(virtual: Any) -> None:
    async def main() -> Any:
        space = TupleSpace()
        waiter = asyncio.ensure_future(space.in_("l", ["done", None]))
        await asyncio.sleep(1)
        space.out_nowait("l", ["other", 1])
        await asyncio.sleep(1)
        assert not waiter.done()
        space.out_nowait("l", ["done", 42])
        got = await waiter
        return got, space.count("l"), space.waiting("l")

    assert virtual(main()) == (("done", 42), 1, 0)  # taken, never stored; "other" remains


def test_one_out_wakes_every_rd_but_only_the_first_in(virtual: Any) -> None:
    async def main() -> Any:
        space = TupleSpace()
        readers = [asyncio.ensure_future(space.rd("l", [None])) for _ in range(3)]
        takers = [asyncio.ensure_future(space.in_("l", [None])) for _ in range(2)]
        await asyncio.sleep(0)
        space.out_nowait("l", ["x"])
        await asyncio.sleep(0)
        got = [r.result() for r in readers]
        first, second = takers
        assert first.done() and not second.done()
        space.out_nowait("l", ["y"])
        return got, first.result(), await second, space.count("l")

    assert virtual(main()) == ([("x",)] * 3, ("x",), ("y",), 0)


def test_a_timed_out_in_returns_none_and_leaves_no_waiter(virtual: Any) -> None:
    async def main() -> Any:
        space = TupleSpace()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        got = await space.in_("l", ["x"], wait_s=2.5)
        waited = loop.time() - t0
        space.out_nowait("l", ["x"])  # nobody is waiting any more: it is stored
        return got, round(waited, 3), space.waiting("l"), space.count("l")

    assert virtual(main()) == (None, 2.5, 0, 1)


def test_a_cancelled_in_leaves_no_waiter_and_no_tuple_is_lost(virtual: Any) -> None:
    async def main() -> Any:
        space = TupleSpace()
        waiter = asyncio.ensure_future(space.in_("l", [None]))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert space.waiting("l") == 0
        # handed a tuple, then cancelled before it could resume: the tuple goes back
        late = asyncio.ensure_future(space.in_("l", [None]))
        await asyncio.sleep(0)
        space.out_nowait("l", ["precious"])
        late.cancel()
        await asyncio.gather(late, return_exceptions=True)
        return late.cancelled(), space.scan("l", [None]), space.waiting("l")

    assert virtual(main()) == (True, [("precious",)], 0)


def test_a_full_lane_refuses_more_tuples(virtual: Any) -> None:
    space = TupleSpace(queue_maxsize=2)
    space.out_nowait("l", [1])
    space.out_nowait("l", [2])
    with pytest.raises(SpaceError, match="full"):
        space.out_nowait("l", [3])


# -- capabilities and the device -------------------------------------------------------------


def run_session(home: Path, body: Any) -> Any:
    async def main() -> Any:
        pol = RuntimePolicy(home=home, heartbeat_s=0.05)
        async with Session.open(pol, workspace=home, environ={}) as session:
            return await body(session)

    return asyncio.run(main())


def test_lane_capabilities_grant_rights_per_lane_and_die_when_revoked(tmp_path: Path) -> None:
    async def body(session: Session) -> None:
        sys = session.sys
        # A read-only capability narrowed to lanes under "jobs/", handed to a child.
        read_only = sys.derive(session.lane_cap, ("read",), caveat={"lane": "jobs/*"})
        writer = sys.derive(session.lane_cap, ("write", "take"))
        dev = sys.derive(session.tuples_device)
        seen: dict[str, Any] = {}
        done = asyncio.Event()
        refused = asyncio.Event()

        async def child(csys: Any) -> None:
            h = await csys.open(dev)
            await csys.write(h, {"op": "out", "lane": "jobs/a", "tuple": ["t", 1]})
            seen["rd"] = await csys.read(h, {"op": "rd", "lane": "jobs/a", "template": [None, 1]})
            for req in (
                {"op": "rd", "lane": "other", "template": [None]},
                {"op": "in", "lane": "jobs/a", "template": [None, None], "cap": read_only},
            ):
                try:
                    await csys.read(h, req)
                except KernelError as e:
                    seen.setdefault("refused", []).append(str(e))
            refused.set()
            await done.wait()
            try:
                await csys.read(h, {"op": "rd", "lane": "jobs/a", "template": [None, 1]})
            except KernelError as e:
                seen["after_revoke"] = str(e)

        c = sys.spawn(child, caps=[read_only, writer, dev])
        await refused.wait()
        session.kernel.caps.revoke(read_only)
        done.set()
        await sys.wait(c.ref)
        assert seen["rd"] == ["t", 1]
        assert "holds no lane capability with 'read' over 'other'" in seen["refused"][0]
        assert "lacks right 'take'" in seen["refused"][1]
        assert "holds no lane capability with 'read'" in seen["after_revoke"]
        assert session.tuples.count("jobs/a") == 1

    run_session(tmp_path / "home", body)


def test_the_driver_requires_the_right_for_each_operation() -> None:
    from yool.kernel.caps import CapTable

    caps = CapTable(lambda: 0.0)
    space = TupleSpace()
    driver = TuplesDriver(space, caps)
    ref = caps.mint(7, "lane", "a*", ("read",))
    driver.authorise(7, "abc", "read")
    with pytest.raises(CapError, match="lacks right 'write'"):
        driver.authorise(7, "abc", "write", ref)
    with pytest.raises(CapError, match="does not cover lane 'b'"):
        driver.authorise(7, "b", "read", ref)
    with pytest.raises(CapError, match="not held by pid 8"):
        driver.authorise(8, "abc", "read", ref)


# -- durability ------------------------------------------------------------------------------


def test_durable_lanes_survive_a_restart_and_plain_ones_do_not(tmp_path: Path) -> None:
    home = tmp_path / "home"

    async def first(session: Session) -> None:
        space = session.tuples
        space.declare("work", durable=True)
        for i in range(5):
            await space.out("work", ["task", i, {"path": f"src/{i}.py"}])
        space.out_nowait("scratch", ["gone"])
        assert await space.in_("work", ["task", 2, None]) == ("task", 2, {"path": "src/2.py"})

    async def second(session: Session) -> Any:
        space = session.tuples
        left = sorted(t[1] for t in space.scan("work", [None, None, None]))
        nxt = await space.out("work", ["task", 9, None])
        return left, space.is_durable("work"), space.count("scratch"), nxt

    run_session(home, first)
    left, durable, scratch, nxt = run_session(home, second)
    assert (left, durable, scratch) == ([0, 1, 3, 4], True, 0)
    assert nxt > 5  # ids are never reused across restarts

    async def third(session: Session) -> Any:
        return session.tuples.count("work")

    assert run_session(home, third) == 5


def test_a_durable_lane_needs_a_store() -> None:
    with pytest.raises(SpaceError, match="need a store"):
        TupleSpace().declare("l", durable=True)


# -- type, range and prefix indexes ----------------------------------------------------------


def _examined_by(space: TupleSpace, op: Any) -> tuple[Any, int]:
    before = space.examined
    got = op()
    return got, space.examined - before


@pytest.mark.parametrize("others", [1_000, 100_000])
def test_type_range_and_prefix_templates_examine_only_their_candidates(others: int) -> None:
    space = TupleSpace()
    for i in range(others):  # none of these can match any template below
        space.out_nowait("l", [i, f"src/{i}", i])
    for t in ([-1, "docs/b", "x"], [-3, "docs/a", "y"], [-2, "docs/c", "z"]):
        space.out_nowait("l", t)
    type_tpl = [None, None, {"type": "str"}]
    range_tpl = [{"gte": -5, "lt": 0}, {"type": "str"}, None]  # the type set is all of them
    prefix_tpl = [None, {"prefix": "docs/"}, None]
    for tpl in (type_tpl, range_tpl, prefix_tpl):
        space.rdp("l", tpl)  # the first use of a position builds its index
        got, n = _examined_by(space, lambda tpl=tpl: space.rdp("l", tpl))
        # the type bucket is in arrival order (stops at its first match); a sorted slice is
        # checked whole for its oldest match: either way only the three candidates
        assert got == (-1, "docs/b", "x") and n == (1 if tpl is type_tpl else 3), (tpl, n)
    # takes come oldest first whichever index answers, and look only at what is left
    taken = []
    for tpl in (range_tpl, prefix_tpl, type_tpl):
        got, n = _examined_by(space, lambda tpl=tpl: space.inp("l", tpl))
        taken.append(got)
        assert n <= 3
    assert taken == [(-1, "docs/b", "x"), (-3, "docs/a", "y"), (-2, "docs/c", "z")]
    for tpl in (type_tpl, range_tpl, prefix_tpl):
        got, n = _examined_by(space, lambda tpl=tpl: space.inp("l", tpl))
        assert got is None and n == 0
    assert space.count("l") == others
    # a range or prefix that holds one of the others still costs only its own candidates
    got, n = _examined_by(space, lambda: space.scan("l", [{"gt": 9, "lte": 11}, None, None]))
    assert got == [(10, "src/10", 10), (11, "src/11", 11)] and n == 2
    got, n = _examined_by(space, lambda: space.scan("l", [None, {"prefix": "src/99"}, None], 1))
    assert got == [(99, "src/99", 99)]
    fit = sum(1 for i in range(others) if str(i).startswith("99"))
    # its own slice only: checked whole when it is small, else oldest first up to the limit
    assert n == (fit if fit <= 64 else 1), (fit, n)


def _oracle_field(f: Any, v: Any) -> bool:
    """An independent reading of one template field (not the space's predicates)."""
    if f is None:
        return True
    if not isinstance(f, dict):
        return _same(f, v)
    if "eq" in f and not _same(f["eq"], v):
        return False
    if "type" in f:
        t = _type_of(v)
        if not (t == f["type"] or (f["type"] == "number" and t in ("int", "float"))):
            return False
    if "prefix" in f and not (isinstance(v, str) and v.startswith(f["prefix"])):
        return False
    bounds = {k: f[k] for k in ("gt", "gte", "lt", "lte") if k in f}
    if bounds:
        want_str = isinstance(next(iter(bounds.values())), str)
        if want_str != isinstance(v, str) or (not want_str and type(v) not in (int, float)):
            return False
        for k, b in bounds.items():
            if not {"gt": v > b, "gte": v >= b, "lt": v < b, "lte": v <= b}[k]:
                return False
    return True


def _oracle(template: list[Any], t: list[Any]) -> bool:
    return len(t) == len(template) and all(
        _oracle_field(f, v) for f, v in zip(template, t, strict=True)
    )


num_bounds = st.one_of(st.integers(-5, 5), st.sampled_from([-1.5, 0.5, 2.0]))
str_bounds = st.text("ab/", max_size=3)


@st.composite
def any_field(draw: st.DrawFn) -> Any:
    kind = draw(
        st.sampled_from(["any", "eq", "type", "range", "srange", "prefix", "mixed", "eqobj"])
    )
    if kind == "any":
        return None
    if kind == "eq":
        return draw(values)
    if kind == "eqobj":
        return {"eq": draw(values)}
    types = st.sampled_from(["str", "int", "float", "number", "bool", "null", "list"])
    if kind == "type":
        return {"type": draw(types)}
    if kind in ("range", "srange"):
        ks = draw(st.lists(st.sampled_from(["gt", "gte", "lt", "lte"]), min_size=1, unique=True))
        b = num_bounds if kind == "range" else str_bounds
        return {k: draw(b) for k in ks}
    if kind == "prefix":
        return {"prefix": draw(st.text("ab/", max_size=2))}
    out: dict[str, Any] = {"type": draw(types)}  # mixed: a type with a range or a prefix
    if draw(st.booleans()):
        out["prefix"] = draw(st.text("ab/", max_size=2))
    else:
        out[draw(st.sampled_from(["gt", "gte", "lt", "lte"]))] = draw(num_bounds)
    return out


templates = st.integers(1, 3).flatmap(lambda n: st.lists(any_field(), min_size=n, max_size=n))
ops = st.lists(
    st.one_of(
        st.tuples(st.just("out"), tuples),
        st.tuples(st.sampled_from(["in", "rd", "scan"]), templates),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(st.lists(tuples, max_size=30), ops)
def test_indexed_answers_equal_a_brute_force_scan_through_outs_and_takes(
    stored: list[list[Any]], steps: list[tuple[str, Any]]
) -> None:
    space = TupleSpace()
    mirror: list[tuple[Any, ...]] = []  # what the lane holds, in arrival order
    for t in stored:
        space.out_nowait("l", t)
        mirror.append(tuple(t))
    for op, arg in steps:
        if op == "out":
            space.out_nowait("l", arg)
            mirror.append(tuple(arg))
            continue
        hits = [i for i, t in enumerate(mirror) if _oracle(arg, list(t))]
        first = repr(mirror[hits[0]]) if hits else "None"  # repr: 1, 1.0 and True differ
        if op == "scan":  # oldest first
            assert list(map(repr, space.scan("l", arg, limit=1000))) == [
                repr(mirror[i]) for i in hits
            ]
        elif op == "rd":
            assert repr(space.rdp("l", arg)) == first
        else:
            assert repr(space.inp("l", arg)) == first  # in takes the oldest match
            if hits:
                del mirror[hits[0]]
        assert space.count("l") == len(mirror)
        pure = [f for f in arg if f is not None]
        if len(pure) == 1 and isinstance(pure[0], dict) and not {"eq", "type"} & pure[0].keys():
            # one range or prefix: its bisected slice is exactly the tuples that fit it
            lane = space._lanes.get("l")
            ids = None if lane is None else lane.candidates(Template(arg))
            fit = sum(_oracle(arg, list(t)) for t in mirror)
            assert (0 if ids is None else len(list(ids))) == fit


def test_a_narrow_range_beats_a_wide_equality_bucket() -> None:
    space = TupleSpace()
    for i in range(100_000):
        space.out_nowait("jobs", ["job", i])
    tpl = ["job", {"gte": 500, "lt": 502}]
    space.rdp("jobs", tpl)  # builds the position's sorted index
    got, n = _examined_by(space, lambda: space.inp("jobs", tpl))
    assert got == ("job", 500) and n == 2  # not the 100,000 tuples holding "job"
    got, n = _examined_by(space, lambda: space.inp("jobs", ["job", 7]))
    assert got == ("job", 7) and n == 1  # a unique value still wins outright


# -- indexes built off the hot path, and wide ranges ---------------------------------------


def test_the_first_range_query_on_a_big_lane_never_stalls_the_loop() -> None:
    """Its index is built in slices that yield: a 1 ms ticker keeps ticking meanwhile.

    The gap between ticks is measured in the loop thread's CPU time, so a box loaded by
    other work (which delays the whole process) cannot fail it; a stall on the loop can.
    """
    n = 400_000

    async def main() -> Any:
        space = TupleSpace()
        for i in range(n):
            space.out_nowait("big", ["job", i, f"p/{i:07d}"])
        loop = asyncio.get_running_loop()
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.thread_time()
            while not stop.is_set():
                await asyncio.sleep(0.001)
                now = time.thread_time()
                gaps.append(now - last)
                last = now

        async def churn() -> int:  # outs and takes while the indexes are being built
            done = 0
            while not stop.is_set():
                space.out_nowait("big", ["job", n + done, f"p/{n + done:07d}"])
                assert space.inp("big", ["job", done, None]) is not None
                done += 1
                await asyncio.sleep(0)
            return done

        tick = asyncio.ensure_future(ticker())
        work = asyncio.ensure_future(churn())
        await asyncio.sleep(0.02)
        t0 = loop.time()
        narrow = await space.rd("big", [None, {"gte": 300_000, "lt": 300_002}, None])
        wide = await space.in_("big", [None, None, {"prefix": "p/01"}])  # 100,000 fit
        took = loop.time() - t0
        stop.set()
        churned = await work
        await tick
        # after the build, with the churn's outs and takes applied, still exact
        left = space.scan("big", [None, {"gte": 0}, None], limit=3)
        return narrow, wide, took, max(gaps), churned, left, space.count("big")

    narrow, wide, took, gap, churned, left, count = asyncio.run(main())
    assert narrow == ("job", 300_000, "p/0300000")
    assert wide == ("job", 100_000, "p/0100000")  # the oldest of them
    assert churned > 100 and count == n - 1
    assert left == [("job", churned + i, f"p/{churned + i:07d}") for i in range(3)]
    assert took > 0.2  # the builds were real work...
    assert gap < 0.05, f"the loop stalled for {gap:.3f} s of CPU"  # ...and never stalled it


build_ops = st.lists(
    st.one_of(
        st.tuples(st.just("out"), tuples),
        st.tuples(st.sampled_from(["in", "rd", "scan", "ain", "ard"]), templates),
        st.tuples(st.just("tick"), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(tuples, max_size=30), build_ops)
def test_indexes_built_while_tuples_come_and_go_answer_like_a_brute_force_scan(
    stored: list[list[Any]], steps: list[tuple[str, Any]]
) -> None:
    """Every index is built in the background, two tuples per slice, while outs, takes and
    queries (answered meanwhile from other sources) interleave with the build's slices."""

    async def main() -> None:
        space = TupleSpace(inline_build=0, build_slice=2)
        mirror: list[tuple[Any, ...]] = []
        for t in stored:
            space.out_nowait("l", t)
            mirror.append(tuple(t))
        queried: list[list[Any]] = []
        for op, arg in steps:
            if op == "tick":
                await asyncio.sleep(0)
                continue
            if op == "out":
                space.out_nowait("l", arg)
                mirror.append(tuple(arg))
                continue
            queried.append(arg)
            hits = [i for i, t in enumerate(mirror) if _oracle(arg, list(t))]
            first = repr(mirror[hits[0]]) if hits else "None"
            if op == "scan":
                got = space.scan("l", arg, limit=1000)
                assert list(map(repr, got)) == [repr(mirror[i]) for i in hits]
            elif op in ("rd", "ard"):
                got1 = space.rdp("l", arg) if op == "rd" else await space.rd("l", arg, 0)
                assert repr(got1) == first
            else:
                got1 = space.inp("l", arg) if op == "in" else await space.in_("l", arg, 0)
                assert repr(got1) == first
                if hits:
                    del mirror[hits[0]]
            assert space.count("l") == len(mirror)
        lane = space._lanes.get("l")
        if lane is None:
            return
        for tpl in queried:  # every index ready (a missing one built now): each answers exactly
            await space.prepare("l", tpl)
            hits = [repr(t) for t in mirror if _oracle(tpl, list(t))]
            assert list(map(repr, space.scan("l", tpl, limit=1000))) == hits
            pure = [f for f in tpl if f is not None]
            if len(pure) == 1 and isinstance(pure[0], dict) and not {"eq", "type"} & pure[0].keys():
                ids = lane.candidates(Template(tpl))
                assert (0 if ids is None else len(list(ids))) == len(hits)

    asyncio.run(main())


def test_a_wide_range_takes_its_oldest_tuple_looking_at_one_candidate() -> None:
    space = TupleSpace()
    n = 100_000
    for i in range(n):  # values shuffled against arrival order
        space.out_nowait("l", [(i * 7919) % n, "x"])
    order = [(i * 7919) % n for i in range(n)]
    tpl = [{"gte": 10, "lt": 90_000}, None]  # 89,990 tuples fit
    space.rdp("l", tpl)  # builds the index (no loop running: at once)
    taken = []
    for _ in range(200):
        got, examined = _examined_by(space, lambda: space.inp("l", tpl))
        assert examined == 1, examined  # the oldest candidate fits: the only one looked at
        taken.append(got[0])
    assert taken == [v for v in order if 10 <= v < 90_000][:200]
    got, examined = _examined_by(space, lambda: space.scan("l", [{"gte": 0}, "x"], limit=5))
    assert [t[0] for t in got] == [v for v in order if v not in set(taken)][:5] and examined == 5


def test_a_durable_take_is_committed_before_the_taker_sees_it(tmp_path: Path) -> None:
    """While another connection holds the database's write lock, a durable `in` waits: it is
    not handed over until its delete is on disk; cancelled meanwhile, the tuple stays."""
    db = tmp_path / "yool.db"

    async def main() -> Any:
        store = Store.open(db)
        space = TupleSpace(store)
        space.declare("w", durable=True)
        await space.out("w", ["job", 1])
        await space.out("w", ["job", 2])
        blocker = sqlite3.connect(db, timeout=10, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the store's writer must wait for this
        taker = asyncio.ensure_future(space.in_("w", ["job", 1]))
        await asyncio.sleep(0.3)
        held_back = not taker.done()
        blocker.execute("ROLLBACK")
        got = await taker
        on_disk = await store.read(lambda c: c.execute("SELECT data FROM tuple_rows").fetchall())
        blocker.execute("BEGIN IMMEDIATE")
        late = asyncio.ensure_future(space.in_("w", ["job", 2]))
        await asyncio.sleep(0.2)
        late.cancel()
        blocker.execute("ROLLBACK")
        await asyncio.gather(late, return_exceptions=True)
        await space.committed()
        left = space.scan("w", [None, None])
        store.close()
        blocker.close()
        return held_back, got, on_disk, late.cancelled(), left

    held_back, got, on_disk, cancelled, left = asyncio.run(main())
    assert held_back and got == ("job", 1)
    assert on_disk == [('["job",2]',)]  # the take was on disk when the taker resumed
    assert cancelled and left == [("job", 2)]  # nobody got it: it is still there

    async def again() -> Any:
        store = Store.open(db)
        try:
            space = TupleSpace(store)
            await space.load()
            return space.scan("w", [None, None])
        finally:
            store.close()

    assert asyncio.run(again()) == [("job", 2)]


@settings(max_examples=400, deadline=None)
@given(
    st.integers(1, 6),
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(-20, 20)),
            st.tuples(st.just("del"), st.integers(0, 10_000)),
            st.tuples(
                st.just("ask"),
                st.tuples(st.integers(-22, 22), st.integers(0, 12), st.booleans(), st.booleans()),
            ),
        ),
        max_size=200,
    ),
)
def test_the_sorted_index_counts_and_yields_a_range_oldest_first_through_splits_and_merges(
    block: int, steps: list[tuple[str, Any]]
) -> None:
    """Tiny blocks, so adds split them and takes merge them: every range's count, value order
    and oldest-first order stay equal to a brute-force reading of the pairs it holds."""
    from yool.tuplespace.space import _SortedIndex

    ix = _SortedIndex(0, "num", block=block)
    ix.ready()
    held: list[tuple[int, int]] = []  # (value, id)
    next_id = 1
    for op, arg in steps:
        if op == "add":
            ix.add(next_id, (arg,))
            held.append((arg, next_id))
            next_id += 1
        elif op == "del":
            if held:
                v, tid = held.pop(arg % len(held))
                ix.remove(tid, (v,))
        else:
            lo, width, lo_incl, hi_incl = arg
            rng = (0, "num", lo, lo_incl, lo + width, hi_incl)
            fit = [
                (v, tid)
                for v, tid in held
                if (v >= lo if lo_incl else v > lo)
                and (v <= lo + width if hi_incl else v < lo + width)
            ]
            sp = ix.span(rng)
            assert ix.count(sp) == len(fit)
            assert list(ix.ids(sp)) == [tid for _, tid in sorted(fit)]
            assert list(ix.oldest(sp)) == sorted(tid for _, tid in fit)
    assert len(ix) == len(held)
    whole = ix.span((0, "num", None, True, None, True))
    assert list(ix.oldest(whole)) == sorted(tid for _, tid in held)
