"""Processes: pids, honest exit reasons, signals, wait, orphans, ps, stop/cont,
deadlines, the name registry, cleanups and images."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from yool.kernel import (
    DEADLINE,
    INIT,
    NORMAL,
    SHUTDOWN,
    Budget,
    Down,
    ExitReason,
    Kernel,
    KernelError,
    ProcessExit,
    QuotaExceeded,
    Sys,
    Term,
    fault,
    killed,
    quota,
)

Run = Callable[[Coroutine[Any, Any, Any]], Any]


async def idle(sys: Sys) -> None:
    await sys.recv()


async def sleeper(sys: Sys) -> None:
    await sys.sleep(1000)


async def quick(sys: Sys) -> None:
    return None


def spawn_cap(sys: Sys) -> str:
    ref = sys.cap("spawn")
    assert ref is not None
    return sys.derive(ref)


# -- pids ------------------------------------------------------------------------------


def test_pids_increase_and_are_never_reused(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            assert host.pid == INIT
            pids = []
            for _ in range(50):
                c = host.spawn(quick)
                pids.append(c.pid)
                assert (await host.wait(c.ref)).normal
            assert len(k.procs) == 1
            assert pids == list(range(2, 52))
            assert host.spawn(idle).pid == 52

    virtual(main())


# -- exit reasons ----------------------------------------------------------------------


async def reason_of(image: Any, *args: Any, **kw: Any) -> tuple[ExitReason, float]:
    async with Kernel() as k:
        c = k.init.spawn(image, *args, **kw)
        reason = await k.init.wait(c.ref)
        return reason, k.init.now()


def test_a_normal_return_exits_normal(virtual: Run) -> None:
    assert virtual(reason_of(quick)) == (NORMAL, 0.0)


def test_an_exception_exits_fault_with_the_error(virtual: Run) -> None:
    async def boom(sys: Sys) -> None:
        raise ValueError("boom")

    reason, _ = virtual(reason_of(boom))
    assert reason == fault(ValueError("boom"))
    assert str(reason) == "fault(ValueError: boom)"


def test_a_fault_is_logged_with_its_traceback(virtual: Run) -> None:
    async def boom(sys: Sys) -> None:
        raise ValueError("boom")

    async def main() -> None:
        async with Kernel() as k:
            c = k.init.spawn(boom)
            await k.init.wait(c.ref)
            (ev,) = [e for e in k.trace(pid=c.pid) if e.kind == "fault"]
            assert ev.data is not None and "ValueError: boom" in ev.data["traceback"]

    virtual(main())


def test_sys_exit_ends_with_the_given_reason_even_through_except_exception(virtual: Run) -> None:
    async def leaves(sys: Sys) -> None:
        with contextlib.suppress(Exception):  # ProcessExit is not an Exception
            sys.exit(ExitReason("fault", "gave up"))
        raise AssertionError("not reached")

    assert virtual(reason_of(leaves))[0] == ExitReason("fault", "gave up")


def test_quota_exceeded_exits_quota_of_the_resource(virtual: Run) -> None:
    async def greedy(sys: Sys) -> None:
        sys.spawn(idle)
        sys.spawn(idle)  # Budget(children=1): uncaught QuotaExceeded

    async def main() -> ExitReason:
        async with Kernel() as k:
            host = k.init
            c = host.spawn(greedy, budget=Budget(children=1), caps=(spawn_cap(host),))
            return await host.wait(c.ref)

    assert virtual(main()) == quota("children")

    async def raises(sys: Sys) -> None:
        raise QuotaExceeded("usd", "out of money")

    assert virtual(reason_of(raises))[0] == quota("usd")


def test_kill_exits_killed_by_the_killer(virtual: Run) -> None:
    async def assassin(sys: Sys) -> None:
        msg = await sys.recv()
        sys.kill(msg.caps[0])

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            a = host.spawn(idle)
            assert host.kill(a.ref)
            assert await host.wait(a.ref) == killed(INIT)
            assert not host.kill(a.ref)  # already dead

            victim = host.spawn(idle)
            hit = host.spawn(assassin)
            await host.send(hit.ref, "go", caps=(host.derive(victim.ref, ["kill"]),))
            assert await host.wait(victim.ref) == killed(hit.pid)
            assert str(killed(hit.pid)) == f"killed(by={hit.pid})"

    virtual(main())


def test_a_process_can_kill_itself(virtual: Run) -> None:
    async def suicide(sys: Sys) -> None:
        sys.kill(sys.self_ref(["kill"]))
        raise AssertionError("not reached")

    assert virtual(reason_of(suicide))[0] == killed(2)


def test_a_spawn_deadline_kills_with_reason_deadline(virtual: Run) -> None:
    assert virtual(reason_of(sleeper, deadline=5)) == (DEADLINE, 5.0)


def test_set_deadline_kills_at_the_new_time_and_none_clears_it(virtual: Run) -> None:
    async def tight(sys: Sys) -> None:
        sys.set_deadline(3)
        await sys.sleep(1000)

    assert virtual(reason_of(tight, deadline=100)) == (DEADLINE, 3.0)

    async def relaxed(sys: Sys) -> None:
        sys.set_deadline(None)
        await sys.sleep(10)

    assert virtual(reason_of(relaxed, deadline=5)) == (NORMAL, 10.0)

    async def bad(sys: Sys) -> None:
        sys.set_deadline(-1)

    reason, _ = virtual(reason_of(bad))
    assert reason.kind == "fault" and "deadline must be >= 0" in str(reason.detail)


def test_the_wall_budget_wins_over_a_later_deadline(virtual: Run) -> None:
    assert virtual(reason_of(sleeper, budget=Budget(wall_s=2), deadline=5)) == (quota("wall"), 2.0)
    assert virtual(reason_of(sleeper, budget=Budget(wall_s=9), deadline=5)) == (DEADLINE, 5.0)


def test_term_without_trapping_exits_shutdown(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            c = k.init.spawn(idle)
            assert k.init.term(c.ref)
            assert await k.init.wait(c.ref) == SHUTDOWN

    virtual(main())


def test_trapped_term_is_a_message_and_the_process_chooses(virtual: Run) -> None:
    async def stubborn(sys: Sys, terms: list[Any]) -> None:
        sys.trap_term()
        for _ in range(2):
            msg = await sys.recv()
            terms.append(msg.body)
        sys.exit(ExitReason("fault", "terminated on the second request"))

    async def main() -> None:
        async with Kernel() as k:
            terms: list[Any] = []
            c = k.init.spawn(stubborn, terms)
            await k.init.sleep(1)
            assert k.init.term(c.ref)
            await k.init.sleep(1)
            assert terms == [Term(by=INIT)]
            assert c.pid in k.procs  # it chose to carry on
            k.init.term(c.ref)
            assert await k.init.wait(c.ref) == ExitReason(
                "fault", "terminated on the second request"
            )

    virtual(main())


async def linker(sys: Sys, ref: str | None = None) -> None:
    if ref is None:
        ref = (await sys.recv()).caps[0]
    sys.link(ref)
    await sys.recv()


def test_kernel_shutdown_ends_every_process_with_shutdown(virtual: Run) -> None:
    """Linked processes too: whichever of a linked pair is shut down first, the other's
    reason is `shutdown` (the truth), not `killed(by=...)` (OTP: the exit signal carries
    `shutdown`)."""

    async def main() -> None:
        k = Kernel()
        host = k.init
        early = host.spawn(idle)
        to_early = host.derive(early.ref, ["link"])
        follower = host.spawn(linker, to_early, caps=(to_early,))  # linked to a lower pid
        leader = host.spawn(linker)  # will link to a higher pid
        late = host.spawn(idle)
        to_late = host.derive(late.ref, ["link"])
        await host.send(leader.ref, "link to", caps=(to_late,))
        supervised = host.spawn(sleeper, link=True)
        await host.sleep(1)
        pids = [early.pid, follower.pid, leader.pid, late.pid, supervised.pid]
        await k.shutdown()
        assert [await k.reason_of(pid) for pid in pids] == [SHUTDOWN] * len(pids)
        assert k.metrics()["exits_total"] == {"shutdown": len(pids)}
        with pytest.raises(KernelError, match="shutting down"):
            host.spawn(idle)

    virtual(main())


# -- a killed process cannot act -------------------------------------------------------


def test_a_killed_process_that_swallows_cancellation_cannot_act(virtual: Run) -> None:
    attempts: list[str] = []

    async def stubborn(sys: Sys, friend: str) -> None:
        while True:
            try:
                await sys.recv()
            except asyncio.CancelledError:
                break  # swallowed
        traps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("send", lambda: sys.send(friend, "still here")),
            ("recv", lambda: sys.recv(timeout=1)),
            ("sleep", lambda: sys.sleep(1)),
        ]
        for name, trap in traps:
            try:
                await trap()
            except ProcessExit as e:
                attempts.append(f"{name}: {e.reason}")
        syncs: list[tuple[str, Callable[[], Any]]] = [
            ("spawn", lambda: sys.spawn(quick)),
            ("self_ref", lambda: sys.self_ref()),
            ("register", lambda: sys.register("ghost")),
        ]
        for name, sync in syncs:
            try:
                sync()
            except ProcessExit as e:
                attempts.append(f"{name}: {e.reason}")
        # and if it just returns, its reason is still the kill

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            friend = host.spawn(idle)
            to_friend = host.derive(friend.ref, ["send"])
            c = host.spawn(stubborn, to_friend, caps=(to_friend, spawn_cap(host)))
            await host.sleep(1)
            host.kill(c.ref)
            await host.sleep(1)
            assert await host.wait(c.ref) == killed(INIT)
            by = f"killed(by={INIT})"
            names = ("send", "recv", "sleep", "spawn", "self_ref", "register")
            assert attempts == [f"{n}: {by}" for n in names]
            assert k.procs[friend.pid].pending() == 0
            assert "ghost" not in k.names

    virtual(main())


# -- wait ------------------------------------------------------------------------------


def test_wait_works_before_and_after_death_and_for_many_waiters(virtual: Run) -> None:
    async def waiter(sys: Sys, ref: str, out: list[Any]) -> None:
        out.append(await sys.wait(ref))

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            out: list[Any] = []
            target = host.spawn(idle)
            for _ in range(3):
                ref = host.derive(target.ref, ["monitor"])
                host.spawn(waiter, ref, out, caps=(ref,))
            await host.sleep(1)
            await host.send(target.ref, "bye")
            assert await host.wait(target.ref) == NORMAL  # before death (blocks)
            await host.sleep(1)
            assert out == [NORMAL] * 3
            assert await host.wait(target.ref) == NORMAL  # after death
            with pytest.raises(KernelError, match="no process 999"):
                await k.wait(999)

    virtual(main())


# -- orphans ---------------------------------------------------------------------------


def test_orphans_reparent_to_init(virtual: Run) -> None:
    async def parent(sys: Sys, out: list[int]) -> None:
        kid = sys.spawn(idle)
        out.append(kid.pid)
        await sys.recv()

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            out: list[int] = []
            p = host.spawn(parent, out, caps=(spawn_cap(host),))
            await host.sleep(1)
            (kid,) = out
            assert k.procs[kid].parent == p.pid
            host.kill(p.ref)
            kid_sys = k.procs[kid].sys
            assert kid_sys is not None and kid_sys.parent == INIT
            assert {i.pid: i.parent for i in k.ps()}[kid] == INIT
            assert kid in k.inspect(INIT)["children"]

    virtual(main())


# -- ps, stop and cont -----------------------------------------------------------------


def test_ps_shows_running_waiting_and_stopped(virtual: Run) -> None:
    async def busy(sys: Sys) -> None:
        await sys.sleep(1000)

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            r = host.spawn(busy)
            w = host.spawn(idle)
            s = host.spawn(idle)
            await host.sleep(1)
            host.stop(s.ref)
            states = {i.pid: i.state for i in k.ps()}
            assert states == {INIT: "running", r.pid: "running", w.pid: "waiting", s.pid: "stopped"}
            host.cont(s.ref)
            assert {i.pid: i.state for i in k.ps()}[s.pid] == "waiting"

    virtual(main())


def test_a_stopped_process_does_not_proceed_past_its_next_trap_until_cont(virtual: Run) -> None:
    async def handler(sys: Sys, log: list[Any]) -> None:
        while True:
            msg = await sys.recv()
            log.append(msg.body)

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            log: list[Any] = []
            h = host.spawn(handler, log)
            await host.send(h.ref, "before")
            await host.sleep(1)
            assert log == ["before"]
            assert host.stop(h.ref)
            await host.send(h.ref, "while stopped 1")
            await host.send(h.ref, "while stopped 2")
            await host.sleep(100)
            assert log == ["before"]
            assert host.cont(h.ref)
            await host.sleep(1)
            assert log == ["before", "while stopped 1", "while stopped 2"]

    virtual(main())


def test_stop_holds_a_process_at_its_next_sleep_until_cont(virtual: Run) -> None:
    async def ticker(sys: Sys, log: list[float]) -> None:
        while True:
            await sys.sleep(1)
            log.append(sys.now())

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            log: list[float] = []
            t = host.spawn(ticker, log)
            await host.sleep(2.5)
            host.stop(t.ref)
            await host.sleep(10)
            assert log == [1.0, 2.0]
            host.cont(t.ref)
            await host.sleep(1.1)
            assert log == [1.0, 2.0, 12.5, 13.5]  # the held tick resumes at cont

    virtual(main())


def test_kill_of_a_stopped_process_ends_it(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            s = k.init.spawn(idle)
            k.init.stop(s.ref)
            k.init.kill(s.ref)
            assert await k.init.wait(s.ref) == killed(INIT)

    virtual(main())


# -- names -----------------------------------------------------------------------------


def test_names_are_first_come_and_cleared_when_the_owner_dies(virtual: Run) -> None:
    async def server(sys: Sys, name: str, out: list[Any]) -> None:
        try:
            sys.register(name)
            out.append(("registered", sys.pid))
        except KernelError as e:
            out.append(str(e))
            return
        while True:
            msg = await sys.recv()
            out.append(msg.body)

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            out: list[Any] = []
            first = host.spawn(server, "db", out)
            await host.sleep(1)
            second = host.spawn(server, "db", out)
            await host.sleep(1)
            assert out == [
                ("registered", first.pid),
                f"name 'db' is already registered by pid {first.pid}",
            ]
            assert (await host.wait(second.ref)).normal
            ref = host.whereis("db")
            assert ref is not None
            assert await host.send(ref, "query")
            await host.sleep(1)
            with pytest.raises(Exception, match="lacks right 'kill'"):
                host.kill(ref)  # whereis gives send/monitor, not kill
            host.kill(first.ref)
            assert host.whereis("db") is None
            assert "db" not in k.names
            third = host.spawn(server, "db", out)
            await host.sleep(1)
            assert out[2:] == ["query", ("registered", third.pid)]
            with pytest.raises(KernelError, match="non-empty string"):
                host.register("")

    virtual(main())


# -- cleanups --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["normal", "fault", "kill", "deadline", "shutdown"])
def test_on_cleanup_runs_on_any_death(virtual: Run, how: str) -> None:
    ran: list[str] = []

    async def worker(sys: Sys) -> None:
        sys.on_cleanup(lambda: ran.append("first"))
        sys.on_cleanup(lambda: ran.append("second"))
        if how == "normal":
            return
        if how == "fault":
            raise RuntimeError("x")
        await sys.sleep(1000)

    async def main() -> None:
        k = Kernel()
        c = k.init.spawn(worker, deadline=5 if how == "deadline" else None)
        await k.init.sleep(1)
        if how == "kill":
            k.init.kill(c.ref)
        if how == "shutdown":
            await k.shutdown()
        else:
            await k.init.wait(c.ref)
            await k.shutdown()

    virtual(main())
    assert ran == ["second", "first"]  # last registered, first run


# -- images ----------------------------------------------------------------------------


def test_registered_images_spawn_by_name_and_unknown_names_list_the_known(virtual: Run) -> None:
    async def echo(sys: Sys, text: str) -> str:
        return text

    async def main() -> None:
        async with Kernel() as k:
            k.register_image("echo", echo)
            k.register_image("sleeper", sleeper)
            c = k.init.spawn("echo", "hi")
            assert k.procs[c.pid].image == "echo"
            assert (await k.init.wait(c.ref)).normal
            with pytest.raises(
                KernelError, match=r"no image named 'nope' \(registered: echo, sleeper\)"
            ):
                k.init.spawn("nope")
            with pytest.raises(KernelError, match="already registered"):
                k.register_image("echo", sleeper)
            k.register_image("echo", echo)  # the same function again is fine

    virtual(main())


def test_monitor_on_spawn_reports_the_true_reason(virtual: Run) -> None:
    async def boom(sys: Sys) -> None:
        raise KeyError("k")

    async def main() -> None:
        async with Kernel() as k:
            c = k.init.spawn(boom, monitor=True)
            msg = await k.init.recv(timeout=5)
            assert msg.body == Down(c.pid, fault(KeyError("k")))

    virtual(main())
