"""Prompt forging: an LLM writes a system prompt for a domain, or improves one from feedback.

Both run as an ordinary yool agent with no tools (`yool.tools.agents.run_agent`) under a
meta-prompt, so the work is charged to the session's budget, journaled, and visible in `ps`
and `trace` like any agent. The model's answer is checked before anyone uses it (`clean`):
code fences, preambles ("Here is the prompt:") and closing chatter are stripped, and an
answer that is empty, a refusal, too short or absurdly long is refused with the reason
(`UnusablePrompt`), never saved as a prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from yool.tools.agents import SpawnArgs, run_agent, status_of
from yool.tools.table import OpError

if TYPE_CHECKING:
    from yool.memory.lessons import Lesson
    from yool.tools.session import Session

MIN_PROMPT_CHARS = 40
MAX_PROMPT_CHARS = 16_000
FORGE_STEPS = 2  # one answer; a second step only if the model stops mid-way

FORGE_SYSTEM = (
    "You write system prompts for autonomous, tool-using software agents. From a domain, "
    "a goal, the agent's tools and lessons from past work, write the system prompt the agent "
    "will run under. It must: say who the agent is and the quality bar its work must meet; "
    "prescribe a workflow that grounds itself in the facts first (read before acting), acts "
    "in small steps and verifies the result before answering; say when to use each tool; "
    "turn every lesson that applies into a concrete rule; say what the final answer must "
    "contain. Be concrete and brief: at most 250 words, plain prose or short lists. Reply "
    "with the system prompt only: no title, no preamble, no quotes, no code fences."
)
REFINE_SYSTEM = (
    "You improve system prompts for autonomous, tool-using software agents. You get the "
    "CURRENT prompt and FEEDBACK on how agents running under it did. Return the improved "
    "prompt: keep what works, fix what the feedback points at with concrete instructions, "
    "drop whatever caused the problem, and stay about as long as the current prompt (at most "
    "300 words unless it was longer). Reply with the improved prompt only: no title, no "
    "preamble, no explanation of the changes, no quotes, no code fences."
)
TOOL_NOTES = {
    "files": "files: list, read and search files in the workspace",
    "write": "write: create and edit files in the workspace",
    "kv": "kv: a persistent key-value store",
    "delegate": "delegate: hand independent sub-tasks to sub-agents",
    "code": "code: run Python or sh in a sandbox (an empty directory, no network)",
}

_FENCE = re.compile(r"^[ \t]*(`{3,}|~{3,})[^\n]*\n(.*?)^[ \t]*\1[ \t]*$", re.S | re.M)
_PREAMBLE = re.compile(
    r"^\W*(?:sure|certainly|of course|okay|ok|great|absolutely|here(?:'s| is| are)|below is|"
    r"the following|this (?:is|prompt))\b",
    re.I,
)
_HEADING = re.compile(
    r"^\s*(?:#{1,6}\s*|\*\*)\s*(?:the\s+)?(?:improved|refined|revised|new|final|updated)?\s*"
    r"(?:system\s+)?prompt\b[^\n]*$",
    re.I,
)
_CLOSING = re.compile(
    r"^\W*(?:let me know|i hope|feel free|hope this|this prompt (?:should|will)|would you like)",
    re.I,
)
_REFUSAL = re.compile(r"^\W*(?:i'?m sorry|i am sorry|i cannot|i can'?t|i am unable|as an ai)", re.I)
_RULE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,})\s*$")


class UnusablePrompt(ValueError):
    """The model's answer is not a usable system prompt; the message says why."""


@dataclass(frozen=True, slots=True)
class Forged:
    """A prompt the model wrote, and what writing it cost."""

    prompt: str
    pid: int  # the agent that wrote it (see ps / trace)
    tokens: int
    usd: float


def clean(answer: str | None) -> str:
    """The system prompt in a model's answer, without fences or chatter; or UnusablePrompt."""
    text = (answer or "").strip()
    if not text:
        raise UnusablePrompt("the model answered nothing")
    fences = _FENCE.findall(text)
    if fences:
        inner = max((body for _, body in fences), key=len).strip()
        around = _FENCE.sub("", text).strip()
        if len(inner) >= len(around):  # the fence holds the prompt; the rest is chatter
            text = inner
    if _REFUSAL.match(text):
        raise UnusablePrompt(f"the model declined: {_excerpt(text)}")
    lines = text.splitlines()

    def drop_blank() -> None:
        while lines and (not lines[0].strip() or _RULE.match(lines[0])):
            lines.pop(0)
        while lines and (not lines[-1].strip() or _RULE.match(lines[-1])):
            lines.pop()

    drop_blank()
    while lines and len(lines[0]) < 200 and (_is_preamble(lines[0]) or _HEADING.match(lines[0])):
        lines.pop(0)
        drop_blank()
    while lines and len(lines[-1]) < 300 and _CLOSING.match(lines[-1]):
        lines.pop()
        drop_blank()
    text = "\n".join(lines).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    if len(text) < MIN_PROMPT_CHARS:
        raise UnusablePrompt(
            f"the answer is too short for a system prompt ({len(text)} characters): "
            f"{_excerpt(text)}"
        )
    if len(text) > MAX_PROMPT_CHARS:
        raise UnusablePrompt(
            f"the answer is {len(text)} characters, more than {MAX_PROMPT_CHARS} for a prompt"
        )
    return text


def _is_preamble(line: str) -> bool:
    stripped = line.strip()
    return bool(_PREAMBLE.match(stripped)) and (
        stripped.endswith(":") or "prompt" in stripped.lower()
    )


def _excerpt(text: str, n: int = 80) -> str:
    line = " ".join(text.split())
    return repr(line[:n] + ("…" if len(line) > n else ""))


def forge_task(
    domain: str,
    goal: str = "",
    tools: Sequence[str] = (),
    lessons: Sequence[str] = (),
    base: str | None = None,
) -> str:
    """The forging agent's task: the brief the meta-prompt works from."""
    parts = [f"Domain: {domain.strip()}"]
    if goal.strip():
        parts.append(f"Goal: {goal.strip()}")
    if tools:
        listed = "\n".join(f"- {TOOL_NOTES.get(t, t)}" for t in tools)
        parts.append(f"The agent's tools:\n{listed}")
    else:
        parts.append("The agent has no tools: it answers from what it is given.")
    if lessons:
        parts.append("Lessons to bake in:\n" + "\n".join(f"- {text}" for text in lessons))
    if base:
        parts.append(
            "A prompt to start from (keep what is good in it, specialise it for the "
            f"domain and goal):\n<<<\n{base.strip()}\n>>>"
        )
    return "\n\n".join(parts)


def refine_task(prompt: str, feedback: str) -> str:
    return f"CURRENT PROMPT:\n<<<\n{prompt.strip()}\n>>>\n\nFEEDBACK:\n{feedback.strip()}"


async def relevant_lessons(session: Session, query: str, k: int) -> list[Lesson]:
    """The `k` lessons most relevant to `query` (none when k is 0 or the query is empty)."""
    if k <= 0 or not query.strip():
        return []
    return await session.lessons.recall(query, k=k)


async def write_prompt(
    session: Session,
    system: str,
    task: str,
    *,
    origin: dict[str, Any],
    provider: str | None = None,
    model: str | None = None,
    budget_tokens: int | None = None,
    budget_usd: float | None = None,
) -> Forged:
    """Run one no-tools agent under `system` on `task`; its cleaned answer, or OpError."""
    args = SpawnArgs.model_validate(
        {
            "task": task,
            "system": system,
            "tools": [],
            "provider": provider,
            "model": model,
            "budget_tokens": budget_tokens,
            "budget_usd": budget_usd,
            "max_steps": FORGE_STEPS,
        }
    )
    record = await run_agent(session, args, origin=origin)
    reason = (record.reason or {}).get("kind")
    if reason != "normal":
        raise OpError(
            f"prompt: the prompt-writing agent (pid {record.pid}) ended "
            f"{status_of(record).reason}; nothing was written (raise the budget or retry)"
        )
    try:
        prompt = clean(record.answer)
    except UnusablePrompt as e:
        raise OpError(
            f"prompt: the model's answer is not a usable prompt ({e}; pid {record.pid}); "
            "try again, or another model"
        ) from None
    return Forged(prompt=prompt, pid=record.pid, tokens=record.tokens, usd=round(record.usd, 6))


async def forge(
    session: Session,
    domain: str,
    *,
    goal: str = "",
    tools: Sequence[str] = (),
    lessons: Sequence[str] = (),
    base: str | None = None,
    **options: Any,
) -> Forged:
    """A system prompt for `domain` (and `goal`), baking in `lessons`; see `write_prompt`."""
    task = forge_task(domain, goal, tools, lessons, base)
    return await write_prompt(session, FORGE_SYSTEM, task, origin={"forge": domain[:80]}, **options)


async def refine(session: Session, prompt: str, feedback: str, **options: Any) -> Forged:
    """`prompt` improved according to `feedback`; see `write_prompt`."""
    return await write_prompt(
        session, REFINE_SYSTEM, refine_task(prompt, feedback), origin={"refine": True}, **options
    )
