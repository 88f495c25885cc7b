"""Agents outlive their server: the MCP acceptance test, over stdio, in both protocol eras.

A real `yool server --stdio` subprocess, driven by the real MCP SDK client, runs agents
against the fake Anthropic provider on 127.0.0.1. The first server ends three agents
honestly (killed, over budget, normal) and is SIGKILLed while a fourth is mid-run; a second
server on the same `YOOL_HOME` lists it interrupted, resumes it without re-sending its
journaled steps, replays a finished agent with no provider call, and forks one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from stdio_servers import tool_error, tool_result
from yool.testing import FakeProvider, Fault, Recorded, Script, Turn
from yool.testing.fake_provider import ThreadedFakeProvider

LATENCY = 0.04  # seconds per fake reply
D_STEPS = 7  # the durable agent: 6 file reads, then its answer
D_JOURNALED = 3  # its replies before the first server dies: the next one is slow to come
D_SLOW = 0.5
INSTRUCTION = "FORK-NOTE: answer in one word."


def _respond(rec: Recorded) -> Turn:
    """Each agent's script, picked by the marker in its task; the step is the position."""
    text = json.dumps(rec.body)
    pos = rec.position
    read = ("read_file", {"path": f"f{pos}.txt"})  # a fresh read each step: progress
    if "task-Q" in text:
        return Turn.say("", read, usage=(2500, 100))
    if "task-K" in text:
        return Turn.say("", read)
    if "task-C" in text:
        return Turn.say("", read) if pos == 0 else Turn.say("C says 42")
    if "task-D" in text:
        return Turn.say("", read) if pos < D_STEPS - 1 else Turn.say("D is done")
    return Turn.say("unexpected")


def _slow_d(slow: dict[str, bool]) -> Callable[[Recorded], Fault | None]:
    """While `slow["D"]`, the durable agent's replies after its third take D_SLOW seconds."""

    def fault_for(rec: Recorded) -> Fault | None:
        if slow["D"] and rec.position >= D_JOURNALED and "task-D" in json.dumps(rec.body):
            return Fault.delay(D_SLOW)
        return None

    return fault_for


def _requests(fake: ThreadedFakeProvider, marker: str) -> list[Recorded]:
    return [r for r in list(fake.fake.requests) if marker in json.dumps(r.body)]


@contextlib.asynccontextmanager
async def _server(ws: Path, env: dict[str, str], mode: Any) -> AsyncIterator[tuple[Client, int]]:
    """A stdio server whose pid we know (the shell execs it), and a client on it."""
    pidfile = ws.parent / f"server-{time.monotonic_ns()}.pid"
    params = StdioServerParameters(
        command="/bin/sh",
        args=["-c", f'echo $$ > "{pidfile}"; exec "$0" -m yool server --stdio', sys.executable],
        env=env,
        cwd=str(ws),
    )
    async with Client(params, mode=mode) as client:
        yield client, int(pidfile.read_text())


async def _wait(client: Client, pid: int) -> dict[str, Any]:
    done = await tool_result(client, "wait", pids=[pid], timeout_s=20)
    assert done["done"], done
    agent = done["agents"][0]
    assert isinstance(agent, dict)
    return agent


async def _first_run(client: Client, server_pid: int) -> dict[str, int]:
    """Three honest exits, then SIGKILL while the durable agent is mid-run."""
    files = {"tools": ["files"]}
    k = (await tool_result(client, "spawn", task="task-K: read forever", **files))["pid"]
    q = await tool_result(client, "spawn", task="task-Q: read a lot", budget_tokens=3000, **files)
    c = (await tool_result(client, "spawn", task="task-C: what is it?", **files))["pid"]
    pids = {"K": k, "Q": q["pid"], "C": c}

    notes: list[str] = []

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append(message or "")

    r = await client.call_tool("wait", {"pids": [k], "timeout_s": 0.3}, progress_callback=progress)
    waited = r.structured_content
    assert waited is not None and waited["timed_out"] and not waited["done"], waited
    assert waited["agents"][0]["status"] == "running"
    assert len(notes) >= 2 and all("0/1 ended" in n for n in notes), notes  # heartbeats

    waited = await tool_result(client, "wait", pids=[pids["Q"], c], timeout_s=20)
    assert waited["done"], waited
    by_pid = {a["pid"]: a for a in waited["agents"]}
    assert by_pid[pids["Q"]]["reason"] == "quota(tokens)"
    assert by_pid[pids["Q"]]["result"] == "quota(tokens)"
    assert by_pid[c]["reason"] == "normal"
    assert by_pid[c]["answer"] == "C says 42"

    session_pid = (await tool_result(client, "ps"))["session"]["pid"]
    await tool_result(client, "signal", pid=k, signal="kill")
    assert (await _wait(client, k))["reason"] == f"killed(by={session_pid})"

    d = (await tool_result(client, "spawn", task="task-D: read them all", **files))["pid"]
    pids["D"] = d
    deadline = time.monotonic() + 10
    while True:  # its first replies journaled (the transcript follows the journal entry)
        row = next(a for a in (await tool_result(client, "ps"))["agents"] if a["pid"] == d)
        assert row["status"] == "running", row
        if row["steps"] >= D_JOURNALED:
            break
        assert time.monotonic() < deadline, row
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)  # the store's writer commits within milliseconds
    os.kill(server_pid, signal.SIGKILL)
    return pids


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_agents_survive_a_killed_server_and_resume_replay_and_fork_from_their_journal(
    tmp_path: Path, mode: str
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    for i in range(64):
        (ws / f"f{i}.txt").write_text(f"file {i}\n")
    slow = {"D": True}
    fake = FakeProvider.start_in_thread(
        Script(respond=_respond), latency=LATENCY, fault_for=_slow_d(slow)
    )
    env = {
        **os.environ,
        "YOOL_HOME": str(tmp_path / "home"),
        "YOOL_HEARTBEAT_S": "0.05",
        "YOOL_PROVIDER": "anthropic",
        "ANTHROPIC_API_KEY": "sk-test",
        "ANTHROPIC_BASE_URL": fake.url,
    }

    async def main() -> None:
        async with _server(ws, env, mode) as (client, server_pid):
            pids = await _first_run(client, server_pid)
        d = pids["D"]
        slow["D"] = False

        async with _server(ws, env, mode) as (client, _):
            rows = {a["pid"]: a for a in (await tool_result(client, "ps", all=True))["agents"]}
            assert rows[d]["status"] == "interrupted"
            assert rows[d]["reason"] == "interrupted"
            assert rows[pids["C"]]["reason"] == "normal"
            assert rows[pids["Q"]]["reason"] == "quota(tokens)"
            assert rows[pids["K"]]["reason"].startswith("killed(by=")
            journaled = rows[d]["steps"]  # counted from its journal
            assert journaled == D_JOURNALED

            # resume: the journaled steps are answered from the journal, the rest go live
            before = len(_requests(fake, "task-D"))
            resumed = await tool_result(client, "resume", pid=d)
            assert resumed["journaled"] == journaled and resumed["origin"] == d
            agent = await _wait(client, resumed["pid"])
            assert (agent["reason"], agent["answer"]) == ("normal", "D is done")
            assert agent["origin"] == {"resumed": d} and agent["steps"] == D_STEPS
            live = [r.position for r in _requests(fake, "task-D")[before:]]
            assert live == list(range(journaled, D_STEPS))  # none of the first `journaled`
            assert "was resumed as" in await tool_error(client, "resume", pid=d)
            assert "pid: no agent 999999" in await tool_error(client, "resume", pid=999999)
            assert "use replay or fork" in await tool_error(client, "resume", pid=pids["C"])

            # replay: the whole run from the journal, not one request at the provider
            sent = fake.fake.count()
            again = await tool_result(client, "replay", pid=pids["C"])
            agent = await _wait(client, again["pid"])
            assert (agent["reason"], agent["answer"]) == ("normal", "C says 42")
            assert fake.fake.count() == sent

            # fork: two steps from the journal, then live with the new instruction
            before = len(_requests(fake, "task-D"))
            forked = await tool_result(
                client, "fork", pid=resumed["pid"], steps=2, instruction=INSTRUCTION
            )
            agent = await _wait(client, forked["pid"])
            assert (agent["reason"], agent["answer"]) == ("normal", "D is done")
            new = _requests(fake, "task-D")[before:]
            assert [r.position for r in new] == list(range(2, D_STEPS))
            assert all(INSTRUCTION in json.dumps(r.body) for r in new)
            assert "steps: agent" in await tool_error(client, "fork", pid=pids["C"], steps=2)

            # a live agent is neither resumed nor replayed
            busy = (await tool_result(client, "spawn", task="task-K: again", tools=["files"]))[
                "pid"
            ]
            assert "is running" in await tool_error(client, "resume", pid=busy)
            assert "once it ends" in await tool_error(client, "replay", pid=busy)
            await tool_result(client, "signal", pid=busy, signal="kill")

            # an agent refused before its first request has nothing to run from
            broke = await tool_result(client, "spawn", task="task-Q: too poor", budget_tokens=1)
            assert (await _wait(client, broke["pid"]))["reason"] == "quota(tokens)"
            assert "no journaled LLM step" in await tool_error(client, "replay", pid=broke["pid"])

    try:
        asyncio.run(main())
    finally:
        fake.stop()
