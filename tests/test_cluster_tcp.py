"""Two kernels on 127.0.0.1 over the TCP transport: remote spawn of exported images,
messages both ways, remote monitors (a real exit reason, `noconnection` when the node goes
away), backpressure, and the trust boundary (forged, replayed, capability-carrying and
unauthorized traffic refused)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from stdio_servers import on_fake_anthropic, server_env, tool_error, tool_result
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


Node = tuple[Kernel, Gateway, TcpTransport]


@asynccontextmanager
async def node(
    name: str,
    *,
    port: int = 0,
    peers: dict[str, tuple[str, int]] | None = None,
    key: bytes = KEY,
    down_after_s: float = 0.5,
    max_pending: int = 64,
) -> AsyncIterator[Node]:
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


@asynccontextmanager
async def pair() -> AsyncIterator[tuple[Node, Node]]:
    """Node b, and node a with b as its peer: ((kernel, gateway, transport) of b, of a)."""
    async with node("b") as b, node("a", peers={"b": ("127.0.0.1", b[2].address[1])}) as a:
        yield b, a


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
        async with pair() as ((kb, _gb, _tb), (ka, ga, _ta)):
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
        async with pair() as ((_kb, _gb, _tb), (ka, ga, _ta)):
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


def test_what_a_peer_starts_after_the_asker_gave_up_is_killed_not_left_running(
    real: Any,
) -> None:
    async def go() -> None:
        async with pair() as ((kb, gb, _tb), (ka, ga, _ta)):
            started: list[int] = []

            async def idle(sys: Sys) -> None:
                await sys.recv()

            async def slow(asker: str, args: list[Any], reply: int) -> int:
                await asyncio.sleep(0.5)  # longer than the asker waits
                started.append(kb.init.spawn(idle, name=f"late@{asker}").pid)
                return started[-1]

            gb.export_spawner("slow", slow)
            me = await client(ka)
            with pytest.raises(KernelError, match="spawn on node 'b': no answer in time"):
                await ga.spawn("b", "slow", reply=me.pid, within_s=0.1)
            # its late answer reached a, which had nobody waiting: a told b to kill it
            await until(lambda: bool(started) and started[0] not in kb.procs)
            assert str(await kb.reason_of(started[0])) == "killed(by=0)"

    real(go())


def test_unexported_images_are_refused_with_what_is_exported(real: Any) -> None:
    async def go() -> None:
        async with pair() as ((_kb, _gb, _tb), (ka, ga, _ta)):
            me = await client(ka)
            with pytest.raises(KernelError, match=r"no exported image 'rm-rf' \(exported: echo\)"):
                await ga.spawn_proxy(me, "b", "rm-rf")

    real(go())


def test_exported_images_get_only_the_devices_their_export_grants(real: Any) -> None:
    from yool.drivers.kv import KVDriver

    async def go() -> None:
        async with pair() as ((kb, gb, _tb), (ka, ga, _ta)):
            kb.register_driver(KVDriver(None))
            gb.export("echo-kv", echo, grant=("kv",))
            me = await client(ka)
            await ga.spawn_proxy(me, "b", "echo-kv", "hi")
            assert (await me.recv(timeout=5)).body["devices"] == ["kv"]
            proc = next(p for p in kb.procs.values() if p.name == "echo-kv@a")
            kinds = sorted(c.kind for c in kb.caps.held_by(proc.pid))
            assert kinds == ["device", "remote"]  # kv and the reply; no spawn, nothing else

    real(go())


def test_a_stub_charges_running_totals_once_never_refunds_and_ignores_nonsense(
    real: Any,
) -> None:
    from yool.cluster.agents import RemoteLink
    from yool.kernel import Budget

    async def go() -> None:
        async with Kernel(budget=Budget(tokens=1000)) as k:
            stub = (await client(k)).pid
            link = RemoteLink("b")
            used = lambda: k.proc(stub).account.usage()["tokens"]  # noqa: E731
            report = {"tokens": 300, "usd": 0.5, "tool_calls": 2}
            assert link.charge(k, stub, report) is None and used() == 300
            assert link.charge(k, stub, report) is None and used() == 300  # repeated: once
            assert link.charge(k, stub, {**report, "tokens": 200}) is None and used() == 300
            for nonsense in (None, {"tokens": "many"}, {"tokens": 1}, "300", {**report, "usd": -1}):
                assert link.charge(k, stub, nonsense) is None
            assert used() == 300
            assert link.charge(k, stub, {**report, "tokens": 1200}) == "tokens"  # overdrawn
            assert used() == 1200

    real(go())


def test_a_node_answers_only_the_questions_it_offers_and_each_handler_decides(
    real: Any,
) -> None:
    from yool.cluster.gateway import MAX_ANSWER_BYTES

    async def go() -> None:
        async with pair() as ((kb, gb, _tb), (ka, ga, _ta)):
            me = await client(ka)
            await ga.spawn_proxy(me, "b", "echo", "hi")
            await me.recv(timeout=5)
            mine = next(p.pid for p in kb.procs.values() if p.name == "echo@a")

            async def name_of(asker: str, args: dict[str, Any]) -> Any:
                pid = args["pid"]
                if not gb.exposed_to(pid, asker):
                    raise KernelError(f"pid {pid} is not yours")
                return {"name": kb.procs[pid].name, "asker": asker}

            async def huge(asker: str, args: dict[str, Any]) -> Any:
                return "x" * (MAX_ANSWER_BYTES + 1)

            gb.answer_queries("name", name_of)
            gb.answer_queries("huge", huge)
            assert await ga.ask("b", "name", {"pid": mine}) == {"name": "echo@a", "asker": "a"}
            with pytest.raises(KernelError, match=r"name on node 'b' refused: pid 1 is not yours"):
                await ga.ask("b", "name", {"pid": 1})  # b's init: not a's to ask about
            with pytest.raises(KernelError, match=r"no question 'ls' .*\(answered: huge, name\)"):
                await ga.ask("b", "ls", {})
            with pytest.raises(KernelError, match="over"):
                await ga.ask("b", "huge", {})
            with pytest.raises(KernelError, match="is this node"):
                await ga.ask("a", "name", {"pid": mine})
            assert not ga._pending  # every request was answered and forgotten
        # a node that is not there: said after a short grace, and nothing is left queued
        async with node("a", peers={"b": ("127.0.0.1", free_port())}) as (_ka, ga, ta):
            ga.connect_grace_s = 0.3
            with pytest.raises(KernelError, match=r"name on node 'b': not connected .*0\.3 s"):
                await ga.ask("b", "name", {"pid": 1})
            with pytest.raises(KernelError, match="spawn on node 'b': not connected"):
                await ga.spawn("b", "echo", reply=1)
            assert not ga._pending and not ga._up_waiters
            assert [p.pending for p in ta.peers()] == [0]

    real(go())


async def raw_line(port: int, hello: str, *lines: bytes) -> None:
    """Write envelopes to a node's listener as a peer would (or an attacker could)."""
    _, w = await asyncio.open_connection("127.0.0.1", port)
    greeting = {"hello": hello, "listen": f"127.0.0.1:{free_port()}"}
    w.write(json.dumps(greeting).encode() + b"\n" + b"".join(x + b"\n" for x in lines))
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
            forged = seal(b"wrong-key-wrong-key-wrong", "b", 0, {"$": "x"}, sender="a", ts=now)
            await raw_line(port, "a", forged, forged)
            await until(lambda: gb.faults["forged"] == 2)
            assert tb.peers() == []  # an unauthenticated hello is never dialled back
            gb.faults.clear()
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
            assert [p.node for p in tb.peers()] == ["a"]  # authentic now: b can answer a
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
            assert len(faults) == 9
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


# -- end to end: two `yool server --stdio` nodes through the real MCP client ----------------


def listed_node(ps: dict[str, Any], pid: int) -> str:
    """Where `ps` says agent `pid` runs ("b/17")."""
    return str(next(a for a in ps["agents"] if a["pid"] == pid)["node"])


def _node_env(home: Path, name: str, port: int, *, peer: int | None = None, **extra: str) -> Any:
    env = server_env(
        home,
        YOOL_CLUSTER="tcp",
        YOOL_NODE_ID=name,
        YOOL_CLUSTER_LISTEN=f"127.0.0.1:{port}",
        YOOL_CLUSTER_KEY=KEY.decode(),
        YOOL_CLUSTER_DOWN_AFTER_S="0.5",
        **extra,
    )
    if peer is not None:
        env["YOOL_CLUSTER_PEERS"] = f"b=127.0.0.1:{peer}"
    return env


@asynccontextmanager
async def _mcp_node(home: Path, env: dict[str, str], mode: str) -> AsyncIterator[tuple[Any, int]]:
    """A stdio server whose pid we know (the shell execs it), and a real MCP client on it."""
    import sys as _sys

    from mcp.client import Client
    from mcp.client.stdio import StdioServerParameters

    await asyncio.to_thread(home.mkdir, parents=True, exist_ok=True)
    pidfile = home / "server.pid"
    params = StdioServerParameters(
        command="/bin/sh",
        args=["-c", f'echo $$ > "{pidfile}"; exec "$0" -m yool server --stdio', _sys.executable],
        env=env,
        cwd=str(home),
    )
    async with Client(params, mode=mode) as client:  # type: ignore[arg-type]
        yield client, int(pidfile.read_text())


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_mcp_spawn_on_the_other_node_exchange_monitor_and_noconnection_when_it_is_killed(
    real: Any, tmp_path: Path, mode: str
) -> None:
    from yool.testing import FakeProvider, Script, Turn
    from yool.testing.fake_provider import ThreadedFakeProvider

    # b's agents think for a while, so there is time to talk to them and to kill b under them
    slow = ThreadedFakeProvider(FakeProvider(Script([Turn.say("All done.")]), latency=2.5))
    fake_b = on_fake_anthropic(slow.url, "sk-b")
    pa, pb = free_port(), free_port()

    async def go() -> None:
        b_env = _node_env(tmp_path / "b", "b", pb, **fake_b)
        async with _mcp_node(tmp_path / "a", _node_env(tmp_path / "a", "a", pa, peer=pb), mode) as (
            a,
            _,
        ):
            async with _mcp_node(tmp_path / "b", b_env, mode) as (b, b_pid):
                spawned = await tool_result(
                    a, "spawn", task="summarise the repo", node="b", tools=[]
                )
                pid = spawned["pid"]
                listed = {s["pid"]: s for s in (await tool_result(a, "ps"))["agents"]}
                where, _, remote_pid = listed[pid]["node"].partition("/")
                assert where == "b" and listed[pid]["status"] == "running"
                # on b it is an ordinary agent of b's session, started for node a
                there = {s["pid"]: s for s in (await tool_result(b, "ps"))["agents"]}
                assert there[int(remote_pid)]["origin"]["node"] == "a"
                assert "node" not in there[int(remote_pid)]  # local to b
                # a message from a's client reaches the agent's mailbox on b, and a's inspect
                # shows the agent as b sees it (not the stub standing in for it on a)
                assert (await tool_result(a, "send", pid=pid, message="also check the tests"))[
                    "delivered"
                ]
                for _ in range(50):
                    seen = await tool_result(a, "inspect", pid=pid)
                    if "also check the tests" in json.dumps(seen["process"]):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"message never reached b: {seen}")
                process = seen["process"]
                assert (process["node"], process["pid"]) == ("b", int(remote_pid))
                assert process["image"] == "yool.react" and "remote_error" not in process
                assert seen["agent"]["node"] == f"b/{remote_pid}"
                there = await tool_result(b, "inspect", pid=int(remote_pid))
                assert there["process"]["name"] == process["name"]
                # b tells a node only of the agents it runs for that node
                async with node("c", peers={"b": ("127.0.0.1", pb)}) as (_kc, gc, _tc):
                    with pytest.raises(KernelError, match="not an agent this node runs for 'c'"):
                        await gc.ask("b", "inspect", {"pid": int(remote_pid)}, within_s=10)
                    with pytest.raises(KernelError, match="not an agent this node runs for 'c'"):
                        await gc.ask("b", "trace", {"pid": int(remote_pid)}, within_s=10)
                # it finishes on b: a's wait sees its answer and its true exit reason
                done = await tool_result(a, "wait", pids=[pid], timeout_s=20)
                assert done["done"], done
                agent = done["agents"][0]
                assert (agent["reason"], agent["result"], agent["answer"]) == (
                    "normal",
                    "completed",
                    "All done.",
                )
                assert agent["tokens"] > 0  # spent on b, reported with its result
                # ended, it is still inspected and traced as b keeps it
                seen = await tool_result(a, "inspect", pid=pid)
                assert (seen["live"], seen["reason"], seen["process"]["node"]) == (
                    False,
                    "normal",
                    "b",
                )
                assert seen["process"]["pid"] == int(remote_pid)
                traced = await tool_result(a, "trace", pid=pid, n=200)
                assert traced["node"] == "b" and "note" not in traced
                assert {e["pid"] for e in traced["events"]} == {int(remote_pid)}
                assert "All done." in json.dumps(traced["events"])
                assert [e["kind"] for e in traced["events"]][-1] == "exit"
                # its journal is on b: re-running it is b's to do, and a says so
                assert "ran on node 'b'" in await tool_error(a, "replay", pid=pid)
                assert "ran on node 'b'" in await tool_error(a, "fork", pid=pid, steps=0)
                # the next one is still thinking when node b is killed outright
                pid2 = (await tool_result(a, "spawn", task="a long one", node="b", tools=[]))["pid"]
                assert "runs on node 'b'" in await tool_error(a, "snapshot", pid=pid2)
                # b stops answering: a's inspect says so and shows what it has (the stub)
                os.kill(b_pid, signal.SIGSTOP)
                seen = await tool_result(a, "inspect", pid=pid2)
                assert seen["process"]["stub_for"] == listed_node(await tool_result(a, "ps"), pid2)
                assert "node 'b'" in seen["process"]["remote_error"]
                traced = await tool_result(a, "trace", pid=pid2)
                assert "its node could not say" in traced["note"] and "node" not in traced
                assert {e["pid"] for e in traced["events"]} == {pid2}  # the stub's, here
                os.kill(b_pid, signal.SIGKILL)
                done = await tool_result(a, "wait", pids=[pid2], timeout_s=20)
                assert done["done"], done
                assert done["agents"][0]["reason"] == "noconnection"
                assert "node: " in await tool_error(a, "spawn", task="x", node="b", tools=[])
            # an unknown node is a clear error
            text = await tool_error(a, "spawn", task="x", node="nowhere", tools=[])
            assert "no peer node 'nowhere'" in text and "'any'" in text

    try:
        real(go())
    finally:
        slow.stop()


def test_a_remote_agent_is_held_to_the_asking_sessions_budget_and_charged_to_it(
    real: Any, tmp_path: Path
) -> None:
    """Budgets are inherited across nodes: a's session budget caps what an agent on b may
    spend (whatever it asks for), and what it spent there is charged to a's session."""
    from yool.testing import FakeProvider, Script, Turn
    from yool.testing.fake_provider import ThreadedFakeProvider

    # each agent on b answers after a moment, reporting 1,200 + 300 tokens
    turn = Turn.say("Done.", usage=(1200, 300))
    slow = ThreadedFakeProvider(FakeProvider(Script([turn, turn]), latency=1.0))
    pa, pb = free_port(), free_port()
    a_env = _node_env(
        tmp_path / "a", "a", pa, peer=pb, YOOL_BUDGET_TOKENS="5000", YOOL_BUDGET_WALL_S="600"
    )
    b_env = _node_env(tmp_path / "b", "b", pb, **on_fake_anthropic(slow.url, "sk-b"))

    async def remote_budget(b: Any, node_pid: str) -> tuple[float, float | None]:
        """The token budget of the agent on b (spent, held for its call, and left) and how
        long it has until its deadline."""
        seen = await tool_result(b, "inspect", pid=int(node_pid.partition("/")[2]))
        assert seen["live"], seen
        process = seen["process"]
        return process["usage"]["tokens"] + process["remaining"]["tokens"], process["deadline_in"]

    async def go() -> None:
        async with (
            _mcp_node(tmp_path / "b", b_env, "legacy") as (b, _),
            _mcp_node(tmp_path / "a", a_env, "legacy") as (a, _),
        ):
            # it asks for far more than a's session has: it gets what a has left
            first = await tool_result(
                a, "spawn", task="one", node="b", tools=[], budget_tokens=100_000
            )
            listed = {s["pid"]: s for s in (await tool_result(a, "ps"))["agents"]}
            tokens, deadline_in = await remote_budget(b, listed[first["pid"]]["node"])
            assert tokens == 5000
            assert deadline_in is not None and 0 < deadline_in <= 600  # a's wall budget too
            done = await tool_result(a, "wait", pids=[first["pid"]], timeout_s=20)
            assert done["done"] and done["agents"][0]["tokens"] == 1500, done
            session = (await tool_result(a, "ps"))["session"]
            assert session["tokens"] == 1500 and session["remaining"]["tokens"] == 3500
            # the next one, asking for nothing in particular, gets what is left after that
            second = await tool_result(a, "spawn", task="two", node="b", tools=[])
            listed = {s["pid"]: s for s in (await tool_result(a, "ps"))["agents"]}
            assert (await remote_budget(b, listed[second["pid"]]["node"]))[0] == 3500
            done = await tool_result(a, "wait", pids=[second["pid"]], timeout_s=20)
            assert done["done"], done
            assert (await tool_result(a, "ps"))["session"]["tokens"] == 3000

    try:
        real(go())
    finally:
        slow.stop()


def test_remote_agents_running_at_once_are_stopped_when_the_askers_budget_is_spent(
    real: Any, tmp_path: Path
) -> None:
    """Each of two agents on b may spend all of a's 20,000 tokens by itself; together they
    must not pass it by more than a step each: b reports their spend step by step, and the
    report that overdraws a's budget ends that agent with quota(tokens)."""
    from yool.testing import FakeProvider, Script, Turn
    from yool.testing.fake_provider import Recorded, ThreadedFakeProvider

    def step(request: Recorded) -> Turn:  # a fresh run every step (progress), 500 tokens
        code = f"print({request.position})"
        return Turn.say("", ("run_code", {"code": code}), usage=(400, 100))

    fake = ThreadedFakeProvider(FakeProvider(Script(respond=step), latency=0.05))
    pa, pb = free_port(), free_port()
    a_env = _node_env(tmp_path / "a", "a", pa, peer=pb, YOOL_BUDGET_TOKENS="20000")
    b_env = _node_env(tmp_path / "b", "b", pb, **on_fake_anthropic(fake.url, "sk-b"))

    async def go() -> None:
        async with (
            _mcp_node(tmp_path / "b", b_env, "legacy") as (b, _),
            _mcp_node(tmp_path / "a", a_env, "legacy") as (a, _),
        ):
            pids = [
                (await tool_result(a, "spawn", task=f"loop {i}", node="b", tools=["code"]))["pid"]
                for i in range(2)
            ]
            done = await tool_result(a, "wait", pids=pids, timeout_s=60)
            assert done["done"], done
            assert [s["reason"] for s in done["agents"]] == ["quota(tokens)"] * 2, done
            spent = (await tool_result(a, "ps"))["session"]["tokens"]
            assert 20_000 < spent <= 20_000 + 2 * 500, spent
            # on b they were stopped from a (killed), not by their own budgets there
            there = (await tool_result(b, "ps"))["agents"]
            assert sorted(s["reason"] for s in there) == ["killed(by=0)"] * 2, there

    try:
        real(go())
    finally:
        fake.stop()


def test_mcp_fanout_of_sandboxed_runs_with_node_any_spreads_over_both_nodes(
    real: Any, tmp_path: Path
) -> None:
    """Agents placed with node="any" each run code in their node's sandbox: half on a,
    half on b, every run's output seen by the model of the node it ran on."""
    from yool.testing import FakeProvider, Script, Turn
    from yool.testing.fake_provider import ThreadedFakeProvider

    def script() -> Script:
        code = "import os\nprint('sum', 6 * 7, os.getpid() > 1)"
        return Script([Turn.say("", ("run_code", {"code": code})), Turn.say("ran it")])

    fakes = {name: ThreadedFakeProvider(FakeProvider(script())) for name in "ab"}

    def env(name: str, port: int, peer: int | None) -> dict[str, str]:
        llm = on_fake_anthropic(fakes[name].url, f"sk-{name}")
        return _node_env(tmp_path / name, name, port, peer=peer, **llm)  # type: ignore[no-any-return]

    pa, pb = free_port(), free_port()

    async def go() -> None:
        async with (
            _mcp_node(tmp_path / "b", env("b", pb, None), "legacy") as (_b, _),
            _mcp_node(tmp_path / "a", env("a", pa, pb), "legacy") as (a, _),
        ):
            for _ in range(100):  # a has dialled b
                if any(p["up"] for p in await _peers(a)):
                    break
                await asyncio.sleep(0.05)
            pids = [
                (await tool_result(a, "spawn", task=f"task {i}", node="any", tools=["code"]))["pid"]
                for i in range(4)
            ]
            done = await tool_result(a, "wait", pids=pids, timeout_s=90)
            assert done["done"], done
            where = [s.get("node", "a/").partition("/")[0] for s in done["agents"]]
            assert sorted(where) == ["a", "a", "b", "b"]
            assert all((s["reason"], s["answer"]) == ("normal", "ran it") for s in done["agents"])
        for name in "ab":  # each node's model saw two sandbox runs' real output
            outputs = [r for r in fakes[name].fake.requests if "sum 42 True" in json.dumps(r.body)]
            assert len(outputs) == 2, name

    try:
        real(go())
    finally:
        for fake in fakes.values():
            fake.stop()


async def _peers(client: Any) -> list[dict[str, Any]]:
    metrics = (await tool_result(client, "metrics"))["metrics"]
    cluster = metrics.get("cluster") or {}
    peers = cluster.get("peers", [])
    assert isinstance(peers, list)
    return peers


def test_cli_cluster_status_reports_peers_and_never_the_key(real: Any, tmp_path: Path) -> None:
    import subprocess
    import sys as _sys

    secret = "never-print-this-key-0123"

    async def go() -> None:
        async with node("b") as (_kb, _gb, tb):
            env = server_env(
                tmp_path,
                YOOL_CLUSTER="tcp",
                YOOL_NODE_ID="a",
                YOOL_CLUSTER_KEY=secret,
                YOOL_CLUSTER_PEERS=f"b=127.0.0.1:{tb.address[1]},c=127.0.0.1:{free_port()}",
            )

            def run(*argv: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [_sys.executable, "-m", "yool", *argv], env=env, capture_output=True, text=True
                )

            status = await asyncio.to_thread(run, "cluster", "status", "--json")
            policy = await asyncio.to_thread(run, "policy", "--json")
            table = await asyncio.to_thread(run, "cluster", "status")
            for done in (status, policy, table):
                assert secret not in done.stdout + done.stderr
            assert status.returncode == 1  # c does not answer
            found = json.loads(status.stdout)
            assert found["key"] == "set (redacted)" and found["node"] == "a"
            assert {p["node"]: p["reachable"] for p in found["peers"]} == {"b": True, "c": False}
            assert json.loads(policy.stdout)["cluster_key"]["value"] == "(set, redacted)"
            assert "UNREACHABLE" in table.stdout

    real(go())


def test_a_cluster_without_a_key_refuses_to_start_and_says_which_variable(tmp_path: Path) -> None:
    from yool.cluster import ClusterError, load_key
    from yool.policy import RuntimePolicy

    with pytest.raises(ClusterError, match="YOOL_CLUSTER_KEY or YOOL_CLUSTER_KEY_FILE"):
        load_key(RuntimePolicy(cluster="tcp"))
    short = RuntimePolicy(cluster="tcp", cluster_key="short")  # type: ignore[arg-type]
    with pytest.raises(ClusterError, match="shorter than 16 bytes") as info:
        load_key(short)
    assert "short" not in str(info.value).replace("shorter", "")
    keyfile = tmp_path / "key"
    keyfile.write_text("a-key-from-a-file-0123\n")
    assert (
        load_key(RuntimePolicy(cluster="tcp", cluster_key_file=keyfile))
        == b"a-key-from-a-file-0123"
    )


def test_a_peer_that_stops_answering_heartbeats_is_down_though_its_socket_is_open(
    real: Any,
) -> None:
    async def go() -> None:
        held: list[asyncio.StreamWriter] = []
        silent = asyncio.Event()

        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            """Answers heartbeats like a listener until `silent`; then a host gone quiet:
            it keeps the socket open and reads, but answers nothing."""
            held.append(writer)
            with contextlib.suppress(ConnectionError):
                while line := await reader.readline():
                    if line == b"\n" and not silent.is_set():
                        writer.write(b"\n")

        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        events: list[tuple[str, bool]] = []
        async with Kernel() as k:
            t = TcpTransport("a", peers={"b": ("127.0.0.1", port)}, down_after_s=0.3)
            gw = Gateway(k, t, KEY)
            await gw.start()
            k.events.sinks.append(
                lambda ev: (
                    events.append((ev.data["node"], ev.data["up"]))
                    if ev.kind == "node" and ev.data
                    else None
                )
            )
            await until(lambda: ("b", True) in events)
            silent.set()
            await until(lambda: ("b", False) in events, within_s=5)
            assert events == [("b", True), ("b", False)]
            assert not held[0].is_closing()  # the other side never closed its socket
            await gw.close()
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()

    real(go())


def test_remote_kill_and_stop_reach_the_process_and_its_down_comes_back(real: Any) -> None:
    async def go() -> None:
        async with pair() as ((kb, _gb, _tb), (ka, ga, _ta)):
            me = await client(ka)
            ref = await ga.spawn_proxy(me, "b", "echo", "hi")
            await me.recv(timeout=5)
            remote = next(p for p in kb.procs.values() if p.name == "echo@a")
            assert me.stop(ref)
            await until(lambda: remote.state == "stopped")
            assert me.cont(ref)
            await until(lambda: remote.state != "stopped")
            assert me.kill(ref)
            down = (await me.recv(timeout=5, match=lambda b: isinstance(b, Down))).body
            assert (down.pid, down.reason.kind) == (remote.pid, "killed")
            # a node may signal only what it was given: b's own processes are not a's to kill
            other = await client(kb)
            stray = ga.proxy(me.pid, "b", other.pid)
            me.kill(stray)
            await until(lambda: kb_faults(_gb) >= 1)
            assert other.pid in kb.procs

    def kb_faults(gb: Gateway) -> int:
        return gb.faults["unauthorized"]

    real(go())


def test_one_machine_loads_none_of_the_cluster_and_spawn_node_says_how_to_turn_it_on(
    tmp_path: Path,
) -> None:
    import subprocess
    import sys as _sys

    probe = """
import asyncio, sys
from pathlib import Path
from yool.policy import RuntimePolicy
from yool.tools.agents import SpawnArgs, spawn
from yool.tools.session import Session
from yool.tools.table import Call, OpError

async def main():
    policy = RuntimePolicy(home=Path(sys.argv[1]))
    async with Session.open(policy, workspace=Path(sys.argv[1])) as s:
        assert s.cluster is None and s.kernel.gateway is None
        try:
            await spawn(Call(s), SpawnArgs(task="x", node="b"))
        except OpError as e:
            print(e)
        ok = await spawn(Call(s), SpawnArgs(task="x"))
        print(ok.pid > 0, "yool.cluster" in sys.modules)

asyncio.run(main())
"""
    done = subprocess.run(
        [_sys.executable, "-c", probe, str(tmp_path)],
        env=server_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "node: this server is not in a cluster; set YOOL_CLUSTER (tcp or ray)",
        "True False",
    ]


def test_a_node_restarted_on_another_port_is_answered_at_its_new_address(real: Any) -> None:
    async def go() -> None:
        async with node("b") as (kb, _gb, tb):
            peers = {"b": ("127.0.0.1", tb.address[1])}
            ports = []

            def downs() -> int:
                return sum(
                    1
                    for e in kb.trace(200)
                    if e.kind == "node" and e.data == {"node": "a", "up": False}
                )

            for round_ in range(2):
                async with node("a", peers=peers) as (ka, ga, ta):  # listens on a fresh port
                    ports.append(ta.address[1])
                    me = await client(ka)
                    await ga.spawn_proxy(me, "b", "echo", f"round {round_}")
                    assert (await me.recv(timeout=10)).body["hello"] == f"round {round_}"
                await until(lambda n=round_ + 1: downs() == n)  # b gave the old a up
            assert ports[0] != ports[1]

    real(go())
