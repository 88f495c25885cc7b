"""Supervisors: strategies, restart types, intensity, flap backoff, shutdown and bounded state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from yool.kernel import SHUTDOWN, Budget, CapError, ExitReason, Kernel, Sys, killed
from yool.userland import (
    ChildSpec,
    SpecError,
    SupervisorSpec,
    start_supervisor,
    supervise,
    which_children,
)

Plan = Callable[[int], tuple[str, float]]  # incarnation -> (what to do, after how long)
Log = list[tuple[float, str, str, int]]  # (time, "start" | "stop", child id, pid)


async def scripted(sys: Sys, cid: str, log: Log, plan: Plan) -> None:
    """A child that does what `plan` says for its n-th incarnation, and logs it."""
    n = sum(1 for e in log if e[1] == "start" and e[2] == cid)
    log.append((sys.now(), "start", cid, sys.pid))
    sys.on_cleanup(lambda: log.append((sys.now(), "stop", cid, sys.pid)))
    what, after = plan(n)
    if what == "trap":
        sys.trap_term()
    if what in ("forever", "trap"):
        while True:
            await sys.recv()  # a Term, if trapped, is ignored
    await sys.sleep(after)
    if what == "crash":
        raise RuntimeError(f"{cid} crashed")
    if what == "shutdown":
        sys.exit(SHUTDOWN)


def forever(_n: int) -> tuple[str, float]:
    return ("forever", 0.0)


def child(cid: str, log: Log, plan: Plan = forever, **kw: Any) -> ChildSpec:
    return ChildSpec(cid, scripted, (cid, log, plan), **kw)


def crash_first(after: float) -> Plan:
    return lambda n: ("crash", after) if n == 0 else ("forever", 0.0)


def events(log: Log) -> list[tuple[str, str]]:
    return [(what, cid) for _t, what, cid, _pid in log]


async def settle(k: Kernel, seconds: float) -> None:
    await asyncio.sleep(seconds)


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("one_for_one", [("stop", "b"), ("start", "b")]),
        (
            "one_for_all",
            [
                *[("stop", "b"), ("stop", "c"), ("stop", "a")],
                *[("start", "a"), ("start", "b"), ("start", "c")],
            ],
        ),
        ("rest_for_one", [("stop", "b"), ("stop", "c"), ("start", "b"), ("start", "c")]),
    ],
)
def test_each_strategy_restarts_the_right_children_in_order(
    virtual: Any, strategy: str, expected: list[tuple[str, str]]
) -> None:
    async def main() -> None:
        log: Log = []
        async with Kernel() as k:
            spec = SupervisorSpec(
                [child("a", log), child("b", log, crash_first(1.0)), child("c", log)],
                strategy=strategy,  # type: ignore[arg-type]
            )
            start_supervisor(k.init, spec)
            await settle(k, 2.0)
            assert events(log)[:3] == [("start", "a"), ("start", "b"), ("start", "c")]
            assert events(log)[3:] == expected
            assert all(t == 1.0 for t, *_ in log[3:])  # no backoff for a first crash
            crashed = log[1][3]
            assert await k.reason_of(crashed) == ExitReason("fault", "RuntimeError: b crashed")
            for _t, what, _cid, pid in log[4:]:
                if what == "stop":
                    assert await k.reason_of(pid) == SHUTDOWN  # stopped by the supervisor
            live = {p.name for p in k.ps()}
            assert {"a", "b", "c", "supervisor"} <= live

    virtual(main())


def test_restart_types_permanent_transient_temporary(virtual: Any) -> None:
    async def main() -> None:
        log: Log = []

        def once(what: str) -> Plan:
            return lambda n: (what, 1.0) if n == 0 else ("forever", 0.0)

        async with Kernel() as k:
            spec = SupervisorSpec(
                [
                    child("perm", log, once("exit")),
                    child("trans_ok", log, once("exit"), restart="transient"),
                    child("trans_shut", log, once("shutdown"), restart="transient"),
                    child("trans_bad", log, once("crash"), restart="transient"),
                    child("temp", log, once("crash"), restart="temporary"),
                ]
            )
            sup = start_supervisor(k.init, spec)
            await settle(k, 2.0)
            starts = {cid: 0 for cid, *_ in ((c.id,) for c in spec.children)}
            for _t, what, cid, _pid in log:
                starts[cid] += what == "start"
            assert starts == {
                "perm": 2,  # restarted even after a normal exit
                "trans_ok": 1,  # normal exit: done
                "trans_shut": 1,  # shutdown is not abnormal either
                "trans_bad": 2,  # restarted after a fault
                "temp": 1,  # never restarted
            }
            info = {c.id: c for c in await which_children(k.init, sup.ref)}
            assert [c.id for c in spec.children] == list(info)
            assert info["perm"].restarts == 1 and info["perm"].pid is not None
            assert info["trans_ok"].pid is None and info["trans_ok"].restarts == 0
            assert info["temp"].pid is None and info["temp"].restart == "temporary"
            assert info["trans_bad"].restarts == 1

    virtual(main())


def test_intensity_exceeded_stops_children_and_faults_naming_the_child(virtual: Any) -> None:
    async def main() -> None:
        log: Log = []
        async with Kernel() as k:
            spec = SupervisorSpec(
                [child("steady", log), child("bad", log, lambda n: ("crash", 0.5))],
                intensity=3,
                period_s=10.0,
                backoff_s=0.0,
                backoff_max_s=0.0,
            )
            sup = start_supervisor(k.init, spec)
            async with asyncio.timeout(60):
                reason = await k.init.wait(sup.ref)
            assert reason.kind == "fault"
            assert reason.detail is not None
            assert reason.detail.startswith("restart intensity exceeded: child 'bad'")
            assert "more than 3 restarts in 10s" in reason.detail
            assert events(log).count(("start", "bad")) == 4  # the first start and 3 restarts
            steady = log[0][3]
            assert await k.reason_of(steady) == SHUTDOWN
            assert [p.pid for p in k.ps()] == [1]  # nothing left behind

    virtual(main())


def test_flapping_child_backs_off_exponentially_and_resets_after_a_good_run(
    virtual: Any,
) -> None:
    def plan(n: int) -> tuple[str, float]:
        if n == 6:
            return ("crash", 4.0)  # a full period_s of good running
        if n >= 9:
            return ("forever", 0.0)
        return ("crash", 0.0)

    async def main() -> None:
        log: Log = []
        async with Kernel() as k:
            spec = SupervisorSpec(
                [child("flappy", log, plan)],
                intensity=100,
                period_s=4.0,
                backoff_s=0.125,
                backoff_max_s=0.5,
            )
            start_supervisor(k.init, spec)
            await settle(k, 10.0)
            starts = [t for t, what, _cid, _pid in log if what == "start"]
            assert starts == [0.0, 0.0, 0.125, 0.375, 0.875, 1.375, 1.875, 5.875, 6.0, 6.25]

    virtual(main())


def test_supervisor_answers_which_children_during_a_backoff(virtual: Any) -> None:
    async def main() -> None:
        log: Log = []
        async with Kernel() as k:
            spec = SupervisorSpec(
                [child("f", log, lambda n: ("crash", 0.0) if n < 2 else ("forever", 0.0))],
                backoff_s=8.0,
                backoff_max_s=8.0,
                period_s=100.0,
                intensity=10,
            )
            sup = start_supervisor(k.init, spec)
            await settle(k, 1.0)  # crashed twice; its next start is due at 8.0
            (info,) = await which_children(k.init, sup.ref)
            assert (info.pid, info.restarts) == (None, 1)
            assert k.init.now() == 1.0
            await settle(k, 8.0)
            (info,) = await which_children(k.init, sup.ref)
            assert info.pid is not None and info.restarts == 2

    virtual(main())


def test_restarts_forever_under_a_children_quota_with_bounded_caps(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            caps_at_start: list[int] = []
            done = asyncio.Event()

            async def short_lived(sys: Sys) -> None:
                caps_at_start.append(len(k.caps))
                assert sys.cap("spawn") is not None  # granted afresh each time
                if len(caps_at_start) > 1000:
                    done.set()
                await sys.sleep(1.0)
                raise RuntimeError("done for now")

            log: Log = []
            spec = SupervisorSpec(
                [
                    child("steady", log),
                    ChildSpec("short", short_lived, grants=("spawn",)),
                ],
                intensity=1,
                period_s=1.0,
            )
            sup = start_supervisor(k.init, spec, budget=Budget(children=2))
            async with asyncio.timeout(5000):
                await done.wait()
            assert k.procs[sup.pid].account.children == 2
            assert caps_at_start[1000] == caps_at_start[10]  # 1,000 restarts, no growth
            (_steady, short) = await which_children(k.init, sup.ref)
            assert short.restarts == 1000
            assert k.init.now() == 1000.0

    virtual(main())


def test_term_is_graceful_and_a_child_that_ignores_it_is_killed_after_shutdown_s(
    virtual: Any,
) -> None:
    async def main() -> None:
        log: Log = []
        async with Kernel() as k:
            spec = SupervisorSpec(
                [
                    child("polite", log),
                    child("stubborn", log, lambda n: ("trap", 0.0), shutdown_s=2.0),
                ]
            )
            sup = start_supervisor(k.init, spec)
            await settle(k, 1.0)
            k.init.term(sup.ref)
            async with asyncio.timeout(60):
                assert await k.init.wait(sup.ref) == SHUTDOWN
            assert k.init.now() == 3.0
            stops = [(t, cid) for t, what, cid, _pid in log if what == "stop"]
            assert stops == [(3.0, "stubborn"), (3.0, "polite")]  # reverse start order
            pids = {cid: pid for _t, what, cid, pid in log if what == "start"}
            assert await k.reason_of(pids["stubborn"]) == killed(sup.pid)
            assert await k.reason_of(pids["polite"]) == SHUTDOWN

    virtual(main())


def test_children_die_with_a_killed_supervisor(virtual: Any) -> None:
    async def main() -> None:
        log: Log = []
        async with Kernel() as k:
            sup = start_supervisor(k.init, SupervisorSpec([child("a", log), child("b", log)]))
            await settle(k, 1.0)
            k.init.kill(sup.ref)
            await settle(k, 1.0)
            for _t, what, _cid, pid in log:
                if what == "start":
                    assert await k.reason_of(pid) == killed(sup.pid)
            assert [p.pid for p in k.ps()] == [1]

    virtual(main())


def test_grants_give_each_child_its_own_derived_capability(virtual: Any) -> None:
    async def spawner(sys: Sys, out: list[str]) -> None:
        try:
            sys.spawn(scripted, "grandchild", [], forever)
            out.append("spawned")
        except CapError as e:
            out.append(f"refused: {e}")
        await sys.recv()

    async def main() -> None:
        async with Kernel() as k:
            with_grant: list[str] = []
            without: list[str] = []
            spec = SupervisorSpec(
                [
                    ChildSpec("granted", spawner, (with_grant,), grants=("spawn",)),
                    ChildSpec("plain", spawner, (without,)),
                ]
            )
            start_supervisor(k.init, spec)
            await settle(k, 1.0)
            assert with_grant == ["spawned"]
            assert without[0].startswith("refused: pid")

    virtual(main())


def test_a_child_that_cannot_start_fails_the_supervisor_with_a_clear_reason(
    virtual: Any,
) -> None:
    async def main() -> None:
        log: Log = []
        async with Kernel() as k:
            spec = SupervisorSpec([child("ok", log), ChildSpec("ghost", "no-such-image")])
            sup = start_supervisor(k.init, spec)
            async with asyncio.timeout(60):
                reason = await k.init.wait(sup.ref)
            assert reason.kind == "fault"
            assert reason.detail is not None
            assert "child 'ghost' failed to start: no image named 'no-such-image'" in reason.detail
            exits = {e.data["name"]: e.data["reason"] for e in k.trace(50) if e.kind == "exit"}
            assert exits["ok"] == {"kind": "shutdown"}  # the started sibling was stopped

    virtual(main())


def test_a_process_can_become_a_supervisor(virtual: Any) -> None:
    async def boss(sys: Sys, spec: SupervisorSpec, log: Log) -> None:
        log.append((sys.now(), "start", "boss", sys.pid))
        await supervise(sys, spec)

    async def main() -> None:
        log: Log = []
        async with Kernel() as k:
            spec = SupervisorSpec([child("a", log)])
            spawn = k.init.derive(k.init.cap("spawn") or "")
            sup = k.init.spawn(boss, spec, log, caps=(spawn,))
            await settle(k, 1.0)
            assert events(log) == [("start", "boss"), ("start", "a")]
            assert k.init.term(sup.ref)
            async with asyncio.timeout(60):
                assert await k.init.wait(sup.ref) == SHUTDOWN
            assert await k.reason_of(log[1][3]) == SHUTDOWN

    virtual(main())


def test_missing_capability_to_grant_is_refused_up_front(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            spec = SupervisorSpec([ChildSpec("w", scripted, grants=("device:llm",))])
            caps_before = len(k.caps)
            with pytest.raises(CapError, match=r"holds no 'device:llm' capability to hand to w"):
                start_supervisor(k.init, spec)
            assert len(k.caps) == caps_before  # nothing half-granted

    virtual(main())


async def _noop(sys: Sys) -> None:
    return None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SupervisorSpec([ChildSpec("a", _noop), ChildSpec("a", _noop)]), "duplicate"),
        (lambda: SupervisorSpec([], strategy="one_for_some"), "unknown strategy"),  # type: ignore[arg-type]
        (lambda: SupervisorSpec([], intensity=-1), "intensity must be >= 0"),
        (lambda: SupervisorSpec([], intensity=2.5), "intensity must be an integer"),  # type: ignore[arg-type]
        (lambda: SupervisorSpec([], period_s=0), "period_s must be > 0"),
        (lambda: SupervisorSpec([], backoff_s=-0.1), "backoff_s must be a finite number >= 0"),
        (lambda: SupervisorSpec([], backoff_s=2, backoff_max_s=1), "backoff_max_s"),
        (lambda: SupervisorSpec(["a"]), "must be ChildSpec"),  # type: ignore[list-item]
        (lambda: ChildSpec("", _noop), "non-empty string"),
        (lambda: ChildSpec("a", _noop, restart="sometimes"), "unknown restart"),  # type: ignore[arg-type]
        (lambda: ChildSpec("a", _noop, shutdown_s=-1), "shutdown_s"),
        (lambda: ChildSpec("a", _noop, args=[1]), "args must be a tuple"),  # type: ignore[arg-type]
        (lambda: ChildSpec("a", _noop, grants="spawn"), "grants must be a tuple"),  # type: ignore[arg-type]
        (lambda: ChildSpec("a", 42), "image must be"),  # type: ignore[arg-type]
    ],
)
def test_bad_specs_are_refused_with_clear_errors(make: Callable[[], object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        make()
