"""Two kernels on 127.0.0.1 over the TCP transport: remote spawn of exported images,
messages both ways, remote monitors (a real exit reason, `noconnection` when the node goes
away), backpressure, and the trust boundary (forged, replayed, capability-carrying and
unauthorized traffic refused)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from yool.cluster.envelope import seal
from yool.cluster.gateway import Gateway, RemoteBoot
from yool.cluster.tcp import TcpTransport
from yool.kernel import Down, Kernel, KernelError, Message, Sys

KEY = b"test-cluster-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def echo(sys: Sys, boot: RemoteBoot, greeting: str) -> None:
    """Exported image: greets its requester, then echoes until told to stop."""
    await sys.send(
        boot.reply, {"hello": greeting, "from": boot.node, "devices": sorted(boot.devices)}
    )
    while True:
        msg = await sys.recv()
        if msg.body == "stop":
            return
        if msg.body == "crash":
            raise RuntimeError("asked to crash")
        await sys.send(boot.reply, {"echo": msg.body})


@asynccontextmanager
async def node(
    name: str,
    *,
    port: int = 0,
    peers: dict[str, tuple[str, int]] | None = None,
    key: bytes = KEY,
    down_after_s: float = 0.5,
    max_pending: int = 64,
) -> AsyncIterator[tuple[Kernel, Gateway, TcpTransport]]:
    async with Kernel() as k:
        t = TcpTransport(
            name,
            listen=("127.0.0.1", port),
            peers=peers,
            down_after_s=down_after_s,
            max_pending=max_pending,
        )
        gw = Gateway(k, t, key, window_s=30.0)
        gw.export("echo", echo)
        await gw.start()
        try:
            yield k, gw, t
        finally:
            await gw.close()


async def until(cond: Any, within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not cond():  # noqa: ASYNC110 (polling another node's state)
            await asyncio.sleep(0.01)


async def client(k: Kernel) -> Sys:
    """A local process to act from (the test drives its Sys)."""
    started: asyncio.Future[Sys] = asyncio.get_running_loop().create_future()

    async def main(sys: Sys) -> None:
        started.set_result(sys)
        await asyncio.Event().wait()

    k.init.spawn(main, name="client")
    return await started


def test_remote_spawn_exchange_and_monitor_with_the_real_exit_reason(real: Any) -> None:
    async def go() -> None:
        async with (
            node("b") as (kb, _gb, tb),
            node("a", peers={"b": ("127.0.0.1", tb.address[1])}) as (ka, ga, _ta),
        ):
            me = await client(ka)
            ref = await ga.spawn_proxy(me, "b", "echo", "hi")
            hello = await me.recv(timeout=5)
            assert hello.body == {"hello": "hi", "from": "a", "devices": []}
            assert await me.send(ref, {"n": 1})
            assert (await me.recv(timeout=5)).body == {"echo": {"n": 1}}
            # the remote process is a real process on b, under b's init, named for its asker
            remote = [p for p in kb.procs.values() if p.name == "echo@a"]
            assert len(remote) == 1
            me.send_nowait(ref, "crash")
            down = (await me.recv(timeout=5, match=lambda b: isinstance(b, Down))).body
            assert (down.pid, down.node, down.reason.kind) == (remote[0].pid, "b", "fault")
            assert "asked to crash" in (down.reason.detail or "")

    real(go())


def test_a_node_that_goes_away_ends_its_monitors_with_noconnection(real: Any) -> None:
    async def go() -> None:
        port = free_port()
        async with node("a", peers={"b": ("127.0.0.1", port)}) as (ka, ga, ta):
            me = await client(ka)
            async with node("b", port=port):
                ref = await ga.spawn_proxy(me, "b", "echo", "hi")
                await me.recv(timeout=5)
                me.monitor(ref)  # again: one monitor per watcher, as for local processes
            # node b is gone (its listener closed, its connections dropped)
            down = (await me.recv(timeout=5)).body
            assert isinstance(down, Down)
            assert (down.node, down.reason.kind) == ("b", "noconnection")
            with pytest.raises(TimeoutError):
                await me.recv(timeout=0.3)
            await until(lambda: not any(p.up for p in ta.peers()))
            with pytest.raises(KernelError, match="unreachable or backlogged"):
                me.send_nowait(ref, "anyone?")

    real(go())


def test_capabilities_never_cross_the_wire(real: Any) -> None:
    async def go() -> None:
        async with (
            node("b") as (_kb, _gb, tb),
            node("a", peers={"b": ("127.0.0.1", tb.address[1])}) as (ka, ga, _ta),
        ):
            me = await client(ka)
            ref = await ga.spawn_proxy(me, "b", "echo", "hi")
            await me.recv(timeout=5)
            mine = me.self_ref()
            with pytest.raises(KernelError, match="capabilities cannot cross the wire"):
                await me.send(ref, "take this", caps=(mine,))
            assert ka.caps.lookup(mine) is not None  # nothing moved, nothing lost
            with pytest.raises(KernelError, match="plain JSON"):
                await me.send(ref, {"x": object()})

    real(go())


def test_unexported_images_are_refused_with_what_is_exported(real: Any) -> None:
    async def go() -> None:
        async with (
            node("b") as (_kb, _gb, tb),
            node("a", peers={"b": ("127.0.0.1", tb.address[1])}) as (ka, ga, _ta),
        ):
            me = await client(ka)
            with pytest.raises(KernelError, match=r"no exported image 'rm-rf' \(exported: echo\)"):
                await ga.spawn_proxy(me, "b", "rm-rf")

    real(go())


def test_exported_images_get_only_the_devices_their_export_grants(real: Any) -> None:
    from yool.drivers.kv import KVDriver

    async def go() -> None:
        async with (
            node("b") as (kb, gb, tb),
            node("a", peers={"b": ("127.0.0.1", tb.address[1])}) as (ka, ga, _ta),
        ):
            kb.register_driver(KVDriver(None))
            gb.export("echo-kv", echo, grant=("kv",))
            me = await client(ka)
            await ga.spawn_proxy(me, "b", "echo-kv", "hi")
            assert (await me.recv(timeout=5)).body["devices"] == ["kv"]
            proc = next(p for p in kb.procs.values() if p.name == "echo-kv@a")
            kinds = sorted(c.kind for c in kb.caps.held_by(proc.pid))
            assert kinds == ["device", "remote"]  # kv and the reply; no spawn, nothing else

    real(go())


async def raw_line(port: int, hello: str, *lines: bytes) -> None:
    """Write envelopes to a node's listener as a peer would (or an attacker could)."""
    _, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(json.dumps({"hello": hello}).encode() + b"\n" + b"".join(x + b"\n" for x in lines))
    await w.drain()
    w.close()


def test_forged_replayed_stale_and_unauthorized_envelopes_are_dropped_as_faults(real: Any) -> None:
    async def go() -> None:
        async with node("b") as (kb, gb, tb):
            target = await client(kb)
            port = tb.address[1]
            now = kb.wall()
            gb.expose(target.pid, "a")
            good = seal(KEY, "b", target.pid, {"s": 9, "m": "legit"}, sender="a", ts=now)
            await raw_line(
                port,
                "a",
                seal(b"wrong-key-wrong-key-wrong", "b", target.pid, {"s": 9, "m": "x"}, sender="a"),
                good.replace(b"legit", b"LEGIT"),  # tampered
                seal(KEY, "b", target.pid, {"s": 9, "m": "old"}, sender="a", ts=now - 60),
                seal(KEY, "b", target.pid, {"s": 9, "m": "new"}, sender="a", ts=now + 60),
                seal(KEY, "b", target.pid, {"s": 9, "m": "sneaky"}, sender="mallory", ts=now),
                seal(KEY, "c", target.pid, {"s": 9, "m": "elsewhere"}, sender="a", ts=now),
                good,
                good,  # replayed
            )
            msg: Message = await target.recv(timeout=5)
            assert msg.body == "legit"
            await until(lambda: sum(gb.faults.values()) >= 7)
            assert dict(gb.faults) == {
                "forged": 2,
                "stale": 1,
                "future": 1,
                "unauthorized": 1,
                "misrouted": 1,
                "replay": 1,
            }
            assert target.pending() == 0
            faults = [e for e in kb.trace(100) if e.kind == "fault"]
            assert len(faults) == 7
            assert not any(KEY.decode() in json.dumps(e.data) for e in faults)

    real(go())


def test_a_full_pending_queue_refuses_new_envelopes_and_keeps_the_old(real: Any) -> None:
    async def go() -> None:
        port = free_port()
        async with node("a", peers={"b": ("127.0.0.1", port)}, max_pending=3, down_after_s=30) as (
            ka,
            ga,
            ta,
        ):
            me = await client(ka)
            ref = ga.proxy(me.pid, "b", 2)
            for i in range(3):
                assert await me.send(ref, i)
            with pytest.raises(KernelError, match="backlogged"):
                await me.send(ref, 3)
            assert ta.stats()["refused"] == 1
            async with node("b", port=port) as (kb, gb, _tb):
                sink = await client(kb)  # pid 2 on b
                assert sink.pid == 2
                gb.expose(2, "a")
                got = [(await sink.recv(timeout=5)).body for _ in range(3)]
                assert got == [0, 1, 2]  # in order, none dropped

    real(go())


def test_a_peer_that_restarts_is_reconnected(real: Any) -> None:
    async def go() -> None:
        port = free_port()
        async with node("a", peers={"b": ("127.0.0.1", port)}, down_after_s=10) as (ka, ga, ta):
            me = await client(ka)
            for round_ in range(2):
                async with node("b", port=port):
                    await until(lambda: any(p.up for p in ta.peers()))
                    await ga.spawn_proxy(me, "b", "echo", f"round {round_}")
                    assert (await me.recv(timeout=5)).body["hello"] == f"round {round_}"
                await until(lambda: not any(p.up for p in ta.peers()))
            assert ta.stats()["reconnects"] >= 1

    real(go())
