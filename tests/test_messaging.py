"""Messaging: FIFO mailboxes, selective receive, timeouts, bounded mailboxes with send
backpressure, drops to the dead, links, exit trapping and monitors."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from yool.kernel import (
    INIT,
    NORMAL,
    Budget,
    CapError,
    Down,
    Exit,
    Kernel,
    KernelError,
    Message,
    Sys,
    fault,
    killed,
)

Run = Callable[[Coroutine[Any, Any, Any]], Any]


async def idle(sys: Sys) -> None:
    await sys.recv()


async def collect(sys: Sys, got: list[Any]) -> None:
    while True:
        msg = await sys.recv()
        got.append(msg.body)


async def settle() -> None:
    """Let every ready task run until all are blocked (no virtual time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


def spawn_cap(sys: Sys) -> str:
    ref = sys.cap("spawn")
    assert ref is not None
    return sys.derive(ref)


# -- order -----------------------------------------------------------------------------


def test_messages_arrive_in_fifo_order(virtual: Run) -> None:
    async def burst(sys: Sys, ref: str, tag: str) -> None:
        for i in range(50):
            await sys.send(ref, (tag, i))

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            got: list[Any] = []
            r = host.spawn(collect, got)
            for tag in "ab":
                ref = host.derive(r.ref, ["send"])
                host.spawn(burst, ref, tag, caps=(ref,))
            await host.sleep(1)
            assert len(got) == 100
            for tag in "ab":
                assert [i for t, i in got if t == tag] == list(range(50))  # per sender FIFO

            queued: list[Any] = []
            q = host.spawn(collect, queued)
            host.stop(q.ref)  # let the mailbox fill, then drain it
            for i in range(20):
                await host.send(q.ref, i)
            host.cont(q.ref)
            await host.sleep(1)
            assert queued == list(range(20))

    virtual(main())


def test_selective_receive_takes_the_first_match_and_leaves_the_rest_in_order(
    virtual: Run,
) -> None:
    async def picky(sys: Sys, got: list[Any]) -> None:
        await sys.sleep(1)  # let the mailbox fill first
        got.append((await sys.recv(match=lambda b: isinstance(b, str))).body)
        got.append((await sys.recv(match=lambda b: b == "late")).body)  # waits for it
        while sys.pending():
            got.append((await sys.recv()).body)

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            got: list[Any] = []
            p = host.spawn(picky, got)
            for body in (1, 2, "x", 3, "y", 4):
                await host.send(p.ref, body)
            await host.sleep(2)
            assert got == ["x"]  # now waiting for "late"
            await host.send(p.ref, 5)  # does not match: queued behind 4
            await host.send(p.ref, "late")
            assert (await host.wait(p.ref)).normal
            assert got == ["x", "late", 1, 2, 3, "y", 4, 5]

    virtual(main())


def test_a_raising_match_predicate_counts_as_no_match(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            me = host.self_ref()
            await host.send(me, {"a": 1})
            await host.send(me, {"b": 2})
            msg = await host.recv(timeout=1, match=lambda b: b["b"] == 2)
            assert msg.body == {"b": 2}
            assert (await host.recv(timeout=0)).body == {"a": 1}

    virtual(main())


# -- timeouts --------------------------------------------------------------------------


def test_recv_timeout_raises_timeout_error_and_loses_nothing(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            me = host.self_ref()
            with pytest.raises(TimeoutError):
                await host.recv(timeout=5)
            assert host.now() == 5.0
            await host.send(me, "other")
            with pytest.raises(TimeoutError):
                await host.recv(timeout=3, match=lambda b: b == "wanted")
            assert host.now() == 8.0
            with pytest.raises(TimeoutError):
                await host.recv(timeout=0, match=lambda b: b == "wanted")
            await host.send(me, "wanted")
            assert (await host.recv(timeout=1, match=lambda b: b == "wanted")).body == "wanted"
            assert (await host.recv(timeout=0)).body == "other"
            assert host.pending() == 0

    virtual(main())


async def receiver_at_five(sys: Sys, yield_first: bool, log: list[Any]) -> None:
    if yield_first:
        await asyncio.sleep(0)  # the sender's timer is then registered before ours
    try:
        msg = await sys.recv(timeout=5)
        log.append(("received", msg.body, sys.now()))
    except TimeoutError:
        log.append(("timed out", sys.now()))
        msg = await sys.recv(timeout=1)
        log.append(("then received", msg.body, sys.now()))


async def sender_at_five(sys: Sys, ref: str, log: list[Any]) -> None:
    await sys.sleep(5)
    log.append(("sent", await sys.send(ref, "at five")))


@pytest.mark.parametrize("sender_timer_first", [False, True])
def test_a_message_delivered_at_the_instant_recv_times_out_is_not_lost(
    virtual: Run, sender_timer_first: bool
) -> None:
    """The delivery and the timeout fall on the same virtual instant; which timer fires
    first is fixed by registration order, so both interleavings are pinned down."""

    async def main() -> list[Any]:
        async with Kernel() as k:
            host = k.init
            log: list[Any] = []
            r = host.spawn(receiver_at_five, sender_timer_first, log)
            to_r = host.derive(r.ref, ["send"])
            s = host.spawn(sender_at_five, to_r, log, caps=(to_r,))
            assert (await host.wait(s.ref)).normal
            assert (await host.wait(r.ref)).normal
            return log

    log = virtual(main())
    if sender_timer_first:
        # the sender runs before the receiver resumes, but the timeout has already
        # cancelled its wait: the message is queued, not handed to a dead wait
        assert log == [("sent", True), ("timed out", 5.0), ("then received", "at five", 5.0)]
    else:
        # the timeout wins the race; the message arrives just after, still at t=5
        assert log == [("timed out", 5.0), ("sent", True), ("then received", "at five", 5.0)]


def test_a_match_delivered_just_before_the_timeout_fires_is_received_in_order(
    virtual: Run,
) -> None:
    """A timer posts the awaited message at t=5 just before the receive's own timeout (also
    t=5) fires: the message arrived in time, so recv returns it and the earlier,
    non-matching message keeps its place."""

    async def picky(sys: Sys, log: list[Any]) -> None:
        await sys.sleep(1)  # "early" is queued meanwhile
        try:
            msg = await sys.recv(timeout=4, match=lambda b: b == "awaited")
            log.append(("received", msg.body, sys.now()))
        except TimeoutError:
            log.append(("timed out", sys.now()))
        while sys.pending():
            log.append((await sys.recv()).body)

    async def main() -> list[Any]:
        async with Kernel() as k:
            log: list[Any] = []
            r = k.init.spawn(picky, log)
            k.loop.call_at(5.0, k.post, r.pid, "awaited")  # registered before the timeout
            await k.init.send(r.ref, "early")
            assert (await k.init.wait(r.ref)).normal
            return log

    assert virtual(main()) == [("received", "awaited", 5.0), "early"]


# -- bounded mailboxes -----------------------------------------------------------------


def test_a_send_to_a_full_mailbox_blocks_until_there_is_room(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            log: list[str] = []
            gate = asyncio.Event()
            about_to_send_third = asyncio.Event()

            async def receiver(sys: Sys) -> None:
                await gate.wait()
                while True:
                    log.append(f"got {(await sys.recv()).body}")

            async def sender(sys: Sys, ref: str) -> None:
                for i in range(1, 5):
                    if i == 3:
                        about_to_send_third.set()
                    assert await sys.send(ref, i)
                    log.append(f"sent {i}")

            r = host.spawn(receiver, budget=Budget(mailbox=2))
            to_r = host.derive(r.ref, ["send"])
            s = host.spawn(sender, to_r, caps=(to_r,))
            await about_to_send_third.wait()
            await settle()
            assert log == ["sent 1", "sent 2"]  # the third send is blocked
            assert k.procs[r.pid].pending() == 2
            with pytest.raises(KernelError, match=f"mailbox of pid {r.pid} is full"):
                host.send_nowait(r.ref, "no room")
            assert not k.post(r.pid, "external")  # the host's post drops instead of blocking
            gate.set()
            assert (await host.wait(s.ref)).normal
            await settle()
            assert log.index("got 1") < log.index("sent 3")
            assert [e for e in log if e.startswith("sent")] == [f"sent {i}" for i in range(1, 5)]
            assert [e for e in log if e.startswith("got")] == [f"got {i}" for i in range(1, 5)]

    virtual(main())


def test_send_nowait_delivers_when_there_is_room(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel(mailbox_limit=1) as k:
            host = k.init
            r = host.spawn(idle)
            host.stop(r.ref)
            assert host.send_nowait(r.ref, "one")
            with pytest.raises(KernelError, match="is full"):
                host.send_nowait(r.ref, "two")
            assert k.procs[r.pid].pending() == 1

    virtual(main())


def test_a_blocked_sender_is_released_with_false_when_the_receiver_dies(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            r = host.spawn(idle, budget=Budget(mailbox=1))
            host.stop(r.ref)
            result: list[bool] = []

            async def sender(sys: Sys, ref: str) -> None:
                result.append(await sys.send(ref, 1))
                result.append(await sys.send(ref, 2))

            to_r = host.derive(r.ref, ["send"])
            s = host.spawn(sender, to_r, caps=(to_r,))
            await settle()
            assert result == [True]
            host.kill(r.ref)
            assert (await host.wait(s.ref)).normal
            assert result == [True, False]
            assert k.metrics()["messages_dropped_total"] == 1

    virtual(main())


def test_room_given_to_a_sender_that_dies_passes_to_the_next_sender(virtual: Run) -> None:
    """Mailbox of 1, senders A then B blocked. The receiver takes one message, which
    wakes A, and kills A before A runs: B must still get the free slot."""

    async def receiver(sys: Sys, kill_a: str, got: list[Any]) -> None:
        got.append((await sys.recv()).body)  # wakes sender A
        sys.kill(kill_a)  # A dies holding the wake-up
        got.append((await sys.recv(timeout=10)).body)

    async def sender(sys: Sys, body: str) -> None:
        ref = (await sys.recv()).caps[0]
        await sys.send(ref, body)

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            got: list[Any] = []
            a = host.spawn(sender, "from a")
            b = host.spawn(sender, "from b")
            kill_a = host.derive(a.ref, ["kill"])
            r = host.spawn(receiver, kill_a, got, budget=Budget(mailbox=1), caps=(kill_a,))
            host.stop(r.ref)
            await host.send(r.ref, "first")
            for s in (a, b):
                await host.send(s.ref, "go", caps=(host.derive(r.ref, ["send"]),))
                await settle()
            assert len(k.procs[r.pid].senders or ()) == 2  # both blocked, A first
            host.cont(r.ref)
            assert await host.wait(a.ref) == killed(r.pid)
            assert (await host.wait(r.ref)).normal
            assert (await host.wait(b.ref)).normal
            assert got == ["first", "from b"]

    virtual(main())


# -- the dead --------------------------------------------------------------------------


def test_a_send_to_a_dead_process_returns_false_and_is_counted(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            c = host.spawn(idle)
            host.kill(c.ref)
            assert await host.send(c.ref, "hello?") is False
            assert host.send_nowait(c.ref, "hello?") is False
            assert not k.post(c.pid, "hello?")
            m = k.metrics()
            assert m["messages_dropped_total"] == 2
            assert "yool_messages_dropped_total 2" in k.prometheus()

    virtual(main())


# -- links -----------------------------------------------------------------------------


def linked_pair(
    child_body: Callable[[Sys], Coroutine[Any, Any, Any]], trap: bool, log: list[Any]
) -> Callable[[Sys], Coroutine[Any, Any, None]]:
    async def parent(sys: Sys) -> None:
        if trap:
            sys.trap_exits()
        c = sys.spawn(child_body, link=True)
        log.append(c.pid)
        while True:
            msg = await sys.recv()
            log.append(msg.body)

    return parent


@pytest.mark.parametrize(
    ("ending", "reason"),
    [("return", NORMAL), ("raise", fault(RuntimeError("bad"))), ("exit", NORMAL)],
)
def test_links_kill_on_abnormal_exit_only(virtual: Run, ending: str, reason: Any) -> None:
    async def child(sys: Sys) -> None:
        await sys.sleep(1)
        if ending == "raise":
            raise RuntimeError("bad")
        if ending == "exit":
            sys.exit()

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            log: list[Any] = []
            parent = linked_pair(child, False, log)
            p = host.spawn(parent, caps=(spawn_cap(host),))
            await host.sleep(2)
            child_pid = log[0]
            assert await k.reason_of(child_pid) == reason
            if reason.normal:
                assert p.pid in k.procs
            else:
                assert await host.wait(p.ref) == killed(child_pid)

    virtual(main())


def test_trap_exits_turns_a_linked_death_into_an_exit_message(virtual: Run) -> None:
    async def child(sys: Sys) -> None:
        await sys.sleep(1)
        raise RuntimeError("bad")

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            log: list[Any] = []
            parent = linked_pair(child, True, log)
            p = host.spawn(parent, caps=(spawn_cap(host),))
            await host.sleep(2)
            child_pid = log[0]
            assert log == [child_pid, Exit(child_pid, fault(RuntimeError("bad")))]
            assert p.pid in k.procs

    virtual(main())


def test_a_link_is_two_way_and_init_survives_its_linked_children(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            log: list[Any] = []
            parent = linked_pair(idle, False, log)
            p = host.spawn(parent, link=True, caps=(spawn_cap(host),))
            await host.sleep(1)
            child_pid = log[0]
            host.kill(p.ref)
            assert await k.reason_of(child_pid) == killed(p.pid)
            assert k.procs.keys() == {INIT}

    virtual(main())


def test_a_link_chain_of_a_thousand_processes_dies_without_recursion(virtual: Run) -> None:
    async def node(sys: Sys, n: int, spawn: str) -> None:
        if n == 1:
            await sys.sleep(1)
            raise RuntimeError("end of the chain")
        sys.spawn(node, n - 1, (d := sys.derive(spawn)), link=True, caps=(d,))
        await sys.recv()

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            d = spawn_cap(host)
            root = host.spawn(node, 1000, d, monitor=True, caps=(d,))
            await host.sleep(0.5)
            assert len(k.procs) == 1001
            msg = await host.recv(timeout=5)
            assert msg.body == Down(root.pid, killed(root.pid + 1))
            assert k.procs.keys() == {INIT}
            leaf = root.pid + 999
            assert await k.reason_of(leaf) == fault(RuntimeError("end of the chain"))
            for pid in range(root.pid, leaf):
                assert await k.reason_of(pid) == killed(pid + 1)

    virtual(main())


def test_linking_to_a_dead_process_acts_on_its_recorded_reason(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            dead = host.spawn(idle)
            host.kill(dead.ref)
            host.trap_exits()
            host.link(dead.ref)
            assert (await host.recv(timeout=0)).body == Exit(dead.pid, killed(INIT))

    virtual(main())


# -- monitors --------------------------------------------------------------------------


def test_a_monitor_delivers_down_once_with_the_reason(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            c = host.spawn(idle)
            host.monitor(c.ref)
            host.monitor(c.ref)  # watching twice is still one watch
            await host.send(c.ref, "bye")
            msg = await host.recv(timeout=5)
            assert msg == Message(c.pid, Down(c.pid, NORMAL))
            with pytest.raises(TimeoutError):
                await host.recv(timeout=5)

    virtual(main())


def test_monitoring_an_already_dead_process_delivers_down_at_once(virtual: Run) -> None:
    async def boom(sys: Sys) -> None:
        raise ValueError("boom")

    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            c = host.spawn(boom)
            await host.wait(c.ref)
            host.monitor(c.ref)
            assert (await host.recv(timeout=0)).body == Down(c.pid, fault(ValueError("boom")))

    virtual(main())


def test_demonitor_stops_the_down_message(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            c = host.spawn(idle)
            host.monitor(c.ref)
            host.demonitor(c.ref)
            host.kill(c.ref)
            with pytest.raises(TimeoutError):
                await host.recv(timeout=1)

    virtual(main())


def test_monitoring_needs_the_monitor_right(virtual: Run) -> None:
    async def main() -> None:
        async with Kernel() as k:
            host = k.init
            c = host.spawn(idle)
            send_only = host.derive(c.ref, ["send"])
            with pytest.raises(CapError, match="lacks right 'monitor'"):
                host.monitor(send_only)
            with pytest.raises(CapError, match="lacks right 'link'"):
                host.link(send_only)

    virtual(main())
