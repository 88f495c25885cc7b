"""The kernel operations (trace, inspect, snapshot, restore), teams and fan-outs, resources.

Operations are called in-process through the operations table on a real `Session` (SQLite
store in a tmp `YOOL_HOME`); agents think with the scripted provider, or with the fake
Anthropic provider on 127.0.0.1 when they must stay mid-request (a hung reply) while the
test acts. Resources are read through the real MCP SDK client, in both protocol eras.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.client import Client
from mcp.shared.exceptions import MCPError

from yool.policy import RuntimePolicy
from yool.server.mcp import build
from yool.testing import FakeProvider, Fault, Recorded, Turn
from yool.tools import OPERATIONS, Call, OpError, Session, load_all
from yool.tools import resources as views

load_all()

KEY = "sk-test-ops"


def _policy(tmp: Path) -> RuntimePolicy:
    return RuntimePolicy(home=tmp / "home", heartbeat_s=0.05)


def _workspace(tmp: Path) -> Path:
    ws = tmp / "ws"
    ws.mkdir(exist_ok=True)
    (ws / "notes.txt").write_text("hello\n")
    return ws


def _env(fake: FakeProvider) -> dict[str, str]:
    return {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": fake.url}


async def _op(session: Session, op: str, progress: Any = None, /, **args: Any) -> Any:
    call = Call(session) if progress is None else Call(session, progress)
    return await OPERATIONS[op](call, args)


async def _until(check: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polling session state is the point
            await asyncio.sleep(0.01)


def _hang(marker: str) -> Callable[[Recorded], Fault | None]:
    """Requests whose body holds `marker` hang: the agent stays mid-request until killed."""
    return lambda rec: Fault.timeout() if marker in json.dumps(rec.body) else None


# -- trace, inspect -------------------------------------------------------------------------


def test_trace_filters_caps_text_and_reads_an_earlier_runs_events_from_the_store(
    tmp_path: Path,
) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)
    task = "trace-me " + "x" * 2000

    async def first() -> tuple[int, list[dict[str, Any]]]:
        async with Session.open(pol, workspace=ws, environ={}) as s:
            pid = (await _op(s, "spawn", task=task)).pid
            assert (await _op(s, "wait", pids=[pid], timeout_s=10)).done
            t = await _op(s, "trace", pid=pid)
            assert t.source == "ring"
            kinds = [e["kind"] for e in t.events]
            assert kinds[0] == "spawn" and kinds[-1] == "exit" and "log" in kinds
            assert {e["pid"] for e in t.events} == {pid}
            exits = await _op(s, "trace", pid=pid, kinds=["exit"])
            assert [e["kind"] for e in exits.events] == ["exit"]
            turns = [e for e in t.events if e["kind"] == "log"]
            assert turns[0]["data"]["text"].startswith("trace-me")
            assert len(turns[0]["data"]["text"]) <= 501  # capped
            assert len((await _op(s, "trace", n=3)).events) == 3
            return pid, t.events

    async def second(pid: int) -> tuple[Any, dict[str, Any], Any]:
        async with Session.open(pol, workspace=ws, environ={}) as s:
            t = await _op(s, "trace", pid=pid)
            transcript = await views.transcript_view(s, pid)
            return t, transcript, await _op(s, "inspect", pid=pid)

    pid, live = asyncio.run(first())
    t, transcript, inspected = asyncio.run(second(pid))
    assert t.source == "store"
    assert [e["seq"] for e in t.events] == [e["seq"] for e in live]
    assert transcript["source"] == "store"
    assert [turn["role"] for turn in transcript["turns"]] == ["user", "assistant"]
    assert transcript["turns"][1]["text"].startswith("Done: trace-me")
    assert len(transcript["turns"][0]["text"]) > 501  # the transcript keeps whole turns
    assert not inspected.live and inspected.reason == "normal"
    assert inspected.agent["status"] == "exited" and inspected.process["pid"] == pid


def test_inspect_shows_a_live_agents_caps_without_refs_and_names_an_unknown_pid(
    tmp_path: Path,
) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)

    async def main() -> None:
        async with (
            FakeProvider(fault_for=_hang("task-I")) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            pid = (await _op(s, "spawn", task="task-I", provider="anthropic")).pid
            await _until(lambda: fake.count() >= 1)
            seen = await _op(s, "inspect", pid=pid)
            assert seen.live and seen.agent["status"] == "running"
            kinds = sorted(c["kind"] for c in seen.process["caps"])
            assert kinds.count("device") >= 2  # the LLM and the workspace, at least
            text = json.dumps(seen.model_dump())
            assert s.live_ref(pid) not in text
            assert all(c.ref not in text for c in s.kernel.caps.held_by(pid))
            await _op(s, "signal", pid=pid, signal="kill")
            await _until(lambda: s.record(pid).status == "exited")
            dead = await _op(s, "inspect", pid=pid)
            assert not dead.live and dead.reason is not None and "killed" in dead.reason
            with pytest.raises(OpError, match="pid: no process 99999"):
                await _op(s, "inspect", pid=99999)

    asyncio.run(main())


# -- snapshot, restore ----------------------------------------------------------------------


def test_a_snapshotted_agent_restores_as_a_tracked_agent_that_carries_on_from_its_memory(
    tmp_path: Path,
) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)
    asked: list[int] = []

    def second_hangs(rec: Recorded) -> Fault | None:
        asked.append(1)
        return Fault.timeout() if len(asked) == 2 else None

    script = [Turn.say("", ("read_file", {"path": "notes.txt"})), Turn.say("restored answer")]

    async def main() -> None:
        async with (
            FakeProvider(script, fault_for=second_hangs) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            pid = (await _op(s, "spawn", task="task-S: read notes", provider="anthropic")).pid
            await _until(lambda: fake.count() >= 2)  # read the file, now mid-request
            snap = await _op(s, "snapshot", pid=pid)
            assert snap.agent and snap.snapshot_id.startswith("snap-")
            assert s.kernel.store is not None
            row = await s.kernel.store.asnapshot(snap.snapshot_id)
            assert row is not None and row.data["args"] == ["task-S: read notes"]
            assert len(row.data["context"]) == 3  # task, tool call, tool result
            assert s.live_ref(pid) not in json.dumps(row.data)
            await _op(s, "signal", pid=pid, signal="kill")
            await _until(lambda: s.record(pid).status == "exited")
            with pytest.raises(OpError, match=f"pid: process {pid} is not running"):
                await _op(s, "snapshot", pid=pid)

            restored = await _op(s, "restore", snapshot_id=snap.snapshot_id)
            assert restored.agent and restored.restored_from == pid
            assert restored.pid != pid
            kinds = [c.kind for c in s.kernel.caps.held_by(restored.pid)]
            assert kinds.count("device") >= 2  # re-granted: LLM and workspace
            done = await _op(s, "wait", pids=[restored.pid], timeout_s=10)
            agent = done.agents[0]
            assert (agent.reason, agent.answer) == ("normal", "restored answer")
            assert agent.origin == {"restored": pid, "snapshot": snap.snapshot_id}
            # It carried on: one more request, holding the task once and the file read.
            assert fake.count() == 3
            last = json.dumps(fake.requests[-1].body)
            assert last.count("task-S: read notes") == 1 and "hello" in last
            ps = await _op(s, "ps")
            assert restored.pid in [a.pid for a in ps.agents]
            with pytest.raises(OpError, match="snapshot_id: no snapshot 'snap-nope'"):
                await _op(s, "restore", snapshot_id="snap-nope")

    asyncio.run(main())


# -- supervise --------------------------------------------------------------------------------


def test_a_teams_answers_reach_the_session_and_ps_and_wait_see_the_team(tmp_path: Path) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)

    async def main() -> None:
        async with Session.open(pol, workspace=ws, environ={}) as s:
            team = await _op(
                s,
                "supervise",
                name="crew",
                agents=[{"id": "a", "task": "alpha job"}, {"id": "b", "task": "beta job"}],
            )
            assert set(team.children) == {"a", "b"}
            pids = list(team.children.values())
            done = await _op(s, "wait", pids=pids, timeout_s=10)
            assert done.done
            answers = {a.pid: a.answer for a in done.agents}
            assert answers == {team.children["a"]: "Done: alpha job", pids[1]: "Done: beta job"}
            assert all(a.reason == "normal" for a in done.agents)
            rows = {a.pid: a for a in (await _op(s, "ps")).agents}
            assert rows[team.pid].status == "running"  # transient children are not restarted
            assert rows[team.pid].origin == {"supervisor": "crew", "strategy": "one_for_one"}
            assert rows[pids[0]].origin == {"team": team.pid, "id": "a", "start": 1}
            await _op(s, "signal", pid=team.pid, signal="kill")
            stopped = await _op(s, "wait", pids=[team.pid], timeout_s=5)
            assert stopped.done and stopped.agents[0].reason is not None

    asyncio.run(main())


def test_a_killed_team_member_restarts_as_a_new_agent_and_killing_the_supervisor_ends_all(
    tmp_path: Path,
) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)

    async def main() -> None:
        async with (
            FakeProvider(fault_for=_hang("task-T")) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            team = await _op(
                s,
                "supervise",
                name="hangers",
                provider="anthropic",
                agents=[{"id": "a", "task": "task-T a"}, {"id": "b", "task": "task-T b"}],
            )
            first_a = team.children["a"]
            await _op(s, "signal", pid=first_a, signal="kill")

            def restarted() -> list[int]:
                return [
                    pid
                    for pid, r in s.agents.items()
                    if r.origin == {"team": team.pid, "id": "a", "start": 2}
                ]

            await _until(lambda: bool(restarted()))
            second_a = restarted()[0]
            assert s.record(second_a).status == "running" and second_a != first_a
            assert s.record(first_a).status == "exited"
            await _op(s, "signal", pid=team.pid, signal="kill")
            members = [second_a, team.children["b"]]
            done = await _op(s, "wait", pids=[team.pid, *members], timeout_s=5)
            assert done.done
            assert {p for p in s.kernel.procs} == {1, s.pid}  # init and the session

    asyncio.run(main())


def test_supervise_refuses_duplicate_ids_and_an_unknown_persona(tmp_path: Path) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)

    async def main() -> None:
        async with Session.open(pol, workspace=ws, environ={}) as s:
            twice = [{"id": "a", "task": "x"}, {"id": "a", "task": "y"}]
            with pytest.raises(OpError, match="agents: each agent needs its own id"):
                await _op(s, "supervise", name="t", agents=twice)
            with pytest.raises(OpError, match="persona: no persona named 'ghost'"):
                await _op(
                    s, "supervise", name="t", agents=[{"id": "a", "task": "x", "persona": "ghost"}]
                )
            assert s.agents == {}  # nothing was started

    asyncio.run(main())


# -- fanout -----------------------------------------------------------------------------------


def test_fanout_runs_every_task_at_bounded_concurrency_and_reports_progress(
    tmp_path: Path,
) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)
    progress: list[str] = []

    async def report(done: float, total: float | None, message: str) -> None:
        progress.append(message)

    async def main() -> tuple[Any, int]:
        async with (
            FakeProvider(["ok"], latency=0.1) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            out = await _op(
                s,
                "fanout",
                report,
                tasks=[f"job {i}" for i in range(5)],
                provider="anthropic",
                max_concurrency=2,
            )
            return out, fake.max_in_flight

    out, in_flight = asyncio.run(main())
    assert out.done and out.completed == 5
    assert [it["answer"] for it in out.items] == ["ok"] * 5
    assert len({it["pid"] for it in out.items}) == 5
    assert in_flight == 2
    assert progress and progress[-1].endswith("tasks ended")


def test_a_cancelled_fanout_kills_the_agents_it_started_and_starts_no_more(
    tmp_path: Path,
) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)

    async def main() -> None:
        async with (
            FakeProvider(fault_for=_hang("task-F")) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            op = asyncio.ensure_future(
                _op(
                    s,
                    "fanout",
                    tasks=[f"task-F {i}" for i in range(4)],
                    provider="anthropic",
                    max_concurrency=2,
                )
            )
            await _until(lambda: fake.count() >= 2)
            started = list(s.agents)
            assert len(started) == 2
            op.cancel()
            with pytest.raises(asyncio.CancelledError):
                await op
            await _until(lambda: all(s.record(p).status == "exited" for p in started))
            assert all("killed" in str(s.record(p).reason) for p in started)
            await asyncio.sleep(0.1)
            assert list(s.agents) == started  # the other two never started
            assert {p for p in s.kernel.procs} == {1, s.pid}

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_an_mcp_client_cancelling_a_fanout_leaves_no_agent_running(
    tmp_path: Path, mode: str
) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)

    async def main() -> list[dict[str, Any]]:
        async with FakeProvider(fault=Fault.timeout()) as fake:
            server = build(pol, workspace=ws, environ=_env(fake))
            async with Client(server, mode=mode) as c:
                args = {"tasks": ["a", "b", "c"], "provider": "anthropic", "max_concurrency": 2}
                with anyio.move_on_after(1.0) as scope:
                    await c.call_tool("fanout", args)
                assert scope.cancelled_caught and fake.count() == 2
                for _ in range(100):
                    ps = await c.call_tool("ps", {})
                    assert ps.structured_content is not None
                    agents: list[dict[str, Any]] = ps.structured_content["agents"]
                    if all(a["status"] == "exited" for a in agents):
                        break
                    await asyncio.sleep(0.02)
                return agents

    agents = asyncio.run(main())
    assert len(agents) == 2 and all("killed" in a["reason"] for a in agents)


# -- resources ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_resources_show_agents_transcripts_trace_and_metrics(tmp_path: Path, mode: str) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)

    async def main() -> None:
        server = build(pol, workspace=ws, environ={})
        async with Client(server, mode=mode) as c:
            spawned = await c.call_tool("spawn", {"task": "resource job"})
            assert spawned.structured_content is not None
            pid = spawned.structured_content["pid"]
            await c.call_tool("wait", {"pids": [pid], "timeout_s": 10})

            async def read(uri: str) -> tuple[str, str | None]:
                r = await c.read_resource(uri)
                content = r.contents[0]
                assert isinstance(content, types.TextResourceContents)
                return content.text, content.mime_type

            listed, mime = await read("yool://agents")
            assert mime == "application/json"
            assert [a["pid"] for a in json.loads(listed)["agents"]] == [pid]
            one = json.loads((await read(f"yool://agents/{pid}"))[0])
            assert (one["status"], one["answer"]) == ("exited", "Done: resource job")
            transcript = json.loads((await read(f"yool://agents/{pid}/transcript"))[0])
            assert [t["role"] for t in transcript["turns"]] == ["user", "assistant"]
            assert transcript["turns"][0]["text"] == "resource job"
            trace = json.loads((await read("yool://trace"))[0])
            assert any(e["kind"] == "exit" and e["pid"] == pid for e in trace["events"])
            metrics, mime = await read("yool://metrics")
            assert mime == "text/plain" and "yool_spawned_total" in metrics
            with pytest.raises(MCPError, match="pid: no agent 4242"):
                await c.read_resource("yool://agents/4242")
            with pytest.raises(MCPError, match="is not a pid"):
                await c.read_resource("yool://agents/abc/transcript")
            templates = await c.list_resource_templates()
            assert {t.uri_template for t in templates.resource_templates} == {
                "yool://agents/{pid}",
                "yool://agents/{pid}/transcript",
            }

    asyncio.run(main())
