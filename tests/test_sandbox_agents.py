"""Sub-agents run code through a capability: the "code" tool group and `run_code`.

Real sessions and kernels, real zygotes, the real anthropic SDK pointed at the fake provider
on 127.0.0.1. Each test looks at the effect: what the model was shown, what the journal
holds, what was charged, how many runs the pool really made.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from yool.drivers.kv import KVDriver
from yool.drivers.llm.anthropic import AnthropicProvider
from yool.drivers.llm.driver import LLMDriver
from yool.drivers.sandbox import SandboxDriver
from yool.kernel import NORMAL, Kernel, Sys
from yool.policy import RuntimePolicy
from yool.sandbox import Config, Pool
from yool.sandbox.probe import probe
from yool.testing import FakeProvider, Recorded, Script, Turn
from yool.tools import OPERATIONS, Call, Session, load_all
from yool.userland.agents import AgentResult, AgentSpec, react_agent

load_all()

KEY = "sk-test-sandbox-agents"
LEVEL = max(probe().level, 0)


def _policy(tmp: Path) -> RuntimePolicy:
    return RuntimePolicy(home=tmp / "home", heartbeat_s=0.05, sandbox_level=LEVEL)


def _env(fake: FakeProvider) -> dict[str, str]:
    return {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": fake.url}


async def _op(session: Session, op: str, /, **args: Any) -> Any:
    return await OPERATIONS[op](Call(session), args)


async def _run(session: Session, **spawn: Any) -> Any:
    """Spawn an agent on the fake provider and wait for it; its status."""
    pid = (await _op(session, "spawn", provider="anthropic", **spawn)).pid
    done = await _op(session, "wait", pids=[pid], timeout_s=60)
    assert done.done, done
    return done.agents[0]


def _tools(rec: Recorded) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in rec.body.get("tools", [])}


def _results(rec: Recorded) -> list[str]:
    """The tool results in a recorded Anthropic request, in order."""
    return [
        str(b["content"])
        for m in rec.body["messages"]
        if isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "tool_result"
    ]


def _first_user(rec: Recorded) -> str:
    content = rec.body["messages"][0]["content"]
    return content if isinstance(content, str) else json.dumps(content)


def _run_code(code: str, **more: Any) -> Turn:
    return Turn.say("", ("run_code", {"code": code, **more}))


# -- run_code, journaled and charged ---------------------------------------------------------


def test_an_agent_with_code_runs_it_sees_the_output_and_the_run_is_journaled_and_charged(
    tmp_path: Path,
) -> None:
    code = "print(6 * 7)\nyool.kv_put('answer', 42)\nprint(yool.kv_get('answer'))"

    async def main() -> None:
        async with (
            FakeProvider([_run_code(code), Turn.say("it is 42")]) as fake,
            Session.open(_policy(tmp_path), workspace=tmp_path, environ=_env(fake)) as s,
        ):
            agent = await _run(s, task="compute", tools=["code", "kv"])
            assert (agent.reason, agent.answer) == ("normal", "it is 42")
            first, second = fake.requests
            spec = _tools(first)["run_code"]
            assert len(json.dumps(spec)) < 600  # small: it is in every request
            (shown,) = _results(second)
            assert json.loads(shown) == {
                "reason": "exited",
                "exit_code": 0,
                "stdout": "42\n42\n",
                "stderr": "",
            }
            assert s.sandbox_pool.runs == 1
            assert s.record(agent.pid).tool_calls == 1  # one run, one tool call
            assert s.usage()["tool_calls"] == 1  # and so to the session it hangs under
            store = s.kernel.store
            assert store is not None
            await store.aflush()
            journal = await store.read(lambda _c: store.journal(agent.pid))
            runs = [
                e.result
                for e in journal
                if isinstance(e.result, dict) and "layers" in (e.result.get("value") or {})
            ]
            assert len(runs) == 1
            assert runs[0]["cost"] == {"tokens": 0, "usd": 0.0, "tool_calls": 1}
            assert runs[0]["value"]["stdout"] == "42\n42\n"
            assert runs[0]["value"]["layers"][:2] == ["supervisor", "rlimits"]
            assert await s.kernel.store.akv_get("default", "answer") == 42

    asyncio.run(main())


def test_an_agent_without_code_has_no_run_code_tool_and_runs_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            FakeProvider([_run_code("print('pwned')"), Turn.say("could not")]) as fake,
            Session.open(_policy(tmp_path), workspace=tmp_path, environ=_env(fake)) as s,
        ):
            agent = await _run(s, task="try to run code", tools=["files", "kv", "delegate"])
            assert agent.reason == "normal"
            assert "run_code" not in _tools(fake.requests[0])
            (shown,) = _results(fake.requests[1])
            assert shown.startswith("error: no tool 'run_code'") and "pwned" not in shown
            assert s.sandbox_pool.runs == 0 and s.sandbox_pool.probe is None  # never started

    asyncio.run(main())


def test_an_agents_code_calls_back_only_what_its_tools_grant(tmp_path: Path) -> None:
    probe_code = (
        "for name, call in [('kv', lambda: yool.kv_get('k')),\n"
        "                   ('send', lambda: yool.send(1, 'hi')),\n"
        "                   ('lessons', lambda: yool.call('lesson_recall', query='x')),\n"
        "                   ('recall', lambda: yool.recall('compute'))]:\n"
        "    try:\n"
        "        call()\n"
        "        print(name, 'ok')\n"
        "    except Exception as e:\n"
        "        print(name, 'refused', e)\n"
    )

    async def main() -> None:
        async with (
            FakeProvider([_run_code(probe_code), Turn.say("done")]) as fake,
            Session.open(_policy(tmp_path), workspace=tmp_path, environ=_env(fake)) as s,
        ):
            # The session itself may call every one of them (code_run holds the whole device):
            whole = await _op(s, "code_run", code=probe_code)
            assert [line.split()[:2] for line in whole.stdout.splitlines()] == [
                ["kv", "ok"],
                ["send", "refused"],  # pid 1 is init: the session holds no send right to it
                ["lessons", "ok"],
                ["recall", "ok"],
            ]
            agent = await _run(s, task="compute", tools=["code"])
            assert agent.reason == "normal"
            out = json.loads(_results(fake.requests[1])[0])["stdout"].splitlines()
            refused = "refused lesson_recall: not allowed by this sandbox capability"
            assert out[0].startswith("kv refused kv_get: not allowed by this sandbox capability")
            assert out[1].startswith("send refused send: not allowed")
            assert out[2].startswith("lessons " + refused)
            assert out[3] == "recall ok"

    asyncio.run(main())


# -- delegation ----------------------------------------------------------------------------


def _by_task(replies: dict[str, list[Turn]]) -> Callable[[Recorded], Turn]:
    """Each agent walks its own list of turns, told apart by the words of its task."""

    def respond(rec: Recorded) -> Turn:
        task = _first_user(rec)
        for marker, turns in replies.items():
            if marker in task:
                return turns[min(rec.position, len(turns) - 1)]
        raise AssertionError(f"no script for {task[:80]!r}")

    return respond


def test_a_delegated_child_holds_the_code_capability_only_as_narrow_as_its_parents(
    tmp_path: Path,
) -> None:
    child_code = (
        "try:\n    yool.call('lesson_recall', query='x')\nexcept Exception as e:\n    print(e)"
    )
    script = Script(
        respond=_by_task(
            {
                "child-task": [_run_code(child_code), Turn.say("child saw it")],
                "parent-task": [
                    Turn.say("", ("delegate", {"task": "child-task: run the probe"})),
                    Turn.say("parent done"),
                ],
            }
        )
    )

    async def main() -> None:
        async with (
            FakeProvider(script) as fake,
            Session.open(_policy(tmp_path), workspace=tmp_path, environ=_env(fake)) as s,
        ):
            agent = await _run(s, task="parent-task", tools=["code", "delegate"])
            assert (agent.reason, agent.answer) == ("normal", "parent done")
            child = [r for r in fake.requests if "child-task" in _first_user(r)]
            assert "run_code" in _tools(child[0])  # the child got the group...
            shown = json.loads(_results(child[1])[0])["stdout"]
            # ...with the parent's narrowing: the session's own capability allows lessons.
            assert shown.startswith("lesson_recall: not allowed by this sandbox capability")
            assert s.sandbox_pool.runs == 1

    asyncio.run(main())


async def _holder(
    sys: Sys, task: str, spec: AgentSpec, box: dict[str, Any], caveat: dict[str, Any]
) -> None:
    """A process that narrows its sandbox capability, then runs an agent holding it."""
    caps = []
    for c in sys.caps("device"):
        caps.append(sys.derive(c.ref, caveat=caveat) if c.target == "sandbox" else c.ref)
    reply = sys.self_ref(("send",))
    spawn = sys.cap("spawn")
    assert spawn is not None
    child = sys.spawn(
        react_agent, task, replace(spec, reply_to=reply), caps=[*caps, sys.derive(spawn), reply]
    )
    box["reason"] = await sys.wait(child.ref)
    box["result"] = (await sys.recv(timeout=0, match=lambda b: isinstance(b, AgentResult))).body


def test_a_child_of_an_agent_without_subprocesses_gets_no_sh_and_no_longer_timeout(
    real: Any,
) -> None:
    slow = "import time\ntime.sleep(20)"
    script = Script(
        respond=_by_task(
            {
                "child-task": [
                    _run_code("echo widened", lang="sh"),
                    _run_code(slow, timeout_s=600),
                    Turn.say("child done"),
                ],
                "parent-task": [
                    Turn.say("", ("delegate", {"task": "child-task"})),
                    Turn.say("parent done"),
                ],
            }
        )
    )

    async def main() -> None:
        async with FakeProvider(script) as fake, Kernel() as k:
            pool = Pool(Config(level=LEVEL, zygotes=1))
            provider = AnthropicProvider(api_key=KEY, base_url=fake.url)
            policy = RuntimePolicy(model="fake-model")
            devices = [
                k.register_driver(LLMDriver(provider, policy)),
                k.register_driver(SandboxDriver(pool, k)),
                k.register_driver(KVDriver()),
            ]
            spawn = k.init.cap("spawn")
            assert spawn is not None
            box: dict[str, Any] = {}
            caveat = {"subprocess": False, "timeout_s": 1.0}
            p = k.init.spawn(
                _holder,
                "parent-task",
                AgentSpec(max_tokens=64),
                box,
                caveat,
                caps=[*(k.init.derive(d) for d in devices), k.init.derive(spawn)],
            )
            try:
                assert await asyncio.wait_for(k.wait(p.pid), 60) == NORMAL
            finally:
                await pool.close()
            assert box["reason"] == NORMAL and box["result"].answer == "parent done"
            child = [r for r in fake.requests if "child-task" in _first_user(r)]
            spec = _tools(child[0])["run_code"]
            assert "lang" not in spec["input_schema"]["properties"]  # no sh on offer
            assert "Run Python in a sandbox" in spec["description"]
            sh, timed = _results(child[2])
            assert sh == "error: sandbox: this capability does not allow subprocesses (or sh)"
            ran = json.loads(timed)
            assert ran["reason"] == "timeout", ran  # the parent's 1 s, not the asked 600 s
            assert pool.runs == 1  # the refused sh never reached a zygote

    real(main())


# -- replay --------------------------------------------------------------------------------


def test_replaying_an_agent_that_ran_code_answers_the_run_from_the_journal(
    tmp_path: Path,
) -> None:
    code = "import random\nprint(random.random())"  # a second real run would differ

    async def first() -> tuple[int, str, int]:
        async with (
            FakeProvider([_run_code(code), Turn.say("drew a number")]) as fake,
            Session.open(_policy(tmp_path), workspace=tmp_path, environ=_env(fake)) as s,
        ):
            agent = await _run(s, task="draw", tools=["code"])
            assert agent.reason == "normal"
            drawn = json.loads(_results(fake.requests[1])[0])["stdout"]
            assert s.sandbox_pool.runs == 1
            return agent.pid, drawn, fake.count()

    async def again(pid: int) -> tuple[Any, Any, int, Any]:
        async with (
            FakeProvider([Turn.say("never asked")]) as fake,
            Session.open(_policy(tmp_path), workspace=tmp_path, environ=_env(fake)) as s,
        ):
            rerun = await _op(s, "replay", pid=pid)
            done = await _op(s, "wait", pids=[rerun.pid], timeout_s=30)
            store = s.kernel.store
            assert store is not None
            await store.aflush()
            journal = await store.read(lambda _c: store.journal(rerun.pid))
            pool = s.sandbox_pool
            return done.agents[0], journal, fake.count(), (pool.runs, pool.probe)

    pid, drawn, asked = asyncio.run(first())
    assert asked == 2
    agent, journal, asked_again, (runs, started) = asyncio.run(again(pid))
    assert (agent.reason, agent.answer) == ("normal", "drew a number")
    assert agent.origin == {"replayed": pid}
    assert asked_again == 0  # no provider call...
    assert (runs, started) == (0, None)  # ...and no sandbox: the pool never even started
    replayed = [e.result["value"] for e in journal if "layers" in (e.result or {}).get("value", {})]
    assert [r["stdout"] for r in replayed] == [drawn]  # the very number of the first run
