"""Distillation: at most three short reusable lessons from a finished agent's transcript.

The transcript (its `turn` log events: role, text, tools called) is handed to a model under
`DISTILL_SYSTEM`, which asks for tactics and gotchas that would help on a similar task next
time, not a recap. `parse_lessons` reads the answer robustly (a JSON list, possibly fenced or
wrapped in prose, or bulleted/numbered lines) and keeps at most `MAX_LESSONS` usable ones:
recaps ("The agent read...", "In this session..."), refusals and over-long items are dropped,
duplicates (after normalising) collapse. The model is called by the caller's `think`
function, so this module needs no kernel: the `lesson_learn` operation passes one that runs a
no-tools agent through `yool.tools.agents.run_agent`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from yool.memory.lessons import normalise

__all__ = [
    "DISTILL_SYSTEM",
    "MAX_LESSONS",
    "parse_lessons",
    "transcript_text",
]

MAX_LESSONS: Final = 3
MAX_LESSON_CHARS: Final = 200  # longer items are explanations, not lessons
MIN_LESSON_CHARS: Final = 12
TRANSCRIPT_CHARS: Final = 12_000  # of transcript shown to the model (its start and end)
TURN_CHARS: Final = 1_500  # of one turn's text

DISTILL_SYSTEM: Final = (
    "You distil a finished AI agent's session into AT MOST 3 short, REUSABLE lessons: "
    "concrete tactics or gotchas that would help an agent on a similar task next time. "
    "Not a recap of what happened, not facts about this one task. Each lesson is one "
    "imperative sentence of at most 140 characters. Answer with a JSON array of strings "
    'only, e.g. ["Run the failing test alone before editing code."]. If nothing is '
    "genuinely reusable, answer []."
)

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_BULLET = re.compile(r"^\s*(?:[-*•·]+|\(?\d{1,2}[.):]|lesson\s*\d*\s*[:.)-])\s*", re.I)
_RECAP = re.compile(
    r"^(?:the (?:agent|assistant|user|model|task|session)\b|this (?:agent|session|task)\b"
    r"|in (?:this|the) (?:session|task|transcript|run)\b|during (?:this|the) (?:session|task)"
    r"|i |we |here (?:are|is)\b|summary\b|overall\b|the agent'?s?\b|lessons?\s*:?$"
    r"|none\b|no (?:reusable )?lessons?\b|nothing\b)",
    re.I,
)


def transcript_text(turns: Iterable[Mapping[str, Any]]) -> str:
    """The turns as `role: text [tools: ...]` lines; a long one keeps its start and its end
    (the task, and how it ended), cut in the middle."""
    lines: list[str] = []
    for turn in turns:
        role = str(turn.get("role") or "?")
        text = " ".join(str(turn.get("text") or "").split())
        if len(text) > TURN_CHARS:
            text = text[:TURN_CHARS] + "…"
        tools = [str(t) for t in turn.get("tools") or ()]
        if tools:
            text += f" [tools: {', '.join(tools)}]"
        if text:
            lines.append(f"{role}: {text}")
    out = "\n".join(lines)
    if len(out) > TRANSCRIPT_CHARS:
        half = TRANSCRIPT_CHARS // 2
        out = out[:half] + "\n…[middle of the transcript left out]…\n" + out[-half:]
    return out


def distill_task(transcript: str) -> str:
    return f"TRANSCRIPT OF A FINISHED AGENT SESSION:\n<<<\n{transcript}\n>>>"


def _json_items(answer: str) -> list[Any] | None:
    """The list in `answer` if it holds one as JSON: whole, fenced, or the first [...]."""
    candidates = [answer.strip(), *(m.group(1).strip() for m in _FENCE.finditer(answer))]
    start, end = answer.find("["), answer.rfind("]")
    if 0 <= start < end:
        candidates.append(answer[start : end + 1])
    for text in candidates:
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(value, dict):
            value = value.get("lessons")
        if isinstance(value, list):
            return value
    return None


def _item_text(item: Any) -> str | None:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        for key in ("lesson", "text", "tactic", "gotcha"):
            if isinstance(item.get(key), str):
                return str(item[key])
    return None


def usable(text: str) -> str | None:
    """`text` as a lesson (bullets, quotes and spacing cleaned), or None if it is not one."""
    line = _BULLET.sub("", " ".join(text.split())).strip().strip("\"'`“”‘’").strip()
    line = re.sub(r"^\*\*(.+?)\*\*:?\s*", r"\1 ", line).strip()  # **Bold:** lead-ins
    if not MIN_LESSON_CHARS <= len(line) <= MAX_LESSON_CHARS:
        return None
    if _RECAP.match(line) or not normalise(line):
        return None
    return line


def parse_lessons(answer: str | None) -> list[str]:
    """At most MAX_LESSONS usable, distinct lessons from a model's answer (see the module)."""
    if not answer or not answer.strip():
        return []
    items = _json_items(answer)
    texts: list[str]
    if items is not None:
        texts = [t for t in (_item_text(i) for i in items) if t is not None]
    else:
        texts = [line for line in answer.splitlines() if line.strip()]
    out: dict[str, str] = {}
    for text in texts:
        lesson = usable(text)
        if lesson is not None:
            out.setdefault(normalise(lesson), lesson)
        if len(out) == MAX_LESSONS:
            break
    return list(out.values())
