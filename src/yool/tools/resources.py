"""Read-only views of a session for MCP resources: agents, one agent, transcripts, trace,
lessons, personas.

Each view is JSON-able data built from the session's agent records and the kernel's events
(the live ring, or the store for agents of earlier runs); the server module only registers
them. A view of an unknown pid raises `OpError`, naming the pid.
"""

from __future__ import annotations

from typing import Any

from yool.personas.registry import declared_tools
from yool.tools.agents import status_of
from yool.tools.introspection import recent_events
from yool.tools.session import Session
from yool.tools.table import OpError
from yool.userland.agents.react import TRANSCRIPT_CHARS, TURN

AGENTS_LIMIT = 200
TRACE_EVENTS = 100
TRANSCRIPT_TURNS = 500
LESSONS_LIMIT = 200


def agents_view(session: Session) -> dict[str, Any]:
    """Every agent this session knows (newest first, at most AGENTS_LIMIT) and its spend."""
    rows = [
        status_of(session.record(pid), answer=False, task_chars=80).model_dump()
        for pid in sorted(session.agents, reverse=True)[:AGENTS_LIMIT]
    ]
    return {"agents": rows, "session": session.usage()}


def parse_pid(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        raise OpError(f"pid: {text!r} is not a pid (a whole number, see yool://agents)") from None
    if pid < 0:
        raise OpError(f"pid: {pid} is not a pid (a whole number, see yool://agents)")
    return pid


def agent_view(session: Session, pid: int) -> dict[str, Any]:
    """One agent's status, answer included."""
    return status_of(session.record(pid)).model_dump()


async def transcript_view(session: Session, pid: int) -> dict[str, Any]:
    """An agent's turns (role, text, tool names), from the live ring or the store."""
    session.record(pid)  # an unknown pid is an error, not an empty transcript
    events, source = await recent_events(
        session, pid, TRANSCRIPT_TURNS * 4, frozenset({"log"}), chars=TRANSCRIPT_CHARS
    )
    turns = [
        {
            "seq": e["seq"],
            "ts": e["ts"],
            "role": e["data"].get("role"),
            "text": e["data"].get("text", ""),
            "tools": e["data"].get("tools", []),
        }
        for e in events
        if isinstance(e["data"], dict) and e["data"].get("message") == TURN
    ]
    return {"pid": pid, "source": source, "turns": turns[-TRANSCRIPT_TURNS:]}


async def trace_view(session: Session) -> dict[str, Any]:
    """The kernel's most recent events."""
    events, source = await recent_events(session, None, TRACE_EVENTS, None)
    return {"source": source, "events": events}


async def lessons_view(session: Session) -> dict[str, Any]:
    """The newest lessons this workspace sees (its own and global ones), at most LESSONS_LIMIT."""
    lessons = await session.lessons.visible(LESSONS_LIMIT)
    return {"workspace": session.lessons.here, "lessons": [x.to_json() for x in lessons]}


async def personas_view(session: Session) -> dict[str, Any]:
    """Every persona with its prompt, and the files skipped (`yool://personas`)."""
    await session.personas.arefresh()
    rows = [
        {
            "name": p.name,
            "description": p.description,
            "domain": p.domain,
            "tools": declared_tools(p),
            "model": p.model,
            "source": p.source,
            "path": p.path,
            "prompt": p.prompt,
        }
        for p in session.personas.all()
    ]
    return {"personas": rows, "warnings": session.personas.warnings}


def metrics_text(session: Session) -> str:
    """The kernel's metrics in Prometheus text format."""
    return session.kernel.prometheus()
