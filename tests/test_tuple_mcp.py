"""The tuple tools over the real MCP client on stdio, in both protocol eras, and the tuple tools
a sub-agent gets from its capabilities."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from stdio_servers import on_fake_anthropic, server_env, stdio, tool_result
from yool.kernel import CapError
from yool.policy import RuntimePolicy
from yool.testing.fake_provider import FakeProvider, Fault, Recorded, Script, Turn
from yool.tools import Session
from yool.tools.tuples import RERUN_MARK, RERUN_NOTE
from yool.userland.agents.spec import AgentSpec
from yool.userland.agents.tools import _child_caps, build_toolbox


def params(home: Path) -> StdioServerParameters:
    return stdio(home)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_tuple_tools_over_stdio_and_a_durable_lane_outlives_the_server(
    tmp_path: Path, mode: str
) -> None:
    async def first() -> Any:
        async with Client(params(tmp_path), mode=mode) as c:
            out = {}
            for i in range(3):
                r = await c.call_tool(
                    "tuple_out",
                    {"lane": "jobs", "tuple": ["file", f"src/{i}.py", i], "durable": True},
                )
                assert not r.is_error, r.content
                out[i] = r.structured_content
            rd = await c.call_tool(
                "tuple_rd", {"lane": "jobs", "template": [None, {"prefix": "src/1"}, None]}
            )
            scan = await c.call_tool(
                "tuple_scan", {"lane": "jobs", "template": ["file", None, {"gte": 1}]}
            )
            took = await c.call_tool("tuple_in", {"lane": "jobs", "template": [None, None, 0]})
            empty = await c.call_tool(
                "tuple_in", {"lane": "jobs", "template": [None, None, 0], "wait_s": 0.2}
            )
            bad = await c.call_tool("tuple_in", {"lane": "jobs", "template": [{"regex": "x"}]})
            return out, rd, scan, took, empty, bad

    out, rd, scan, took, empty, bad = asyncio.run(first())
    assert out[2]["id"] > out[0]["id"]
    assert rd.structured_content == {"tuple": ["file", "src/1.py", 1]}
    assert sorted(t[2] for t in scan.structured_content["tuples"]) == [1, 2]
    assert took.structured_content == {"tuple": ["file", "src/0.py", 0]}
    assert empty.structured_content == {}  # nothing matched in time
    assert bad.is_error and "template[0]" in bad.content[0].text  # type: ignore[union-attr]

    async def second() -> Any:
        async with Client(params(tmp_path), mode=mode) as c:
            r = await c.call_tool("tuple_scan", {"lane": "jobs", "template": [None, None, None]})
            return r.structured_content

    left = asyncio.run(second())
    assert sorted(t[2] for t in left["tuples"]) == [1, 2]  # durable: 0 was taken, 1 and 2 stay


def test_a_sub_agent_gets_tuple_tools_for_the_rights_it_holds(tmp_path: Path) -> None:
    async def main() -> Any:
        pol = RuntimePolicy(home=tmp_path / "home")
        async with Session.open(pol, workspace=tmp_path, environ={}) as session:
            s = session.sys
            got: dict[str, Any] = {}

            async def agent(csys: Any) -> None:
                box = await build_toolbox(csys, AgentSpec(reply_to=""))
                got["tools"] = sorted(n for n in box.tools if n.startswith("tuple_"))
                got["rd"] = await box.call("tuple_rd", {"lane": "l", "template": [None]})
                got["out"] = await box.call("tuple_out", {"lane": "l", "tuple": [1]})

            session.tuples.out_nowait("l", ["hello"])
            read_only = s.derive(session.lane_cap, ("read",))
            c = s.spawn(agent, caps=[s.derive(session.tuples_device), read_only])
            await s.wait(c.ref)
            return got

    got = asyncio.run(main())
    assert got["tools"] == ["tuple_rd", "tuple_scan"]  # no write, no take: no out, no in
    assert got["rd"] == (["hello"], False)
    assert got["out"][1] and "no tool 'tuple_out'" in got["out"][0]


def _batch_env(home: Path, fake: FakeProvider, threshold: int) -> StdioServerParameters:
    p = params(home)
    assert p.env is not None
    p.env.update(
        YOOL_PROVIDER="anthropic",
        ANTHROPIC_API_KEY="sk-test-batch",
        ANTHROPIC_BASE_URL=fake.url,
        YOOL_COMPRESSION_THRESHOLD=str(threshold),
    )
    return p


async def _results(c: Client, lane: str, n: int) -> list[list[Any]]:
    got = []
    for _ in range(n):
        r = await c.call_tool("tuple_in", {"lane": lane, "template": [None] * 4, "wait_s": 30})
        assert not r.is_error and r.structured_content, r.content
        got.append(r.structured_content["tuple"])
    return got


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_batch_spawn_over_stdio_materialises_agents_for_work_at_most_the_threshold_at_once(
    tmp_path: Path, mode: str
) -> None:
    threshold = 2
    indices = [0, 1, 1_048_575, 33, 500_000, 7, 33]

    async def main() -> Any:
        async with FakeProvider(latency=0.3) as fake:
            async with Client(_batch_env(tmp_path, fake, threshold), mode=mode) as c:
                r = await c.call_tool("batch_spawn", {"depth": 4, "branching": 32})
                assert not r.is_error, r.content
                info = r.structured_content
                assert info is not None
                for i in indices:
                    put = {"lane": info["lane"], "tuple": [i, f"summarise file {i}"]}
                    assert not (await c.call_tool("tuple_out", put)).is_error
                got = await _results(c, info["out"], len(indices))
                status = (await c.call_tool("batch_spawn", {"id": info["id"]})).structured_content
                ps = (await c.call_tool("ps", {"limit": 100})).structured_content
                bad = await c.call_tool("tuple_out", {"lane": info["lane"], "tuple": [2**20, "x"]})
                assert not bad.is_error
                rejected = await _results(c, info["out"], 1)
                # a small controller budget: its agents end with quota, and say so
                r = await c.call_tool(
                    "batch_spawn", {"depth": 1, "branching": 4, "budget_tokens": 5}
                )
                poor = r.structured_content
                assert poor is not None
                for i in (0, 3):
                    put = {"lane": poor["lane"], "tuple": [i, "an expensive task"]}
                    assert not (await c.call_tool("tuple_out", put)).is_error
                broke = await _results(c, poor["out"], 2)
            return info, got, status, ps, rejected, broke, fake.max_in_flight

    info, got, status, ps, rejected, broke, in_flight = asyncio.run(main())
    assert info["agents"] == 1_048_576 and info["materialised"] == 0
    assert sorted(t[0] for t in got) == sorted(indices)
    assert all(t[2] == "normal" and t[3] for t in got), got
    assert status["peak_active"] <= threshold and status["materialised"] >= 6
    assert status["compressed"] >= 4  # six agents had work, two could stay materialised
    assert in_flight == threshold  # side by side, but never more than the threshold
    batch_agents = [a for a in ps["agents"] if (a.get("origin") or {}).get("batch") == info["id"]]
    assert len(batch_agents) == len(indices)
    assert {a["origin"]["agent"] for a in batch_agents} == set(indices)
    assert all(a["status"] == "exited" and a["reason"] == "normal" for a in batch_agents)
    assert rejected[0][0] == 2**20 and rejected[0][2].startswith("rejected")
    assert sorted(t[0] for t in broke) == [0, 3]
    assert all(t[2].startswith("quota") for t in broke), broke


def test_a_delegated_child_gets_the_tuples_device_and_lanes_never_wider_than_its_parents(
    tmp_path: Path,
) -> None:
    async def main() -> Any:
        pol = RuntimePolicy(home=tmp_path / "home")
        async with Session.open(pol, workspace=tmp_path, environ={}) as session:
            s = session.sys
            got: dict[str, Any] = {}

            async def child(csys: Any) -> None:
                box = await build_toolbox(csys, AgentSpec(reply_to=""))
                got["tools"] = sorted(n for n in box.tools if n.startswith("tuple_"))
                got["in"] = await box.call("tuple_in", {"lane": "jobs/1", "template": [None]})
                got["other"] = await box.call("tuple_rd", {"lane": "other", "template": [None]})
                (lane,) = csys.caps("lane")
                try:
                    csys.derive(lane.ref, ("read", "take", "write"))
                except CapError as e:
                    got["widen"] = str(e)
                wide = csys.derive(lane.ref, caveat={"lane": "*"})  # adds to, never replaces
                try:
                    session.tuples.require(session.kernel.caps, csys.pid, wide, "read", "other")
                except CapError as e:
                    got["caveat"] = str(e)

            async def parent(psys: Any) -> None:
                caps = _child_caps(psys, AgentSpec(reply_to=""), [], None)
                c = psys.spawn(child, caps=caps)
                await psys.wait(c.ref)

            session.tuples.out_nowait("jobs/1", ["task"])
            session.tuples.out_nowait("other", ["secret"])
            narrow = s.derive(session.lane_cap, ("read", "take"), caveat={"lane": "jobs/*"})
            spawn = s.derive(s.cap("spawn") or "")
            p = s.spawn(parent, caps=[s.derive(session.tuples_device), narrow, spawn])
            await s.wait(p.ref)
            return got

    got = asyncio.run(main())
    assert got["tools"] == ["tuple_in", "tuple_rd", "tuple_scan"]  # no write: no tuple_out
    assert got["in"] == (["task"], False)
    assert got["other"][1] and "other" in got["other"][0]  # outside jobs/*: refused
    assert "widen" in got and "caveat" in got, got


# -- durability across a SIGKILLed server, and an LLM agent using the tuple tools --------------


@contextlib.asynccontextmanager
async def _killable(home: Path, mode: str, **extra: str) -> AsyncIterator[tuple[Client, int]]:
    """A stdio server whose pid we know (the shell execs it), and a client on it."""
    pidfile = home.parent / f"server-{time.monotonic_ns()}.pid"
    params = StdioServerParameters(
        command="/bin/sh",
        args=["-c", f'echo $$ > "{pidfile}"; exec "$0" -m yool server --stdio', sys.executable],
        env=server_env(home, **extra),
        cwd=str(home.parent),
    )
    async with Client(params, mode=mode) as client:
        yield client, int(pidfile.read_text())


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_a_durable_take_is_handed_over_once_even_when_the_server_is_sigkilled(
    tmp_path: Path, mode: str
) -> None:
    home = tmp_path / "home"

    async def first() -> Any:
        async with _killable(home, mode) as (c, pid):
            for i in (1, 2):
                await tool_result(c, "tuple_out", lane="jobs", tuple=["job", i], durable=True)
            took = await tool_result(c, "tuple_in", lane="jobs", template=["job", 1])
            # Another connection holds the write lock: the take of job 2 cannot be committed.
            blocker = sqlite3.connect(home / "yool.db", timeout=10, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            taking = asyncio.ensure_future(
                c.call_tool("tuple_in", {"lane": "jobs", "template": ["job", 2]})
            )
            await asyncio.sleep(0.5)
            handed = taking.done()
            os.kill(pid, signal.SIGKILL)  # dies with the take of job 2 not on disk
            blocker.execute("ROLLBACK")
            blocker.close()
            taking.cancel()
            await asyncio.gather(taking, return_exceptions=True)
            return took, handed

    took, handed = asyncio.run(first())
    assert took == {"tuple": ["job", 1]}
    assert not handed  # never handed to the client before its delete was on disk

    async def second() -> Any:
        async with _killable(home, mode) as (c, _):
            return await tool_result(c, "tuple_scan", lane="jobs", template=[None, None])

    # job 1 was taken and stays taken; job 2 was never handed out, so it is still there
    assert asyncio.run(second()) == {"tuples": [["job", 2]]}


def test_a_batch_task_running_when_the_server_is_sigkilled_runs_once_more_marked(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    marker = "summarise file 2"

    def respond(rec: Recorded) -> Turn:
        return Turn.say("summary of file 2, on the second start")

    def hang_first(rec: Recorded) -> Fault | None:  # the first start never gets an answer
        text = json.dumps(rec.body)
        return Fault(hang=True) if marker in text and RERUN_NOTE not in text else None

    fake = FakeProvider.start_in_thread(Script(respond=respond), fault_for=hang_first)
    env = on_fake_anthropic(fake.url, "sk-test-rerun")

    def seen() -> list[str]:
        return [
            json.dumps(r.body) for r in list(fake.fake.requests) if marker in json.dumps(r.body)
        ]

    async def first() -> dict[str, Any]:
        async with _killable(home, "auto", **env) as (c, pid):
            info = await tool_result(c, "batch_spawn", depth=1, branching=4)
            await tool_result(c, "tuple_out", lane=info["lane"], tuple=[2, marker])
            deadline = time.monotonic() + 20
            while not seen():  # its agent has started (so its claim is on disk)
                assert time.monotonic() < deadline, "the agent never called the model"
                await asyncio.sleep(0.05)
            os.kill(pid, signal.SIGKILL)
            return info

    async def second(info: dict[str, Any]) -> Any:
        async with _killable(home, "auto", **env) as (c, _):
            await tool_result(c, "batch_spawn", id=info["id"])
            got = await tool_result(c, "tuple_in", lane=info["out"], template=[None] * 4, wait_s=30)
            more = await tool_result(c, "tuple_in", lane=info["out"], template=[None] * 4, wait_s=1)
            left = await tool_result(c, "tuple_scan", lane=info["lane"], template=[None, None])
            return got, more, left

    try:
        info = asyncio.run(first())
        got, more, left = asyncio.run(second(info))
    finally:
        fake.stop()
    index, task, reason, answer = got["tuple"]
    assert (index, task) == (2, marker)
    assert reason == "normal" + RERUN_MARK  # honest: this was its second start
    assert answer == "summary of file 2, on the second start"
    assert more == {} and left == {"tuples": []}  # one result, nothing queued again
    starts = seen()
    assert len(starts) == 2 and RERUN_NOTE in starts[1]  # the agent was told, and ran twice


def _agents_script(rec: Recorded) -> Turn:
    """Agent A uses the tuple tools: it takes the test's tuple, then puts its own; agent B
    (spawned without them) tries to put one anyway."""
    text = json.dumps(rec.body)
    if "task-A" in text:
        if rec.position == 0:
            return Turn.say("", ("tuple_in", {"lane": "inbox", "template": ["hello", None]}))
        if rec.position == 1:
            return Turn.say("", ("tuple_out", {"lane": "outbox", "tuple": ["from A", 7]}))
        return Turn.say("A is done")
    if "task-B" in text:
        if rec.position == 0:
            return Turn.say("", ("tuple_out", {"lane": "outbox", "tuple": ["from B", 8]}))
        return Turn.say("B is done")
    return Turn.say("unexpected")


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_an_llm_agent_spawned_over_mcp_uses_the_tuple_tools_and_one_without_them_is_refused(
    tmp_path: Path, mode: str
) -> None:
    async def main() -> Any:
        async with FakeProvider(Script(respond=_agents_script)) as fake:
            env = on_fake_anthropic(fake.url, "sk-test-tuples")
            async with Client(stdio(tmp_path, **env), mode=mode) as c:
                await tool_result(c, "tuple_out", lane="inbox", tuple=["hello", 42])
                a = await tool_result(c, "spawn", task="task-A: trade tuples", tools=["tuples"])
                b = await tool_result(c, "spawn", task="task-B: try the lanes", tools=["files"])
                done = await tool_result(c, "wait", pids=[a["pid"], b["pid"]], timeout_s=30)
                inbox = await tool_result(c, "tuple_scan", lane="inbox", template=[None, None])
                outbox = await tool_result(c, "tuple_scan", lane="outbox", template=[None, None])
            results = {
                rec.position: json.dumps(rec.body)
                for rec in fake.requests
                if "task-A" in json.dumps(rec.body)
            }
            b_results = [
                json.dumps(rec.body)
                for rec in fake.requests
                if "task-B" in json.dumps(rec.body) and rec.position == 1
            ]
            return done, inbox, outbox, results, b_results

    done, inbox, outbox, a_seen, b_seen = asyncio.run(main())
    assert done["done"] and {x["reason"] for x in done["agents"]} == {"normal"}, done
    assert inbox == {"tuples": []}  # agent A consumed the tuple the test wrote...
    assert "hello" in a_seen[1] and "42" in a_seen[1]  # its tuple_in's result went to the model
    assert outbox == {"tuples": [["from A", 7]]}  # ...and the test sees the one it wrote
    assert b_seen and "no tool 'tuple_out'" in b_seen[0]  # B holds no lane capability
