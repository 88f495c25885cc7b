"""The session as a process: agents hang under it, draw from its budget, and get only the
capabilities they were granted. Operations are called straight from the table."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from yool.drivers.llm.types import LLMRequest, LLMResponse
from yool.kernel import INIT
from yool.kernel.reasons import killed
from yool.policy import RuntimePolicy
from yool.tools import OPERATIONS, Call, OpError, Session, load_all

load_all()


def run(tmp_path: Path, body: Any, **policy: Any) -> Any:
    async def main() -> Any:
        pol = RuntimePolicy(home=tmp_path / "home", heartbeat_s=0.05, **policy)
        async with Session.open(pol, workspace=tmp_path, environ={}) as session:
            return await body(session, Call(session))

    return asyncio.run(main())


async def op(call: Call, name: str, **args: Any) -> Any:
    return await OPERATIONS[name](call, args)


def test_the_session_is_a_process_under_init_and_agents_are_its_children(tmp_path: Path) -> None:
    async def body(session: Session, call: Call) -> None:
        spawned = await op(call, "spawn", task="hello")
        assert session.kernel.procs[session.pid].parent == INIT
        assert session.kernel.procs[spawned.pid].parent == session.pid
        await op(call, "wait", pids=[spawned.pid], timeout_s=5)

    run(tmp_path, body)


def test_agents_together_can_never_spend_past_the_sessions_budget(tmp_path: Path) -> None:
    async def body(session: Session, call: Call) -> list[Any]:
        pids = [(await op(call, "spawn", task=f"task {i} " * 50)).pid for i in range(6)]
        waited = await op(call, "wait", pids=pids, timeout_s=10)
        return [waited.agents, session.usage()]

    agents, used = run(tmp_path, body, budget_tokens=600)
    reasons = [a.reason for a in agents]
    assert "quota(tokens)" in reasons  # the session's budget stopped some of them
    # each call reserves its estimate first, so the session ends at most one call over
    assert used["tokens"] <= 600 + 1100


def test_a_killed_agent_says_who_killed_it_and_stop_cont_report_the_state(tmp_path: Path) -> None:
    async def slow(request: LLMRequest) -> LLMResponse:
        await asyncio.sleep(0.05)
        from yool.drivers.llm.scripted import reply

        return reply("", ("list_files", {"path": "."}))

    async def body(session: Session, call: Call) -> None:
        session.sampling.callback = slow  # a host model that never finishes the task
        spawned = await op(call, "spawn", task="loop", provider="sampling")
        stopped = await op(call, "signal", pid=spawned.pid, signal="stop")
        assert stopped.status == "stopped"
        resumed = await op(call, "signal", pid=spawned.pid, signal="cont")
        assert resumed.status == "running"
        await op(call, "signal", pid=spawned.pid, signal="kill")
        waited = await op(call, "wait", pids=[spawned.pid], timeout_s=5)
        assert waited.agents[0].reason == f"killed(by={session.pid})"
        with pytest.raises(OpError, match=f"pid: agent {spawned.pid} is not running"):
            await op(call, "signal", pid=spawned.pid, signal="kill")

    run(tmp_path, body)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"paths": ["/etc"]}, "paths: '/etc' is outside the workspace"),
        ({"paths": ["../.."]}, "paths: '../..' is outside the workspace"),
        ({"write_paths": ["nope"]}, "write_paths: 'nope' does not exist"),
        ({"tools": ["kv"], "write_paths": ["."]}, "write_paths: needs 'files' in tools"),
        ({"persona": "ghost"}, "persona: no persona named 'ghost'"),
        ({"provider": "gpt-9"}, "provider: unknown provider 'gpt-9'"),
        ({"provider": "anthropic"}, "ANTHROPIC_API_KEY"),
    ],
)
def test_a_bad_spawn_is_refused_naming_the_field_and_leaves_nothing_behind(
    tmp_path: Path, args: dict[str, Any], message: str
) -> None:
    async def body(session: Session, call: Call) -> None:
        session.llm_device(None)  # the policy's LLM device is made on first use; make it now
        caps_before = len(session.kernel.caps)
        with pytest.raises(OpError, match=message.replace("(", r"\(")):
            await op(call, "spawn", task="hi", **args)
        assert len(session.kernel.caps) == caps_before
        assert (await op(call, "ps")).agents == []

    run(tmp_path, body)


def test_granted_paths_confine_the_agents_files(tmp_path: Path) -> None:
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "a.txt").write_text("visible")
    (tmp_path / "closed.txt").write_text("secret")
    seen: list[str] = []

    async def host(request: LLMRequest) -> LLMResponse:
        from yool.drivers.llm.scripted import reply

        tool_turns = [m for m in request.messages if m.role == "tool"]
        if not tool_turns:
            return reply("", ("read_file", {"path": "../closed.txt"}), ("list_files", {}))
        seen.extend(m.content for m in tool_turns)
        return reply("done")

    async def body(session: Session, call: Call) -> None:
        session.sampling.callback = host
        spawned = await op(call, "spawn", task="look", provider="sampling", paths=["open"])
        await op(call, "wait", pids=[spawned.pid], timeout_s=5)

    run(tmp_path, body)
    assert any("a.txt" in text for text in seen)
    assert not any("secret" in text for text in seen)


def test_kill_all_after_the_session_process_ended_is_a_no_op_not_an_exit(tmp_path: Path) -> None:
    from yool.tools.agents import kill_all

    async def body(session: Session, call: Call) -> None:
        spawned = await op(call, "spawn", task="hello")
        record = session.agents[spawned.pid]
        session.kernel.kill(session.pid, killed(INIT))
        await asyncio.sleep(0.05)
        assert session.kernel.procs.get(session.pid) is None or (
            session.kernel.procs[session.pid].reason is not None
        )
        kill_all(session, [record])  # the session is gone: nothing to send a kill from

    run(tmp_path, body)
