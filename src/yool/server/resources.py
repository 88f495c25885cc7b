"""The MCP resources: read-only views of the session (agents, transcripts, trace, lessons,
metrics).

`yool://agents`, `yool://agents/{pid}`, `yool://agents/{pid}/transcript`, `yool://trace` and
`yool://lessons` are JSON; `yool://metrics` is Prometheus text. The views live in
`yool.tools.resources`; this module only registers them and turns a view's `OpError` into a
resource error.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError

from yool.tools import OpError, Session
from yool.tools import resources as views

if TYPE_CHECKING:
    from yool.server.mcp import Holder

JSON = "application/json"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


async def _view(holder: Holder, fn: Callable[[Session], Awaitable[Any] | Any]) -> Any:
    try:
        out = fn(holder.get())
        return await out if isinstance(out, Awaitable) else out
    except OpError as e:
        raise ResourceError(str(e)) from None


def add_resources(server: MCPServer[Any], holder: Holder) -> None:
    """Register the resources on `server`; each reads the session `holder` holds."""

    @server.resource(
        "yool://agents", name="agents", description="Agents: status, spend", mime_type=JSON
    )
    async def agents() -> str:
        return _dumps(await _view(holder, views.agents_view))

    @server.resource(
        "yool://agents/{pid}", name="agent", description="One agent's status", mime_type=JSON
    )
    async def agent(pid: str) -> str:
        return _dumps(await _view(holder, lambda s: views.agent_view(s, views.parse_pid(pid))))

    @server.resource(
        "yool://agents/{pid}/transcript",
        name="transcript",
        description="An agent's turns: role, text, tools",
        mime_type=JSON,
    )
    async def transcript(pid: str) -> str:
        return _dumps(await _view(holder, lambda s: views.transcript_view(s, views.parse_pid(pid))))

    @server.resource(
        "yool://trace", name="trace", description="Recent kernel events", mime_type=JSON
    )
    async def trace() -> str:
        return _dumps(await _view(holder, views.trace_view))

    @server.resource(
        "yool://lessons",
        name="lessons",
        description="Lessons this workspace sees, newest first",
        mime_type=JSON,
    )
    async def lessons() -> str:
        return _dumps(await _view(holder, views.lessons_view))

    @server.resource(
        "yool://personas",
        name="personas",
        description="Personas: prompts, tools, where each comes from",
        mime_type=JSON,
    )
    async def personas() -> str:
        return _dumps(await _view(holder, views.personas_view))

    @server.resource(
        "yool://metrics",
        name="metrics",
        description="Kernel metrics (Prometheus text)",
        mime_type="text/plain",
    )
    async def metrics() -> str:
        return str(await _view(holder, views.metrics_text))
