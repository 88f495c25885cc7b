"""Nurseries: the block waits for its children, and the first failure cancels the scope."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from yool.kernel import NORMAL, SHUTDOWN, Down, ExitReason, Kernel, Sys, fault, killed
from yool.userland import Nursery, NurseryError


async def nap(sys: Sys, seconds: float) -> None:
    await sys.sleep(seconds)


async def boom(sys: Sys, seconds: float) -> None:
    await sys.sleep(seconds)
    raise ValueError("boom")


async def stubborn(sys: Sys) -> None:
    sys.trap_term()
    while True:
        await sys.recv()  # a Term is ignored


def test_the_block_waits_for_every_child(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            sys = k.init
            async with Nursery(sys) as n:
                a = n.spawn(nap, 1.0)
                b = n.spawn(nap, 3.0, name="slow")
            assert sys.now() == 3.0
            assert n.reasons == {a.pid: NORMAL, b.pid: NORMAL}
            assert n.failure is None
            assert [p.pid for p in k.ps()] == [1]

    virtual(main())


def test_first_failure_cancels_the_others_and_names_child_and_reason(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            sys = k.init
            with pytest.raises(NurseryError) as caught:
                async with Nursery(sys) as n:
                    long = n.spawn(nap, 100.0, name="long")
                    bad = n.spawn(boom, 1.0, name="fetcher")
                    later = n.spawn(boom, 2.0)  # would fail too, but is cancelled first
            err = caught.value
            assert sys.now() == 1.0
            assert (err.name, err.pid, err.reason) == (
                "fetcher",
                bad.pid,
                fault("ValueError: boom"),
            )
            assert "'fetcher'" in str(err) and f"pid {bad.pid}" in str(err)
            assert "fault(ValueError: boom)" in str(err)
            assert n.reasons[long.pid] == SHUTDOWN
            assert n.reasons[later.pid] == SHUTDOWN
            assert [p.pid for p in k.ps()] == [1]

    virtual(main())


def test_an_unnamed_child_is_named_by_its_image(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            with pytest.raises(NurseryError, match=r"'(tests\.)?test_nursery:boom' \(pid \d+\)"):
                async with Nursery(k.init) as n:
                    n.spawn(boom, 0.5)

    virtual(main())


def test_a_missed_deadline_is_a_failure_too(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            with pytest.raises(NurseryError, match=r"exited deadline") as caught:
                async with Nursery(k.init) as n:
                    n.spawn(nap, 10.0, name="late", deadline=2.0)
                    n.spawn(nap, 5.0)
            assert caught.value.reason.kind == "deadline"
            assert k.init.now() == 2.0

    virtual(main())


def test_a_child_that_traps_term_is_killed_after_shutdown_s(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            sys = k.init
            with pytest.raises(NurseryError):
                async with Nursery(sys, shutdown_s=1.5) as n:
                    hold = n.spawn(stubborn, name="stubborn")
                    n.spawn(boom, 1.0)
            assert sys.now() == 2.5
            assert n.reasons[hold.pid] == killed(sys.pid)

    virtual(main())


def test_a_body_exception_stops_the_children_and_propagates(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            sys = k.init
            with pytest.raises(KeyError, match="body failed"):
                async with Nursery(sys) as n:
                    a = n.spawn(nap, 50.0)
                    b = n.spawn(nap, 60.0)
                    await sys.sleep(1.0)
                    raise KeyError("body failed")
            assert sys.now() == 1.0
            assert n.reasons == {a.pid: SHUTDOWN, b.pid: SHUTDOWN}
            assert [p.pid for p in k.ps()] == [1]

    virtual(main())


def test_a_timeout_around_the_block_kills_the_children(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            sys = k.init
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(2.0), Nursery(sys) as n:
                    a = n.spawn(nap, 50.0)
                    b = n.spawn(stubborn)
            assert sys.now() == 2.0
            assert n.reasons == {a.pid: killed(sys.pid), b.pid: killed(sys.pid)}
            assert [p.pid for p in k.ps()] == [1]
            assert sys.pending() == 0  # no stray Down notices left behind

    virtual(main())


def test_other_messages_and_downs_stay_in_the_mailbox(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            sys = k.init
            other = sys.spawn(nap, 0.5, monitor=True)  # watched outside the nursery
            k.post(sys.pid, "before")
            async with Nursery(sys) as n:
                n.spawn(nap, 1.0)
                n.spawn(nap, 2.0)
                await sys.sleep(0.75)
                k.post(sys.pid, "during")
            assert sys.pending() == 3
            first, second, third = [await sys.recv(0) for _ in range(3)]
            assert first.body == "before"
            assert second.body == Down(other.pid, NORMAL)
            assert third.body == "during"

    virtual(main())


def test_nursery_runs_inside_any_process(virtual: Any) -> None:
    async def parent(sys: Sys, out: list[ExitReason]) -> None:
        try:
            async with Nursery(sys) as n:
                n.spawn(nap, 1.0)
                n.spawn(boom, 2.0, name="worker")
        except NurseryError as e:
            out.append(e.reason)

    async def main() -> None:
        async with Kernel() as k:
            out: list[ExitReason] = []
            spawn = k.init.derive(k.init.cap("spawn") or "")
            p = k.init.spawn(parent, out, caps=(spawn,))
            async with asyncio.timeout(60):
                assert await k.init.wait(p.ref) == NORMAL
            assert out == [fault("ValueError: boom")]
            assert len(k.caps) <= 3  # the nursery's capabilities over its children are gone

    virtual(main())


def test_spawn_outside_the_block_is_refused(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            n = Nursery(k.init)
            with pytest.raises(RuntimeError, match="inside its `async with` block"):
                n.spawn(nap, 1.0)
            async with n:
                pass
            with pytest.raises(RuntimeError, match="inside its `async with` block"):
                n.spawn(nap, 1.0)
            with pytest.raises(ValueError, match="shutdown_s must be >= 0"):
                Nursery(k.init, shutdown_s=-1)

    virtual(main())
