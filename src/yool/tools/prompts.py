"""Prompt operations: forge a system prompt for a domain, refine one from feedback.

Both are blocking: an agent with no tools writes the prompt (`yool.personas.forge`), paid
from the session's budget and visible in `ps`, while the operation sends a progress
heartbeat; cancelling the call kills that agent. A forged prompt bakes in the lessons most
relevant to its domain and goal, and says which ones. (`prompt_evolve`, in the same group,
lives in `yool.tools.evolve`.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import Annotated, TypeVar

from pydantic import AfterValidator, Field

from yool.personas import forge
from yool.tools.table import Args, Call, OpError, Result, operation

T = TypeVar("T")
MAX_PROMPT_CHARS = 64_000
MAX_FEEDBACK_CHARS = 20_000
MAX_GOAL_CHARS = 2_000


def capped(n: int) -> AfterValidator:
    """A length limit checked on input but left out of the published schema (context)."""

    def check(value: str) -> str:
        if len(value) > n:
            raise ValueError(f"at most {n} characters, got {len(value)}; shorten it")
        return value

    return AfterValidator(check)


def within(low: float, high: float) -> AfterValidator:
    """A numeric range checked on input but left out of the published schema."""

    def check(value: float) -> float:
        if not low <= value <= high:
            raise ValueError(f"must be from {low:g} to {high:g}, got {value:g}")
        return value

    return AfterValidator(check)


def most(n: int) -> AfterValidator:
    """At most `n` items, checked on input but left out of the published schema."""

    def check(value: list[str]) -> list[str]:
        if len(value) > n:
            raise ValueError(f"at most {n} items, got {len(value)}")
        return value

    return AfterValidator(check)


Domain = Annotated[str, capped(200)]
Goal = Annotated[str, capped(MAX_GOAL_CHARS)]
Prompt = Annotated[str, capped(MAX_PROMPT_CHARS)]


def blank(field: str, value: str, example: str) -> None:
    if not value.strip():
        raise OpError(f"{field}: blank; {example}")


async def with_heartbeat(call: Call, work: Awaitable[T], message: str) -> T:
    """Await `work`, reporting progress every heartbeat; cancelling the call cancels it."""
    task = asyncio.ensure_future(work)
    start = time.monotonic()
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=call.session.policy.heartbeat_s)
            if done:
                return task.result()
            await call.progress(time.monotonic() - start, None, message)
    finally:
        if not task.done():
            task.cancel()  # run_agent kills its agent when cancelled
            await asyncio.gather(task, return_exceptions=True)


def no_host_model(call: Call) -> None:
    """A blocking call cannot wait on the host's model in the stateless era: say so."""
    if call.pull and call.session.policy.provider == "sampling":
        raise OpError(
            "provider: writing a prompt on the host's model (sampling) needs the 2025-11-25 "
            "protocol; in the 2026-07-28 era set YOOL_PROVIDER to another provider"
        )


class Refined(Result):
    prompt: str
    pid: int  # the agent that wrote it (its spend: ps, trace)


class Written(Refined):
    lessons: list[int]  # ids of the lessons baked in


class ForgeArgs(Args):
    domain: Domain
    goal: Goal = ""
    tools: Annotated[list[Annotated[str, capped(64)]], most(20)] = Field(default_factory=list)
    k: Annotated[int, within(0, 30)] = 8


@operation("prompts", blocking=True)
async def prompt_forge(call: Call, args: ForgeArgs) -> Written:
    """Write a system prompt for a domain, goal and tools, using k recalled lessons."""
    blank("domain", args.domain, "name the agent's domain, e.g. 'Python packaging'")
    no_host_model(call)
    forged, ids = await forge_from_memory(
        call, args.domain, args.goal, args.tools, args.k, f"forging a prompt for {args.domain[:60]}"
    )
    return Written(prompt=forged.prompt, pid=forged.pid, lessons=ids)


async def forge_from_memory(
    call: Call,
    domain: str,
    goal: str,
    tools: Sequence[str],
    k: int,
    what: str,
    *,
    base: str | None = None,
) -> tuple[forge.Forged, list[int]]:
    """Forge a prompt with the k lessons most relevant to `domain` and `goal` baked in,
    reporting progress as `what`; the prompt, and the ids of the lessons used."""
    lessons = await forge.relevant_lessons(call.session, f"{domain} {goal}", k)
    texts = [lesson.text for lesson in lessons]
    work = forge.forge(call.session, domain, goal=goal, tools=tools, lessons=texts, base=base)
    forged = await with_heartbeat(call, work, what)
    return forged, [lesson.id for lesson in lessons]


class RefineArgs(Args):
    prompt: Prompt
    feedback: Annotated[str, capped(MAX_FEEDBACK_CHARS)]


@operation("prompts", blocking=True)
async def prompt_refine(call: Call, args: RefineArgs) -> Refined:
    """Improve a system prompt according to feedback."""
    blank("prompt", args.prompt, "give the prompt to improve")
    blank("feedback", args.feedback, "say what went wrong or what to change")
    no_host_model(call)
    forged = await with_heartbeat(
        call,
        forge.refine(
            call.session,
            args.prompt,
            args.feedback,
        ),
        "refining a prompt",
    )
    return Refined(prompt=forged.prompt, pid=forged.pid)
