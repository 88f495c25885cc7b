"""Prompt forging: prompt_forge, prompt_refine and persona_specialize on the fake provider.

Each runs a real no-tools agent through the real `anthropic` SDK against the fake provider on
127.0.0.1, on a real session (SQLite store on a temporary `YOOL_HOME`), so a test reads the
meta-prompt and brief the model was sent, the spend the session was charged, and what was
saved. `clean` (what makes a model's answer a usable prompt, or refuses it) is tested alone.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from yool.personas.forge import (
    FORGE_SYSTEM,
    MAX_PROMPT_CHARS,
    REFINE_SYSTEM,
    UnusablePrompt,
    clean,
)
from yool.personas.registry import PERSONAS_NS
from yool.policy import RuntimePolicy
from yool.testing import FakeProvider, Fault, Recorded, Script, Turn
from yool.tools import OPERATIONS, Call, OpError, Session, load_all

load_all()

KEY = "sk-test-forge"
PROMPT = (
    "You are a Python packaging expert. Read pyproject.toml before changing anything, build "
    "the wheel, and check that it installs in a fresh venv before you answer."
)
CHATTY = (
    f"Sure! Here's the system prompt:\n\n```markdown\n{PROMPT}\n```\n\nLet me know if it helps!"
)


def _policy(tmp: Path, **extra: Any) -> RuntimePolicy:
    return RuntimePolicy(home=tmp / "home", heartbeat_s=0.05, provider="anthropic", **extra)


def _workspace(tmp: Path) -> Path:
    ws = tmp / "ws"
    ws.mkdir(exist_ok=True)
    return ws


def _env(fake: FakeProvider) -> dict[str, str]:
    return {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": fake.url}


async def _op(session: Session, op: str, /, **args: Any) -> Any:
    return await OPERATIONS[op](Call(session), args)


def _user(rec: Recorded) -> str:
    first = rec.body["messages"][0]["content"]
    if isinstance(first, list):
        return "".join(block.get("text", "") for block in first)
    assert isinstance(first, str)
    return first


# -- clean ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        PROMPT,
        f"  \n{PROMPT}\n\n",
        CHATTY,
        f"```\n{PROMPT}\n```",
        f"~~~text\n{PROMPT}\n~~~",
        f"Here is the improved prompt:\n\n{PROMPT}",
        f"# System prompt\n\n{PROMPT}",
        f"**Revised prompt:**\n{PROMPT}\n\nI hope this helps.",
        f'"{PROMPT}"',
        f"---\n{PROMPT}\n---",
    ],
)
def test_clean_strips_fences_preambles_and_chatter_around_the_prompt(answer: str) -> None:
    assert clean(answer) == PROMPT


def test_clean_keeps_a_prompt_that_merely_contains_a_code_example() -> None:
    prompt = (
        f"{PROMPT}\nWhen you report, use this form:\n```\nfile:line  what is wrong\n```\nThen stop."
    )
    assert clean(prompt) == prompt


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (None, "answered nothing"),
        ("   \n ", "answered nothing"),
        ("I'm sorry, but I can't help with writing that prompt for you today.", "declined"),
        ("As an AI language model I cannot write system prompts for other models.", "declined"),
        ("You are helpful.", "too short"),
        ("```\n\n```", "too short"),
        ("x" * (MAX_PROMPT_CHARS + 1), "more than"),
    ],
)
def test_clean_refuses_an_answer_that_is_no_usable_prompt(answer: str | None, why: str) -> None:
    with pytest.raises(UnusablePrompt, match=why):
        clean(answer)


# -- prompt_forge -------------------------------------------------------------------------------


def test_prompt_forge_runs_a_no_tools_agent_on_the_meta_prompt_charged_to_the_session(
    tmp_path: Path,
) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)
    notes: list[str] = []

    async def progress(done: float, total: float | None, message: str) -> None:
        notes.append(message)

    async def main() -> None:
        async with (
            FakeProvider([Turn.say(CHATTY, usage=(1000, 200))], latency=0.3) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            args = {
                "domain": "Python packaging",
                "goal": "ship wheels that install",
                "tools": ["files", "write", "Bash"],
            }
            out = await OPERATIONS["prompt_forge"](Call(s, progress), args)
            assert out.prompt == PROMPT
            assert out.lessons == []
            (rec,) = fake.requests
            assert rec.body["system"] == FORGE_SYSTEM
            assert "tools" not in rec.body  # the writer has no tools of its own
            brief = _user(rec)
            assert "Domain: Python packaging" in brief and "Goal: ship wheels that install" in brief
            assert "- files: list, read and search" in brief and "- write: create and edit" in brief
            assert "- Bash" in brief  # a tool yool does not know is named as given
            # it is an ordinary agent: in ps, with its spend charged to the session
            agent = s.record(out.pid)
            assert agent.origin == {"forge": "Python packaging"}
            assert (agent.status, agent.reason) == ("exited", {"kind": "normal"})
            assert agent.tokens == 1200 and agent.usd == pytest.approx(0.006)  # sonnet's price
            used = s.usage()
            assert used["tokens"] >= 1200 and used["usd"] == pytest.approx(0.006)
            assert len(notes) >= 2 and all("forging a prompt for Python" in n for n in notes)

    asyncio.run(main())


def test_prompt_refine_sends_the_prompt_and_feedback_and_returns_the_improvement(
    tmp_path: Path,
) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)
    improved = PROMPT + " Never edit generated files."

    async def main() -> None:
        async with (
            FakeProvider([Turn.say(f"Here is the revised prompt:\n{improved}")]) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            out = await _op(s, "prompt_refine", prompt=PROMPT, feedback="it edited _version.py")
            assert out.prompt == improved
            (rec,) = fake.requests
            assert rec.body["system"] == REFINE_SYSTEM
            brief = _user(rec)
            assert f"CURRENT PROMPT:\n<<<\n{PROMPT}\n>>>" in brief
            assert brief.endswith("FEEDBACK:\nit edited _version.py")
            assert s.record(out.pid).origin == {"refine": True}

    asyncio.run(main())


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("I'm sorry, but I can't help with that request.", "the model declined"),
        ("Be good.", "too short for a system prompt"),
        ("", "answered nothing"),
    ],
)
def test_an_unusable_answer_is_refused_with_the_reason_and_nothing_is_saved(
    tmp_path: Path, reply: str, error: str
) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)

    async def main() -> None:
        async with (
            FakeProvider(Script(respond=lambda rec: Turn.say(reply))) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            with pytest.raises(
                OpError, match=f"prompt: the model's answer is not a usable.*{error}"
            ):
                await _op(s, "prompt_forge", domain="testing")
            with pytest.raises(OpError, match=error):
                await _op(s, "prompt_refine", prompt=PROMPT, feedback="shorter")
            with pytest.raises(OpError, match=error):
                await _op(s, "persona_specialize", name="tester", domain="testing")
            assert s.kernel.store is not None
            assert await s.kernel.store.akv_keys(PERSONAS_NS) == []
            assert s.personas.find("tester") is None

    asyncio.run(main())


def test_a_forge_the_budget_cannot_pay_for_ends_honestly_and_names_the_quota(
    tmp_path: Path,
) -> None:
    pol, ws = _policy(tmp_path, budget_tokens=50), _workspace(tmp_path)

    async def main() -> None:
        async with (
            FakeProvider([Turn.say(PROMPT)]) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            with pytest.raises(OpError, match=r"ended quota\(tokens\); nothing was written"):
                await _op(s, "prompt_forge", domain="testing", goal="a long goal " * 20)
            assert fake.count() == 0  # refused before it was sent

    asyncio.run(main())


def test_cancelling_a_forge_kills_the_agent_writing_it(tmp_path: Path) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)

    async def main() -> None:
        async with (
            FakeProvider(fault=Fault.timeout()) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            task = asyncio.ensure_future(_op(s, "prompt_forge", domain="testing"))
            async with asyncio.timeout(10):
                while fake.count() == 0:  # noqa: ASYNC110 - waiting for the request to land
                    await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            (record,) = s.agents.values()
            async with asyncio.timeout(5):
                while record.status != "exited":  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert record.reason is not None and record.reason["kind"] == "killed"

    asyncio.run(main())


@pytest.mark.parametrize(
    ("op", "args", "error"),
    [
        ("prompt_forge", {"domain": "  "}, "domain: blank"),
        ("prompt_forge", {"domain": "x" * 201}, "at most 200 characters"),
        ("prompt_forge", {"domain": "x", "k": 31}, "must be from 0 to 30"),
        ("prompt_forge", {"domain": "x", "tools": ["t"] * 21}, "at most 20 items"),
        ("prompt_forge", {"domain": "x", "provider": "x"}, "Extra inputs are not permitted"),
        ("prompt_refine", {"prompt": PROMPT, "feedback": " "}, "feedback: blank"),
        ("prompt_refine", {"prompt": "", "feedback": "more"}, "prompt: blank"),
        ("persona_specialize", {"name": "Nope!", "domain": "x"}, "is not a persona name"),
        ("persona_specialize", {"name": "ok", "domain": "x", "base": "ghost"}, "no persona named"),
        ("persona_specialize", {"name": "ok", "domain": ""}, "domain: blank"),
    ],
)
def test_bad_forging_input_is_refused_before_any_agent_runs(
    tmp_path: Path, op: str, args: dict[str, Any], error: str
) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)

    async def main() -> None:
        async with (
            FakeProvider([Turn.say(PROMPT)]) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            with pytest.raises((OpError, ValueError), match=error):
                await _op(s, op, **args)
            assert s.agents == {} and fake.count() == 0

    asyncio.run(main())


def test_forging_on_the_host_model_is_refused_in_the_stateless_era(tmp_path: Path) -> None:
    pol, ws = _policy(tmp_path).model_copy(update={"provider": "sampling"}), _workspace(tmp_path)

    async def main() -> None:
        async with Session.open(pol, workspace=ws, environ={}) as s:
            call = Call(s, pull=True)  # how the MCP front end calls in the 2026-07-28 era
            for op, args in [
                ("prompt_forge", {"domain": "x"}),
                ("prompt_refine", {"prompt": PROMPT, "feedback": "f"}),
                ("persona_specialize", {"name": "n", "domain": "x"}),
            ]:
                with pytest.raises(OpError, match=r"provider: .*needs the 2025-11-25 protocol"):
                    await OPERATIONS[op](call, args)
            assert s.agents == {}

    asyncio.run(main())


# -- persona_specialize ---------------------------------------------------------------------------


def test_persona_specialize_forges_from_a_base_persona_and_saves_the_result(
    tmp_path: Path,
) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)
    forged = "You review SQL migrations. " + PROMPT

    async def main() -> None:
        async with (
            FakeProvider([Turn.say(forged)]) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            base = s.personas.get("reviewer")
            out = await _op(
                s,
                "persona_specialize",
                name="sql-reviewer",
                domain="SQL migrations",
                goal="catch locking and data loss",
                base="reviewer",
            )
            assert (out.source, out.prompt, out.lessons) == ("saved", forged, [])
            (rec,) = fake.requests
            assert rec.body["system"] == FORGE_SYSTEM
            brief = _user(rec)
            assert "Domain: SQL migrations" in brief and "catch locking" in brief
            assert base.prompt in brief  # the base persona is the starting point
            assert "- files: list, read" in brief and "- write:" not in brief
            saved = s.personas.get("sql-reviewer")
            assert (saved.prompt, saved.domain, saved.source) == (forged, "SQL migrations", "saved")
            assert saved.description == "catch locking and data loss"
            assert (saved.tools, saved.writes) == (base.tools, base.writes)  # the base's bounds
            assert s.record(out.pid).origin == {"forge": "SQL migrations"}

        async with Session.open(pol, workspace=ws, environ={}) as s:  # it outlives the server
            assert s.personas.get("sql-reviewer").prompt == forged
            assert s.kernel.store is not None
            stored = await s.kernel.store.akv_get(PERSONAS_NS, "sql-reviewer")
            assert isinstance(stored, dict)
            assert (stored["prompt"], stored["domain"]) == (forged, "SQL migrations")

    asyncio.run(main())


# -- lessons --------------------------------------------------------------------------------

LESSON = "Pin the build backend version in pyproject.toml so wheels build the same everywhere."
OTHER = "Prefer CSS grid over floats for page layout."


def test_forging_bakes_in_the_lessons_recalled_for_the_domain_and_goal_and_names_them(
    tmp_path: Path,
) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)

    async def main() -> None:
        async with (
            FakeProvider(Script(respond=lambda rec: Turn.say(PROMPT))) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            lesson, _ = await s.lessons.remember(LESSON, scope="global")
            await s.lessons.remember(OTHER)
            out = await _op(s, "prompt_forge", domain="Python packaging", goal="build wheels")
            assert out.lessons == [lesson.id]
            brief = _user(fake.requests[-1])
            assert f"Lessons to bake in:\n- {LESSON}" in brief and OTHER not in brief

            spec = await _op(s, "persona_specialize", name="packager", domain="wheel builds")
            assert spec.lessons == [lesson.id]
            assert LESSON in _user(fake.requests[-1])
            no = await _op(s, "prompt_forge", domain="Python packaging", goal="wheels", k=0)
            assert no.lessons == [] and "Lessons to bake in" not in _user(fake.requests[-1])

    asyncio.run(main())
