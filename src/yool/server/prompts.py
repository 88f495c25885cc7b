"""Personas as MCP prompts (the `yool://personas` resource is with the others in `resources`).

Every persona the session knows is a prompt of the same name with one optional argument,
`task`. `prompts/get` answers with the persona's system prompt, followed by the lessons most
relevant to the task (when there is a task and there are lessons), then the task itself:
MCP prompts have no system role, so both are user messages. The handlers read the registry
at every call (its workspace files are re-read when they change), so personas saved or
added while the server runs are listed at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import mcp_types as types
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from yool.personas.forge import relevant_lessons
from yool.personas.registry import Persona, enriched
from yool.tools import OpError, Session

if TYPE_CHECKING:
    from yool.server.mcp import Holder

PROMPT_LESSONS = 4  # lessons added to a persona prompt for a task
DESCRIPTION_CHARS = 300
TASK_CHARS = 100_000


def _text(text: str) -> types.PromptMessage:
    return types.PromptMessage(role="user", content=types.TextContent(type="text", text=text))


def as_prompt(persona: Persona) -> types.Prompt:
    description = persona.description or f"The {persona.name} persona"
    if len(description) > DESCRIPTION_CHARS:
        description = description[:DESCRIPTION_CHARS].rstrip() + "…"
    return types.Prompt(
        name=persona.name,
        description=description,
        arguments=[
            types.PromptArgument(name="task", description="what to do", required=False),
        ],
    )


async def render(session: Session, name: str, arguments: dict[str, str]) -> types.GetPromptResult:
    """The persona's prompt (plus relevant lessons) and the task, as prompt messages."""
    await session.personas.arefresh()
    persona = session.personas.find(name)
    if persona is None:
        known = ", ".join(p.name for p in session.personas.all()) or "none"
        raise MCPError(types.INVALID_PARAMS, f"name: no persona named {name!r} (known: {known})")
    unknown = sorted(set(arguments) - {"task"})
    if unknown:
        raise MCPError(
            types.INVALID_PARAMS, f"arguments: unknown {unknown}; the one argument is 'task'"
        )
    task = (arguments.get("task") or "").strip()
    if len(task) > TASK_CHARS:
        raise MCPError(types.INVALID_PARAMS, f"task: longer than {TASK_CHARS} characters")
    lessons = await relevant_lessons(
        session, f"{persona.domain} {task}", PROMPT_LESSONS if task else 0
    )
    messages = [_text(enriched(persona.prompt, [lesson.text for lesson in lessons]))]
    if task:
        messages.append(_text(f"Task: {task}"))
    return types.GetPromptResult(description=as_prompt(persona).description, messages=messages)


def _session(holder: Holder) -> Session:
    if holder.session is None:
        raise MCPError(
            types.INTERNAL_ERROR, "the yool session is not running (starting or stopping)"
        )
    return holder.session


def add_prompts(server: MCPServer[Any], holder: Holder) -> None:
    """Serve the session's personas as prompts, listed live."""
    low = server._lowlevel_server

    async def list_prompts(
        ctx: Any, params: types.PaginatedRequestParams
    ) -> types.ListPromptsResult:
        session = _session(holder)
        await session.personas.arefresh()
        return types.ListPromptsResult(prompts=[as_prompt(p) for p in session.personas.all()])

    async def get_prompt(ctx: Any, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        try:
            return await render(_session(holder), params.name, dict(params.arguments or {}))
        except OpError as e:
            raise MCPError(types.INVALID_PARAMS, str(e)) from None

    low.add_request_handler("prompts/list", types.PaginatedRequestParams, list_prompts)
    low.add_request_handler("prompts/get", types.GetPromptRequestParams, get_prompt)
