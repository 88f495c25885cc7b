"""The memory tools over stdio with the real MCP SDK client, in both protocol eras.

A real `yool server --stdio` subprocess on a tmp YOOL_HOME; agents (the worker and the
distiller `lesson_learn` runs) think with the real `anthropic` SDK against the fake provider
on 127.0.0.1. Every memory tool is called, `yool://lessons` is read, bad input comes back as a
tool error, and the lessons are still there for a second server on the same home. The
`yool lessons export|import` command is run against that home too.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import mcp_types as types
import pytest
from mcp.client import Client

from stdio_servers import on_fake_anthropic, stdio, tool_error, tool_result
from yool.testing import FakeProvider, Recorded, Script, Turn

LESSONS = ["Run the failing test alone first.", "Pin the lockfile before upgrading."]


def _respond(rec: Recorded) -> Turn:
    if "You distil a finished AI agent" in json.dumps(rec.body.get("system")):
        return Turn.say(json.dumps([*LESSONS, "The agent fixed it."]))
    return Turn.say("Done: the bug is fixed.")


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_every_memory_tool_over_stdio_and_lessons_outlive_the_server(
    tmp_path: Path, mode: str
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    fake = FakeProvider.start_in_thread(Script(respond=_respond))
    params = stdio(tmp_path / "home", cwd=ws, **on_fake_anthropic(fake.url, "sk-test-mcp-memory"))
    env = params.env
    here = str(ws.resolve())

    async def first() -> list[int]:
        async with Client(params, mode=mode) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"lesson_remember", "lesson_recall", "lesson_learn", "lesson_forget"} <= names
            made = await tool_result(
                c, "lesson_remember", text="Quote FTS5 terms.", tags=["sqlite"]
            )
            assert made["created"] and made["lesson"]["scope"] == here
            glob = await tool_result(
                c, "lesson_remember", text="Keep FTS5 queries short.", scope="global"
            )
            dup = await tool_result(c, "lesson_remember", text="quote fts5 TERMS", tags=["search"])
            assert not dup["created"] and dup["lesson"]["tags"] == ["sqlite", "search"]
            found = (await tool_result(c, "lesson_recall", query="fts5 terms queries"))["lessons"]
            assert [x["id"] for x in found] == [made["lesson"]["id"], glob["lesson"]["id"]]
            assert found[0]["uses"] == 1
            assert "tags:" in await tool_error(c, "lesson_remember", text="x y", tags=['a b"c'])
            assert "text: empty" in await tool_error(c, "lesson_remember", text="   ")

            pid = (await tool_result(c, "spawn", task="task-M: fix the bug", tools=[]))["pid"]
            assert (await tool_result(c, "wait", pids=[pid], timeout_s=20))["done"]
            notes: list[str] = []

            async def progress(done: float, total: float | None, message: str | None) -> None:
                notes.append(message or "")

            learned = await tool_result(c, "lesson_learn", progress, pid=pid)
            assert [x["text"] for x in learned["lessons"]] == LESSONS
            assert learned["created"] == 2 and learned["lessons"][0]["tags"] == ["learnt"]
            if mode == "legacy":
                assert notes and "distilling" in notes[0]
            assert "pid: no agent 999999" in await tool_error(c, "lesson_learn", pid=999999)
            rows = (await tool_result(c, "ps"))["agents"]
            assert any(r["pid"] == learned["distiller"] for r in rows)

            read = await c.read_resource("yool://lessons")
            content = read.contents[0]
            assert isinstance(content, types.TextResourceContents)
            view = json.loads(content.text)
            assert view["workspace"] == here
            assert {x["text"] for x in view["lessons"]} == {
                "Quote FTS5 terms.",
                "Keep FTS5 queries short.",
                *LESSONS,
            }
            gone = await tool_result(c, "lesson_forget", ids=[glob["lesson"]["id"], 123456])
            assert gone["forgotten"] == 1
            return [x["id"] for x in learned["lessons"]]

    async def second(ids: list[int]) -> None:
        async with Client(params, mode=mode) as c:
            found = (await tool_result(c, "lesson_recall", query="failing test lockfile", k=5))[
                "lessons"
            ]
            assert sorted(x["id"] for x in found) == sorted(ids)
            assert not (await tool_result(c, "lesson_recall", query="queries short"))["lessons"]

    try:
        asyncio.run(second(asyncio.run(first())))
    finally:
        fake.stop()

    # the command line, on the same home
    cli = [sys.executable, "-m", "yool", "lessons"]
    out = subprocess.run(
        [*cli, "export"], env=env, cwd=ws, capture_output=True, text=True, check=True
    ).stdout
    exported = [json.loads(line) for line in out.splitlines()]
    assert {x["text"] for x in exported} == {"Quote FTS5 terms.", *LESSONS}
    dump = tmp_path / "lessons.jsonl"
    dump.write_text(out + "{broken\n")
    bad = subprocess.run(
        [*cli, "import", str(dump)], env=env, cwd=ws, capture_output=True, text=True
    )
    assert bad.returncode == 1 and f"{dump}:4: not JSON" in bad.stderr
    dump.write_text(out + json.dumps({"text": "A new imported lesson.", "tags": ["cli"]}) + "\n")
    good = subprocess.run(
        [*cli, "import", str(dump)], env=env, cwd=ws, capture_output=True, text=True, check=True
    )
    assert "imported 1 lessons (3 already known, merged)" in good.stdout
