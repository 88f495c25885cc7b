"""Memory operations: remember, recall, learn (distil from an agent) and forget lessons.

They act on `session.lessons` (`yool.memory.lessons`): in the store on `YOOL_HOME`, so lessons
outlive the server, or in memory for a session without a store. `lesson_learn` runs a no-tools
distiller agent through `run_agent` on the finished agent's transcript, so the distillation is
paid from the session's budget and shows in `ps` and `trace`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from yool.memory.distill import DISTILL_SYSTEM, distill_task, parse_lessons, transcript_text
from yool.memory.lessons import Lesson, LessonError, clean_tags
from yool.tools.agents import SpawnArgs, run_agent, status_of
from yool.tools.prompts import with_heartbeat
from yool.tools.resources import transcript_view
from yool.tools.session import UNFINISHED
from yool.tools.table import Args, Call, OpError, Result, operation

DISTILL_STEPS = 2
LEARNT_TAG = "learnt"  # on every lesson lesson_learn keeps, with the agent's persona if any


class LessonOut(Result):
    id: int
    text: str
    tags: list[str]
    scope: str  # "global" or the workspace path
    uses: int


def lesson_out(lesson: Lesson) -> LessonOut:
    return LessonOut(
        id=lesson.id, text=lesson.text, tags=list(lesson.tags), scope=lesson.scope, uses=lesson.uses
    )


def _checked(error: LessonError) -> OpError:
    return OpError(str(error))


def _is_tag(text: str) -> bool:
    try:
        clean_tags([text])
    except LessonError:
        return False
    return True


# -- remember -----------------------------------------------------------------------------


class RememberArgs(Args):
    text: str  # checked by Lessons (length, words): the schema stays short
    tags: list[str] = Field([])
    scope: Literal["workspace", "global"] = "workspace"


class Remembered(Result):
    lesson: LessonOut
    created: bool  # false: it was known; its tags were merged


@operation("memory")
async def lesson_remember(call: Call, args: RememberArgs) -> Remembered:
    """Keep a short reusable lesson; a known one gets the tags."""
    try:
        lesson, created = await call.session.lessons.remember(
            args.text, tags=args.tags, scope=args.scope
        )
    except LessonError as e:
        raise _checked(e) from None
    return Remembered(lesson=lesson_out(lesson), created=created)


# -- recall -------------------------------------------------------------------------------


class RecallArgs(Args):
    query: str
    k: int = 5  # 1 to MAX_K, checked by Lessons
    tags: list[str] = Field([])


class Recalled(Result):
    lessons: list[LessonOut]


@operation("memory", read_only=True)
async def lesson_recall(call: Call, args: RecallArgs) -> Recalled:
    """The k lessons most relevant to a query (having all tags), this workspace's first."""
    try:
        found = await call.session.lessons.recall(args.query, k=args.k, tags=args.tags)
    except LessonError as e:
        raise _checked(e) from None
    return Recalled(lessons=[lesson_out(lesson) for lesson in found])


# -- learn --------------------------------------------------------------------------------


class LearnArgs(Args):
    pid: int
    provider: str | None = None
    model: str | None = None


class Learned(Result):
    lessons: list[LessonOut]  # at most 3
    created: int  # how many were new
    distiller: int  # the pid of the agent that distilled them


@operation("memory", blocking=True)
async def lesson_learn(call: Call, args: LearnArgs) -> Learned:
    """Distil up to 3 reusable lessons from a finished agent's transcript."""
    session = call.session
    record = session.record(args.pid)
    if record.status in UNFINISHED:
        raise OpError(
            f"pid: agent {args.pid} is still {record.status}; wait for it to end, then learn"
        )
    provider = args.provider or session.policy.provider
    if call.pull and provider == "sampling":
        raise OpError(
            "provider: distilling on the host's model (sampling) needs the 2025-11-25 "
            "protocol; pass another provider"
        )
    tags = [LEARNT_TAG]
    if record.persona and _is_tag(record.persona):
        tags.append(record.persona.lower())  # what the agent was hired as
    turns = (await transcript_view(session, args.pid))["turns"]
    transcript = transcript_text(turns)
    if not transcript:
        raise OpError(f"pid: agent {args.pid} left no transcript to learn from")
    await call.progress(0, None, f"distilling agent {args.pid}'s transcript")
    spawn = SpawnArgs.model_validate(
        {
            "task": distill_task(transcript),
            "system": DISTILL_SYSTEM,
            "tools": [],
            "provider": args.provider,
            "model": args.model,
            "max_steps": DISTILL_STEPS,
        }
    )
    distiller = await with_heartbeat(
        call,
        run_agent(session, spawn, origin={"learn": args.pid}),
        f"distilling agent {args.pid}'s transcript",
    )
    if (distiller.reason or {}).get("kind") != "normal":
        raise OpError(
            f"pid: the distiller (pid {distiller.pid}) ended {status_of(distiller).reason}; "
            "nothing was learnt (raise the budget or retry)"
        )
    texts = parse_lessons(distiller.answer)
    if not texts:
        raise OpError(
            f"pid: the distiller (pid {distiller.pid}) found no reusable lesson in agent "
            f"{args.pid}'s transcript; nothing was kept"
        )
    kept: list[Lesson] = []
    created = 0
    for text in texts:
        lesson, new = await session.lessons.remember(text, tags=tags, source={"pid": args.pid})
        kept.append(lesson)
        created += new
    return Learned(lessons=[lesson_out(x) for x in kept], created=created, distiller=distiller.pid)


# -- forget -------------------------------------------------------------------------------


class ForgetArgs(Args):
    ids: list[int]


class Forgotten(Result):
    forgotten: int  # how many of the ids were lessons


@operation("memory")
async def lesson_forget(call: Call, args: ForgetArgs) -> Forgotten:
    """Delete lessons by id."""
    return Forgotten(forgotten=await call.session.lessons.forget(args.ids))
