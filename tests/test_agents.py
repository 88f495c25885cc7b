"""Agents: the ReAct loop and the conversation agent on a real kernel with a scripted LLM."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

from yool.drivers.files import FilesDriver
from yool.drivers.llm.scripted import ScriptedProvider, Turn, reply
from yool.drivers.llm.types import LLMRequest, LLMResponse, ToolSpec
from yool.drivers.tools import ToolsDriver
from yool.kernel import NORMAL, Budget, Cost, Driver, ExitReason, Handle, Kernel, Reply, Sys
from yool.userland.agents import AgentResult, AgentSpec, Answer, Ask, conversation_agent
from yool.userland.agents.react import STALL_NOTE, react_agent


class _LLMHandle(Handle):
    def __init__(self, driver: ScriptedLLM, pid: int) -> None:
        self.driver = driver
        self.pid = pid

    async def read(self, request: Any) -> Reply:
        resp = await self.driver.provider.complete(LLMRequest.from_json(request))
        return Reply(resp.to_json(), Cost(tokens=resp.usage.total))


class ScriptedLLM(Driver):
    """The LLM as a device, as the real driver does it, minus resilience and prices."""

    name = "llm"

    def __init__(self, provider: ScriptedProvider, kernel: Kernel) -> None:
        self.provider = provider
        self.kernel = kernel
        self.budgets: dict[int, Budget | None] = {}

    async def open(self, pid: int, params: dict[str, Any]) -> Handle:
        self.budgets[pid] = self.kernel.proc(pid).account.budget
        return _LLMHandle(self, pid)


def _spec(**kw: Any) -> AgentSpec:
    return AgentSpec(**kw)


async def _run(
    k: Kernel,
    devices: list[str],
    task: str,
    spec: AgentSpec,
    *,
    budget: Budget | None = None,
    spawn: bool = False,
) -> tuple[ExitReason, AgentResult | None]:
    """Spawn `react_agent` from a parent process; return its exit reason and AgentResult."""
    box: dict[str, Any] = {}

    async def parent(sys: Sys) -> None:
        reply_ref = sys.self_ref(("send",))
        caps = [c.ref for c in sys.caps("device")]
        if spawn:
            caps.append(sys.derive(sys.cap("spawn") or ""))
        child = sys.spawn(
            react_agent,
            task,
            replace(spec, reply_to=reply_ref),
            budget=budget,
            caps=[*caps, reply_ref],
        )
        box["reason"] = await sys.wait(child.ref)
        try:
            msg = await sys.recv(timeout=0, match=lambda b: isinstance(b, AgentResult))
            box["result"] = msg.body
        except TimeoutError:
            box["result"] = None

    handed = [k.init.derive(d) for d in devices]
    handed.append(k.init.derive(k.init.cap("spawn") or ""))
    c = k.init.spawn(parent, caps=handed)
    assert await asyncio.wait_for(k.wait(c.pid), 60) == NORMAL
    return box["reason"], box["result"]


def _tool_messages(request: LLMRequest) -> list[tuple[str | None, str]]:
    return [(m.tool_call_id, m.content) for m in request.messages if m.role == "tool"]


# --- the loop ------------------------------------------------------------------------------


def test_a_multi_step_tool_task_completes_and_reports_answer_steps_and_tokens(
    virtual: Any,
) -> None:
    async def main() -> None:
        async with Kernel() as k:
            provider = ScriptedProvider(
                [
                    reply("look up x", ("lookup", {"key": "x"})),
                    reply("", ("add", {"a": 2, "b": 3})),
                    reply("x is 7 and 2+3 is 5"),
                ]
            )
            llm = k.register_driver(ScriptedLLM(provider, k))
            tools = k.register_driver(
                ToolsDriver({"lookup": lambda key: {"x": 7}[key], "add": lambda a, b: a + b})
            )
            specs = (ToolSpec("lookup", "look a key up"), ToolSpec("add", "add two numbers"))
            reason, result = await _run(k, [llm, tools], "what is x?", _spec(tools=specs))
            assert reason == NORMAL
            assert result is not None
            assert result.answer == "x is 7 and 2+3 is 5"
            assert result.reason == "completed"
            assert result.steps == 3
            spent = sum(_usage(provider, r) for r in provider.calls)
            assert result.tokens == spent > 0
            last = provider.calls[-1]
            assert [c for _, c in _tool_messages(last)] == ["7", "5"]
            assert last.messages[0].content == "what is x?"

    virtual(main())


def _usage(provider: ScriptedProvider, request: LLMRequest) -> int:
    """What the scripted provider charged for `request` (its estimate, recomputed)."""
    from yool.kernel.context import estimate_tokens

    prompt = estimate_tokens(request.system) + sum(
        estimate_tokens(m.content) + 4 for m in request.messages
    )
    i = sum(1 for m in request.messages if m.role == "assistant")
    turn = provider._turns[min(i, len(provider._turns) - 1)]
    out = turn(request) if callable(turn) else turn
    out = reply(out) if isinstance(out, str) else out
    return prompt + estimate_tokens(out.text) + 8 * len(out.tool_calls)


def _fresh_call_each_step(request: LLMRequest) -> LLMResponse:
    if not request.tools:
        return reply("final, at the limit")
    n = sum(1 for m in request.messages if m.role == "assistant")
    return reply("", ("echo", {"n": n}))


def test_the_step_limit_grows_while_progressing_and_stops_at_the_ceiling(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            provider = ScriptedProvider([_fresh_call_each_step], loop=True)
            llm = k.register_driver(ScriptedLLM(provider, k))
            tools = k.register_driver(ToolsDriver({"echo": lambda n: n}))
            spec = _spec(tools=(ToolSpec("echo", "echo"),), base_steps=2, max_steps=5)
            reason, result = await _run(k, [llm, tools], "go", spec)
            assert reason == NORMAL and result is not None
            assert result.steps == 5  # past base_steps=2 (it grew), stopped at max_steps=5
            assert result.reason == "step_limit"
            assert result.answer == "final, at the limit"
            assert [bool(r.tools) for r in provider.calls] == [True] * 4 + [False]

    virtual(main())


def test_a_stall_forces_a_final_answer_without_tools(virtual: Any) -> None:
    runs: list[int] = []

    def probe(q: str) -> str:
        runs.append(1)
        return "nothing found"

    def same_call(request: LLMRequest) -> LLMResponse:
        if not request.tools:
            return reply("best guess: unknown")
        return reply("", ("probe", {"q": "same"}))

    async def main() -> None:
        async with Kernel() as k:
            provider = ScriptedProvider([same_call], loop=True)
            llm = k.register_driver(ScriptedLLM(provider, k))
            tools = k.register_driver(ToolsDriver({"probe": probe}))
            spec = _spec(tools=(ToolSpec("probe", "probe"),), stall_limit=2)
            reason, result = await _run(k, [llm, tools], "find it", spec)
            assert reason == NORMAL and result is not None
            assert result.reason == "stalled"
            assert result.answer == "best guess: unknown"
            # step 1 is fresh; steps 2 and 3 repeat it (reused, no progress); step 4 answers
            assert result.steps == 4
            assert len(runs) == 1
            assert not provider.calls[-1].tools
            assert provider.calls[-1].messages[-1].content == STALL_NOTE

    virtual(main())


def test_identical_calls_in_one_turn_run_once_and_every_call_id_is_answered(
    virtual: Any,
) -> None:
    runs: list[int] = []

    def count(x: int) -> int:
        runs.append(x)
        return x * 10

    async def main() -> None:
        async with Kernel() as k:
            first = reply("", ("count", {"x": 1}), ("count", {"x": 1}), ("count", {"x": 2}))
            provider = ScriptedProvider([first, reply("done")])
            llm = k.register_driver(ScriptedLLM(provider, k))
            tools = k.register_driver(ToolsDriver({"count": count}))
            reason, result = await _run(
                k, [llm, tools], "count", _spec(tools=(ToolSpec("count", "c"),))
            )
            assert reason == NORMAL and result is not None and result.answer == "done"
            assert sorted(runs) == [1, 2]
            answered = _tool_messages(provider.calls[-1])
            assert answered == [(c.id, str(c.arguments["x"] * 10)) for c in first.tool_calls]

    virtual(main())


def test_the_calls_of_one_turn_run_concurrently_with_results_in_call_order(
    virtual: Any,
) -> None:
    spans: list[tuple[float, float]] = []

    async def slow(name: str, s: float) -> str:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(s)
        spans.append((t0, loop.time()))
        return name

    async def main() -> None:
        async with Kernel() as k:
            first = reply("", ("slow", {"name": "a", "s": 10}), ("slow", {"name": "b", "s": 5}))
            provider = ScriptedProvider([first, reply("both")])
            llm = k.register_driver(ScriptedLLM(provider, k))
            tools = k.register_driver(ToolsDriver({"slow": slow}))
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            reason, result = await _run(
                k, [llm, tools], "wait", _spec(tools=(ToolSpec("slow", "s"),))
            )
            assert reason == NORMAL and result is not None
            assert loop.time() - t0 < 11  # 10 s and 5 s side by side, not 15 s
            assert len(spans) == 2 and spans[0][0] == spans[1][0]
            assert [c for _, c in _tool_messages(provider.calls[-1])] == ["a", "b"]

    virtual(main())


def test_long_tool_results_are_capped_with_a_marker(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            provider = ScriptedProvider([reply("", ("big", {})), reply("ok")])
            llm = k.register_driver(ScriptedLLM(provider, k))
            tools = k.register_driver(ToolsDriver({"big": lambda: "x" * 500}))
            spec = _spec(tools=(ToolSpec("big", "b"),), max_tool_chars=100)
            await _run(k, [llm, tools], "go", spec)
            [(_, content)] = _tool_messages(provider.calls[-1])
            assert content.startswith("x" * 100) and "x" * 101 not in content
            assert content.endswith("[truncated 400 chars]")

    virtual(main())


def test_a_token_budget_stops_the_agent_with_quota_tokens(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            provider = ScriptedProvider([_fresh_call_each_step], loop=True)
            llm = k.register_driver(ScriptedLLM(provider, k))
            tools = k.register_driver(ToolsDriver({"echo": lambda n: "y" * 200}))
            spec = _spec(tools=(ToolSpec("echo", "echo"),), max_steps=50)
            reason, result = await _run(k, [llm, tools], "go", spec, budget=Budget(tokens=400))
            assert str(reason) == "quota(tokens)"
            assert result is not None
            assert result.reason == "quota(tokens)" and result.reason != "completed"
            assert 0 < result.steps < 50

    virtual(main())


# --- files and delegation -----------------------------------------------------------------


def _tree(tmp: Path) -> Path:
    root = tmp / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "secret.txt").write_text("the secret is 42\n")
    (root / "top.txt").write_text("top level\n")
    (tmp / "outside.txt").write_text("private\n")
    (root / "sub" / "escape").symlink_to(tmp / "outside.txt")
    return root


def test_an_agent_cannot_read_outside_its_granted_paths_nor_write_read_only(
    virtual: Any, tmp_path: Path
) -> None:
    root = _tree(tmp_path)

    async def main() -> None:
        async with Kernel() as k:
            first = reply(
                "",
                ("read_file", {"path": "../outside.txt"}),
                ("read_file", {"path": str(tmp_path / "outside.txt")}),
                ("read_file", {"path": "sub/escape"}),
                ("read_file", {"path": "sub/secret.txt"}),
                ("write_file", {"path": "new.txt", "content": "x"}),
            )
            provider = ScriptedProvider([first, reply("done")])
            llm = k.register_driver(ScriptedLLM(provider, k))
            files = k.register_driver(FilesDriver({root: "r"}))
            reason, result = await _run(k, [llm, files], "read", _spec())
            assert reason == NORMAL and result is not None
            tools = {t.name for t in provider.calls[0].tools}
            assert tools == {"read_file", "list_files", "search_files"}  # no write_file
            last = provider.calls[-1]
            errors = [m.is_error for m in last.messages if m.role == "tool"]
            contents = [c for _, c in _tool_messages(last)]
            assert errors == [True, True, True, False, True]
            assert "'..' is not allowed" in contents[0]
            assert "outside the granted root" in contents[1]
            assert "outside the granted root" in contents[2]
            assert contents[3] == "the secret is 42\n"
            assert "no tool 'write_file'" in contents[4]
            assert not (root / "new.txt").exists()

    virtual(main())


def _by_task(request: LLMRequest) -> str:
    return request.messages[0].content if request.messages else ""


def test_delegation_spawns_a_child_with_narrowed_caps_and_budget_and_uses_its_result(
    virtual: Any, tmp_path: Path
) -> None:
    root = _tree(tmp_path)
    child_tools: list[set[str]] = []

    def turn(request: LLMRequest) -> LLMResponse:
        done = sum(1 for m in request.messages if m.role == "assistant")
        if _by_task(request) == "find the secret":  # the child
            child_tools.append({t.name for t in request.tools})
            if done == 0:
                return reply(
                    "",
                    ("read_file", {"path": "secret.txt"}),
                    ("read_file", {"path": str(root / "top.txt")}),
                )
            return reply("42")
        if done == 0:
            sub = {"path": "sub", "mode": "r"}
            return reply("", ("delegate", {"task": "find the secret", "paths": [sub]}))
        return reply("The sub-agent says: 42")

    async def main() -> None:
        async with Kernel() as k:
            provider = ScriptedProvider([turn], loop=True)
            driver = ScriptedLLM(provider, k)
            llm = k.register_driver(driver)
            files = k.register_driver(FilesDriver({root: "rw"}))
            reason, result = await _run(
                k,
                [llm, files],
                "what is the secret?",
                _spec(),
                budget=Budget(tokens=10_000),
                spawn=True,
            )
            assert reason == NORMAL and result is not None
            assert result.answer == "The sub-agent says: 42"
            assert result.reason == "completed"
            parent_tools = {t.name for t in provider.calls[0].tools}
            assert {"write_file", "delegate"} <= parent_tools
            assert child_tools[0] == {"read_file", "list_files", "search_files", "delegate"}
            child_seen = [r for r in provider.calls if _by_task(r) == "find the secret"][-1]
            contents = [c for _, c in _tool_messages(child_seen)]
            assert contents[0] == "the secret is 42\n"
            assert "outside the granted root" in contents[1]  # top.txt is outside sub/
            [delegated] = _tool_messages(
                [r for r in provider.calls if _by_task(r) != "find the secret"][-1]
            )
            assert '"answer": "42"' in delegated[1]
            budgets = list(driver.budgets.values())
            assert budgets[0] is not None and budgets[0].tokens == 10_000
            assert budgets[1] is not None and budgets[1].tokens is not None
            assert 0 < budgets[1].tokens <= 5_000  # at most half of what the parent had left
            assert result.tokens == sum(_usage(provider, r) for r in provider.calls)

    virtual(main())


# --- the conversation agent ---------------------------------------------------------------


def test_the_conversation_agent_answers_several_asks_and_keeps_context(virtual: Any) -> None:
    def second(request: LLMRequest) -> str:
        said = " ".join(m.content for m in request.messages)
        return "Your name is Ada" if "My name is Ada" in said else "I don't know"

    turns: list[Turn] = [reply("Nice to meet you, Ada"), second]

    async def main() -> None:
        async with Kernel() as k:
            provider = ScriptedProvider(turns)
            llm = k.register_driver(ScriptedLLM(provider, k))
            answers: list[Answer] = []

            async def user(sys: Sys) -> None:
                agent = sys.spawn(conversation_agent, caps=[sys.cap("device") or ""])
                for text in ("My name is Ada", "What is my name?"):
                    me = sys.self_ref(("send",))
                    await sys.send(agent.ref, Ask(text, me), caps=(me,))
                    answers.append((await sys.recv(timeout=30)).body)
                sys.term(agent.ref)
                assert await sys.wait(agent.ref) == NORMAL

            handed = [k.init.derive(llm), k.init.derive(k.init.cap("spawn") or "")]
            c = k.init.spawn(user, caps=handed)
            assert await asyncio.wait_for(k.wait(c.pid), 60) == NORMAL
            assert [a.text for a in answers] == ["Nice to meet you, Ada", "Your name is Ada"]
            assert all(a.reason == "completed" and a.steps == 1 for a in answers)
            assert answers[1].tokens > answers[0].tokens > 0

    virtual(main())
