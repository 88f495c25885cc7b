"""`lesson_learn` end to end, and the parsing of a distiller's answer.

A real `Session` on a tmp YOOL_HOME runs agents with the real `anthropic` SDK pointed at the
fake provider on 127.0.0.1; the fake answers the distiller (recognised by its system prompt)
with what each test needs. The distiller is an ordinary agent: it shows in `ps` with its
origin and is paid from the session's budget.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from yool.memory.distill import DISTILL_SYSTEM, MAX_LESSONS, parse_lessons, transcript_text
from yool.policy import RuntimePolicy
from yool.testing import FakeProvider, Fault, Recorded, Script, Turn
from yool.tools import OPERATIONS, AgentRecord, Call, OpError, Session, load_all

load_all()

GOOD = [
    "Run the failing test alone before editing any code.",
    "Pin the lockfile before bumping dependencies.",
    "Check the changelog for breaking changes first.",
    "Grep for every caller before renaming a function.",
]
ANSWER = json.dumps(
    [
        GOOD[0],
        "The agent read three files and then fixed the bug.",  # a recap
        "Always " + "be careful " * 40,  # too long to be a lesson
        GOOD[1],
        "run the failing test ALONE, before editing any code!",  # a duplicate
        GOOD[2],
        GOOD[3],  # past the cap of three
    ]
)


def _distiller(rec: Recorded) -> bool:
    return "You distil a finished AI agent" in json.dumps(rec.body.get("system"))


def _responder(answers: dict[str, str]) -> Callable[[Recorded], Turn]:
    """The worker answers once; the distiller answers `answers["distil"]`."""

    def respond(rec: Recorded) -> Turn:
        if _distiller(rec):
            return Turn.say(answers["distil"], usage=(300, 40))
        return Turn.say("Fixed it by pinning the lockfile.", usage=(100, 10))

    return respond


async def _op(session: Session, name: str, progress: Any = None, /, **args: Any) -> Any:
    call = Call(session) if progress is None else Call(session, progress)
    return await OPERATIONS[name](call, args)


async def _finished(session: Session, task: str) -> int:
    pid = (await _op(session, "spawn", task=task, provider="anthropic", tools=[])).pid
    assert (await _op(session, "wait", pids=[pid], timeout_s=20)).done
    return int(pid)


def _setup(tmp: Path) -> tuple[RuntimePolicy, Path]:
    ws = tmp / "ws"
    ws.mkdir()
    return RuntimePolicy(home=tmp / "home", heartbeat_s=0.05), ws


def _env(fake: FakeProvider) -> dict[str, str]:
    return {"ANTHROPIC_API_KEY": "sk-test-learn", "ANTHROPIC_BASE_URL": fake.url}


def test_lesson_learn_keeps_at_most_three_reusable_lessons_tagged_with_their_source(
    tmp_path: Path,
) -> None:
    pol, ws = _setup(tmp_path)
    answers = {"distil": ANSWER}
    notes: list[str] = []

    async def progress(done: float, total: float | None, message: str) -> None:
        notes.append(message)

    async def main() -> None:
        async with (
            FakeProvider(Script(respond=_responder(answers))) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            pid = await _finished(s, "task-W: fix the lockfile bug")
            spent = s.usage()["tokens"]
            learned = await _op(s, "lesson_learn", progress, pid=pid, provider="anthropic")
            assert [x.text for x in learned.lessons] == GOOD[:MAX_LESSONS]
            assert learned.created == 3
            assert all(
                x.tags == ["learnt"] and x.scope == str(ws.resolve()) for x in learned.lessons
            )
            stored = await s.lessons.get([x.id for x in learned.lessons])
            assert all(x.source == {"pid": pid} for x in stored)
            # the distiller was an agent: in ps with its origin, paid from the session budget
            distiller = s.record(learned.distiller)
            assert distiller.origin == {"learn": pid} and distiller.status == "exited"
            assert s.usage()["tokens"] >= spent + 340
            asked = [r for r in fake.requests if _distiller(r)]
            assert len(asked) == 1
            sent = json.dumps(asked[0].body)
            assert "task-W: fix the lockfile bug" in sent and "pinning the lockfile" in sent
            assert notes and "distilling agent" in notes[0]
            # the same lessons again: recognised, nothing new
            again = await _op(s, "lesson_learn", pid=pid, provider="anthropic")
            assert again.created == 0 and [x.id for x in again.lessons] == [
                x.id for x in learned.lessons
            ]
            # bulleted lines are read too
            answers["distil"] = "Lessons:\n- Read the error message twice.\n2. Keep diffs small."
            bullets = await _op(s, "lesson_learn", pid=pid, provider="anthropic")
            assert [x.text for x in bullets.lessons] == [
                "Read the error message twice.",
                "Keep diffs small.",
            ]
            recalled = await _op(s, "lesson_recall", query="failing test lockfile", tags=["learnt"])
            assert {x.text for x in recalled.lessons} >= {GOOD[0], GOOD[1]}

    asyncio.run(main())


def test_lesson_learn_refuses_an_unknown_a_running_and_a_transcriptless_agent(
    tmp_path: Path,
) -> None:
    pol, ws = _setup(tmp_path)

    def hang(rec: Recorded) -> Fault | None:
        return Fault.timeout() if "task-H" in json.dumps(rec.body) else None

    async def main() -> None:
        async with (
            FakeProvider(Script(respond=_responder({"distil": ANSWER})), fault_for=hang) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            with pytest.raises(OpError, match="pid: no agent 424242"):
                await _op(s, "lesson_learn", pid=424242)
            running = (await _op(s, "spawn", task="task-H: hang", provider="anthropic")).pid
            with pytest.raises(OpError, match=f"pid: agent {running} is still running"):
                await _op(s, "lesson_learn", pid=running)
            # an agent whose transcript is gone (say, its events were never stored)
            s.agents[777777] = AgentRecord(pid=777777, task="lost", spawn={}, status="exited")
            with pytest.raises(OpError, match="pid: agent 777777 left no transcript"):
                await _op(s, "lesson_learn", pid=777777)
            assert not [r for r in fake.requests if _distiller(r)]  # no model was asked
            assert await s.lessons.visible() == []
            await _op(s, "signal", pid=running, signal="kill")

    asyncio.run(main())


@pytest.mark.parametrize(
    "answer",
    [
        "[]",
        "Nothing genuinely reusable here.",
        "The agent fixed the bug by pinning the lockfile.\nIn this session the user asked.",
        '["ok", "The agent read files."]',
        "",
    ],
    ids=["empty-list", "nothing", "recap-lines", "short-and-recap", "blank"],
)
def test_lesson_learn_refuses_an_answer_with_no_usable_lesson(tmp_path: Path, answer: str) -> None:
    pol, ws = _setup(tmp_path)

    async def main() -> None:
        async with (
            FakeProvider(Script(respond=_responder({"distil": answer}))) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            pid = await _finished(s, "task-E: something")
            with pytest.raises(OpError, match="found no reusable lesson"):
                await _op(s, "lesson_learn", pid=pid, provider="anthropic")
            assert await s.lessons.visible() == []

    asyncio.run(main())


def test_a_distiller_out_of_budget_ends_the_learning_with_its_reason(tmp_path: Path) -> None:
    pol, ws = _setup(tmp_path)
    pol = pol.model_copy(update={"budget_tokens": 400})

    async def main() -> None:
        async with (
            FakeProvider(Script(respond=_responder({"distil": ANSWER}))) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            pid = await _finished(s, "task-B: spend")  # 110 of the 400 tokens
            with pytest.raises(OpError, match=r"distiller \(pid \d+\) ended quota"):
                await _op(s, "lesson_learn", pid=pid, provider="anthropic")
            assert await s.lessons.visible() == []

    asyncio.run(main())


# -- parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('["Use rg, not grep, for big trees."]', ["Use rg, not grep, for big trees."]),
        (
            'Here you go:\n```json\n["Quote shell args.", "Read errors fully."]\n```\nGood luck',
            ["Quote shell args.", "Read errors fully."],
        ),
        (
            'Sure! ["Cache pip downloads in CI."] hope it helps',
            ["Cache pip downloads in CI."],
        ),
        (
            '{"lessons": [{"lesson": "Pin tool versions in CI."}, {"text": "Log before retry."}]}',
            ["Pin tool versions in CI.", "Log before retry."],
        ),
        (
            "1. Run tests before pushing.\n2) Keep commits small.\n* **Tip:** read the logs first"
            "\n- Fourth valid lesson here.",
            ["Run tests before pushing.", "Keep commits small.", "Tip: read the logs first"],
        ),
        ("• “Check the lock first.”\n", ["Check the lock first."]),
        ("[1, 2, null]", []),
        ("None.", []),
    ],
)
def test_parse_lessons_reads_json_fenced_json_and_bullets_and_keeps_three_at_most(
    answer: str, expected: list[str]
) -> None:
    assert parse_lessons(answer) == expected


def test_transcript_text_keeps_roles_tools_and_the_start_and_end_of_a_long_one() -> None:
    turns = [{"role": "user", "text": "task-T: start here", "tools": []}]
    turns += [{"role": "assistant", "text": "step " * 400, "tools": ["read_file"]}] * 20
    turns += [{"role": "assistant", "text": "Final: it works", "tools": []}]
    text = transcript_text(turns)
    assert text.startswith("user: task-T: start here")
    assert text.endswith("assistant: Final: it works")
    assert "[tools: read_file]" in text and "left out" in text
    assert len(text) < 13_000
    assert transcript_text([]) == "" and "JSON array" in DISTILL_SYSTEM
