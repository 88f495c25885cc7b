"""`prompt_evolve` over MCP: a real `yool server --stdio` driven by the real MCP SDK client.

The server's agents talk to the fake Anthropic provider (in a thread of this process) over
127.0.0.1; it answers scoring agents right only under the prompt holding "GOOD", and plays
the mutator. The client sees a progress notification per candidate scored, the result, a
bad eval set refused as a tool error, and the evolution's agents in `ps`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client

from stdio_servers import on_fake_anthropic, stdio
from yool.personas.evolve import MUTATOR_SYSTEM
from yool.testing import FakeProvider, Recorded, Script, Turn

GOOD = "GOOD: reply with the bare number."


def _respond(rec: Recorded) -> Turn:
    system = str(rec.body.get("system") or "")
    if system == MUTATOR_SYSTEM:
        return Turn.say(GOOD)
    return Turn.say("42" if "GOOD" in system else "about forty")


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_prompt_evolve_over_stdio_reports_progress_per_candidate_and_its_lineage(
    tmp_path: Path, mode: str
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    fake = FakeProvider.start_in_thread(Script(respond=_respond))
    params = stdio(tmp_path / "home", cwd=ws, **on_fake_anthropic(fake.url, "sk-test-evolve"))
    evals = [
        {"task": "What is 6*7?", "check": "exact", "want": "42"},
        {"task": "And 40+2?", "check": "regex", "want": r"^\s*42\s*$"},
    ]
    notes: list[tuple[float, float | None, str]] = []

    async def progress(done: float, total: float | None, message: str | None) -> None:
        notes.append((done, total, message or ""))

    async def main() -> None:
        async with Client(params, mode=mode) as client:
            listed = await client.list_tools()
            assert "prompt_evolve" in {t.name for t in listed.tools}

            args: dict[str, Any] = {
                "prompt": "You are helpful.",
                "evals": evals,
                # wrong like the baseline and longer (dearer): the baseline stays the best
                "variants": ["Be polite and considerate in every reply you give."],
                "generations": 1,
                "population": 1,
                "budget_tokens": 100_000,
            }
            r = await client.call_tool("prompt_evolve", args, progress_callback=progress)
            assert not r.is_error, r.content
            out = r.structured_content
            assert out is not None
            assert out["replaced"] is True and out["winner"] == GOOD and out["saved"] is False
            assert out["stop"] == "done" and out["generations"] == 1
            assert [
                (c["origin"], c["parent"], c["gen"], c["correct"]) for c in out["candidates"]
            ] == [
                ("baseline", None, 0, 0),
                ("user", 0, 0, 0),
                ("mutation", 0, 1, 2),
            ]
            assert out["winner_score"] > out["baseline_score"] + 900
            assert out["spend"]["tokens"] > 0 and out["spend"]["usd"] > 0

            bad = dict(args, evals=[{"task": "t", "check": "regex", "want": "(("}])
            refused = await client.call_tool("prompt_evolve", bad)
            assert refused.is_error
            text = refused.content[0].text  # type: ignore[union-attr]
            assert "evals[0].want: bad regular expression" in text

            ps = await client.call_tool("ps", {})
            assert ps.structured_content is not None
            rows = ps.structured_content["agents"]
            mine = [a for a in rows if (a.get("origin") or {}).get("evolve") == out["run_id"]]
            assert len(mine) == 3 * 2 + 1  # three candidates on two evals, one mutator
            assert all(a["status"] == "exited" and a["reason"] == "normal" for a in mine)

    try:
        asyncio.run(main())
    finally:
        fake.stop()
    scored = [m for _, _, m in notes if m.startswith("scored #")]
    assert [m.split()[1] for m in scored] == ["#0", "#1", "#2"], notes
    values = [d for d, _, _ in notes]
    assert values == sorted(values) and values[-1] == 3.0
    assert all(total == 3.0 for _, total, _ in notes)
