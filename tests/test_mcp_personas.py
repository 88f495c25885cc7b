"""Personas over MCP: the acceptance test, through the real SDK client over stdio, both eras.

A real `python -m yool server --stdio` runs with a temporary workspace as its cwd, holding a
Claude Code sub-agent file `.claude/agents/x.md`; agents think with the fake Anthropic
provider on 127.0.0.1. The file shows up as persona `x` (a tool and an MCP prompt), can be
hired, and its prompt is what the hired agent was sent; personas saved or added while the
server runs are listed at once; bad requests get clear errors and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import mcp_types as types
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPError

from stdio_servers import on_fake_anthropic, stdio, tool_error, tool_result
from yool.personas.forge import FORGE_SYSTEM
from yool.testing import FakeProvider, Recorded, Script, Turn
from yool.testing.fake_provider import ThreadedFakeProvider

X_PROMPT = "X-PROMPT: you are x. Read the code, then answer in one line."
FORGED = (
    "You are a release engineer. Read the changelog and the version files first, tag only "
    "after the build passes, and report the tag you pushed."
)


def _reply(rec: Recorded) -> Turn:
    system = rec.body.get("system", "")
    if system == FORGE_SYSTEM:
        return Turn.say(f"Here is the system prompt:\n\n{FORGED}")
    if isinstance(system, str) and system.startswith("X-PROMPT"):
        return Turn.say("x did it")
    return Turn.say("someone else did it")


def _workspace(tmp: Path) -> Path:
    ws = tmp / "ws"
    agents = ws / ".claude" / "agents"
    agents.mkdir(parents=True)
    (agents / "x.md").write_text(
        "---\nname: x\ndescription: The x sub-agent, as Claude Code defines it\n"
        f"tools: Read, Grep, Glob, Bash\nmodel: haiku\n---\n{X_PROMPT}\n"
    )
    (agents / "broken.md").write_text("---\nname: broken\ntools: [Read\n---\nbody\n")
    (ws / "notes.txt").write_text("hello\n")
    return ws


def _params(ws: Path, home: Path, fake: ThreadedFakeProvider) -> StdioServerParameters:
    return stdio(home, cwd=ws, **on_fake_anthropic(fake.url, "sk-test-mcp-personas"))


def _texts(result: types.GetPromptResult) -> list[str]:
    out = []
    for message in result.messages:
        assert message.role == "user"
        assert isinstance(message.content, types.TextContent)
        out.append(message.content.text)
    return out


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_a_claude_agent_file_in_the_workspace_is_persona_x_listed_prompted_and_hired(
    tmp_path: Path, mode: str
) -> None:
    ws = _workspace(tmp_path)
    fake = FakeProvider.start_in_thread(Script(respond=_reply))

    async def main() -> None:
        async with Client(_params(ws, tmp_path / "home", fake), mode=mode) as c:
            # -- listed, as a tool result and as an MCP prompt
            listed = await tool_result(c, "persona_list")
            by_name = {p["name"]: p for p in listed["personas"]}
            x = by_name["x"]
            assert (x["source"], x["path"]) == ("claude", ".claude/agents/x.md")
            assert (x["tools"], x["model"]) == (["files", "code"], "haiku")  # Bash runs code
            assert "unavailable" not in x
            assert x["description"] == "The x sub-agent, as Claude Code defines it"
            assert {"reviewer", "test-writer", "researcher", "refactorer"} <= set(by_name)
            assert "broken" not in by_name
            (warning,) = listed["warnings"]
            assert warning.startswith(".claude/agents/broken.md: skipped: front matter is not")

            prompts = {p.name: p for p in (await c.list_prompts()).prompts}
            assert set(prompts) == set(by_name)
            assert prompts["x"].description == x["description"]
            assert [(a.name, a.required) for a in prompts["x"].arguments or []] == [("task", False)]

            # -- hired: the agent runs under x's prompt, on the model x asked for
            hired = await tool_result(c, "persona_hire", name="x", task="what does notes.txt say?")
            assert hired["lessons"] == []
            waited = await tool_result(c, "wait", pids=[hired["pid"]], timeout_s=20)
            agent = waited["agents"][0]
            assert (agent["reason"], agent["answer"], agent["persona"]) == (
                "normal",
                "x did it",
                "x",
            )
            sent = [r for r in list(fake.fake.requests) if "notes.txt say" in json.dumps(r.body)]
            assert sent and all(r.body["system"] == X_PROMPT for r in sent)
            assert all(r.body["model"] == "claude-haiku-4-5" for r in sent)
            assert "tools: persona 'x' may use only" in await tool_error(
                c, "persona_hire", name="x", task="t", tools=["kv"]
            )
            assert "persona: no persona named 'y'" in await tool_error(
                c, "persona_hire", name="y", task="t"
            )

            # -- as a prompt: the persona's prompt, then the task
            got = await c.get_prompt("x", {"task": "summarise notes.txt"})
            assert _texts(got) == [X_PROMPT, "Task: summarise notes.txt"]
            assert _texts(await c.get_prompt("x")) == [X_PROMPT]
            with pytest.raises(MCPError, match="name: no persona named 'nobody'"):
                await c.get_prompt("nobody", {"task": "t"})
            with pytest.raises(MCPError, match="arguments: unknown \\['colour'\\]"):
                await c.get_prompt("x", {"colour": "red"})

            # -- lessons: a relevant one joins the prompt and the hire, an unrelated one never
            learnt = await tool_result(
                c, "lesson_remember", text="Summarise notes.txt only after reading all of it."
            )
            await tool_result(
                c, "lesson_remember", text="Rotate TLS certificates every ninety days."
            )
            (first, task_text) = _texts(await c.get_prompt("x", {"task": "summarise notes.txt"}))
            assert first.startswith(f"{X_PROMPT}\n\nLessons from past work")
            assert "only after reading all of it" in first and "TLS" not in first
            assert task_text == "Task: summarise notes.txt"
            again = await tool_result(c, "persona_hire", name="x", task="summarise notes.txt")
            assert again["lessons"] == [learnt["lesson"]["id"]]
            await tool_result(c, "wait", pids=[again["pid"]], timeout_s=20)
            sent = [r for r in list(fake.fake.requests) if "summarise notes" in json.dumps(r.body)]
            assert sent and all("only after reading all" in r.body["system"] for r in sent)

            # -- saved and added while the server runs: listed at once
            saved = await tool_result(
                c, "persona_save", name="release", prompt="You ship releases.", tools=["files"]
            )
            assert saved == {"source": "saved"}
            (ws / ".yool" / "personas").mkdir(parents=True)
            (ws / ".yool" / "personas" / "late.md").write_text(
                "---\nname: late\ndescription: Added later\n---\nYou came late.\n"
            )
            names = {p.name for p in (await c.list_prompts()).prompts}
            assert {"release", "late", "x"} <= names
            assert _texts(await c.get_prompt("release", {"task": "cut 1.2"})) == [
                "You ship releases.",
                "Task: cut 1.2",
            ]
            assert _texts(await c.get_prompt("late")) == ["You came late."]

            # -- forged on the fake provider, with progress, and specialised into a persona
            notes: list[str] = []

            async def progress(done: float, total: float | None, message: str | None) -> None:
                notes.append(message or "")

            r = await c.call_tool(
                "prompt_forge", {"domain": "releases"}, progress_callback=progress
            )
            assert not r.is_error, r.content
            assert r.structured_content is not None
            assert r.structured_content["prompt"] == FORGED
            spec = await tool_result(
                c, "persona_specialize", name="releaser", domain="releases", base="x"
            )
            assert (spec["source"], spec["prompt"]) == ("saved", FORGED)
            assert _texts(await c.get_prompt("releaser")) == [FORGED]

            # -- the resource
            read = await c.read_resource("yool://personas")
            content = read.contents[0]
            assert isinstance(content, types.TextResourceContents)
            assert content.mime_type == "application/json"
            view = json.loads(content.text)
            rows = {p["name"]: p for p in view["personas"]}
            assert rows["x"]["prompt"] == X_PROMPT and rows["x"]["tools"] == ["files", "code"]
            assert rows["releaser"]["source"] == "saved"
            assert view["warnings"] == [warning]

            # bad input is refused and the server keeps serving
            assert "is not a persona name" in await tool_error(
                c, "persona_save", name="No Good", prompt="p"
            )
            assert "personas" in await tool_result(c, "persona_list", name="x")

    try:
        asyncio.run(main())
    finally:
        fake.stop()
