"""Persona operations: list, hire, save and specialise personas.

`persona_hire` starts an agent whose system prompt is the persona's plus the lessons most
relevant to the task (and to the persona's domain), and says which lessons it injected; the
persona's tools bound what the hire may be granted (`write_paths` only for a persona that
may write). `persona_save` stores a persona in the database, optionally also as
`.yool/personas/<name>.md`. `persona_specialize` forges a prompt from memory (the lessons
recalled for a domain and goal, on top of an optional base persona) and saves it.
Where personas come from, and which wins a name clash, is `yool.personas.registry`'s story.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from pydantic import Field

from yool.personas import forge
from yool.personas.registry import (
    GROUPS,
    Persona,
    PersonaFileError,
    check_name,
    declared_tools,
    enriched,
    map_tools,
    resolve_model,
)
from yool.tools.agents import MAX_TASK_CHARS, SpawnArgs, ToolName, start_agent
from yool.tools.prompts import (
    Domain,
    Goal,
    Prompt,
    blank,
    capped,
    forge_from_memory,
    no_host_model,
    within,
)
from yool.tools.session import Session
from yool.tools.table import Args, Call, OpError, Result, operation

LIST_DESCRIPTION_CHARS = 200

Name = Annotated[str, capped(64)]


class PersonaInfo(Result):
    name: str
    description: str
    domain: str | None = None
    tools: list[str]  # yool groups; "write": files with write access
    unavailable: list[str] | None = None  # declared tools yool does not have
    model: str | None = None
    source: str  # workspace | claude | saved | builtin
    path: str | None = None
    prompt: str | None = None


def info(persona: Persona, *, prompt: bool = False, chars: int | None = None) -> PersonaInfo:
    description = persona.description
    if chars is not None and len(description) > chars:
        description = description[:chars].rstrip() + "…"
    return PersonaInfo(
        name=persona.name,
        description=description,
        domain=persona.domain or None,
        tools=[t for t in declared_tools(persona) if t in (*GROUPS, "write")],
        unavailable=list(persona.unavailable) or None,
        model=persona.model,
        source=persona.source,
        path=persona.path,
        prompt=persona.prompt if prompt else None,
    )


def _name(name: str) -> str:
    try:
        return check_name(name)
    except PersonaFileError as e:
        raise OpError(str(e)) from None


# -- list -----------------------------------------------------------------------------------


class ListArgs(Args):
    name: str | None = None


class PersonaList(Result):
    personas: list[PersonaInfo]
    warnings: list[str] | None = None  # persona files skipped, and why


@operation("personas", read_only=True)
async def persona_list(call: Call, args: ListArgs) -> PersonaList:
    """List personas; with name, that one and its prompt."""
    registry = call.session.personas
    await registry.arefresh()
    if args.name is not None:
        found = [info(registry.get(args.name), prompt=True)]
    else:
        found = [info(p, chars=LIST_DESCRIPTION_CHARS) for p in registry.all()]
    return PersonaList(personas=found, warnings=registry.warnings or None)


# -- hire -----------------------------------------------------------------------------------


class HireArgs(Args):
    name: Name
    task: Annotated[str, capped(MAX_TASK_CHARS)]
    k: Annotated[int, within(0, 20)] = 4
    tools: list[ToolName] | None = None  # default: the persona's
    write_paths: list[str] = Field(default_factory=list)
    provider: str | None = None
    budget_usd: Annotated[float, within(0, 1e9)] | None = None


class Hired(Result):
    pid: int
    lessons: list[int]  # ids of the lessons injected


def bounded_tools(
    persona: Persona, asked: Sequence[str] | None, write_paths: list[str]
) -> list[str]:
    """The tools a hire gets: what was asked (default: all the persona's), never more."""
    tools = list(persona.tools) if asked is None else list(dict.fromkeys(asked))
    extra = [t for t in tools if t not in persona.tools]
    if extra:
        allowed = list(persona.tools) or "no tools"
        raise OpError(
            f"tools: persona {persona.name!r} may use only {allowed}; drop {extra} "
            "(or save the persona with more tools)"
        )
    if write_paths and not persona.writes:
        raise OpError(
            f"write_paths: persona {persona.name!r} may not write files; hire it read-only "
            "or save it with the 'write' tool"
        )
    return tools


@operation("personas")
async def persona_hire(call: Call, args: HireArgs) -> Hired:
    """Start an agent as a persona, plus the k lessons most relevant to the task."""
    session = call.session
    blank("task", args.task, "say what the persona should do")
    await session.personas.arefresh()
    persona = session.personas.get(args.name)
    tools = bounded_tools(persona, args.tools, args.write_paths)
    provider = (args.provider or session.policy.provider).strip().lower()
    lessons = await forge.relevant_lessons(session, f"{persona.domain} {args.task}", args.k)
    ids = [lesson.id for lesson in lessons]
    spawn_args = SpawnArgs.model_validate(
        {
            "task": args.task,
            "system": enriched(persona.prompt, [lesson.text for lesson in lessons]),
            "provider": args.provider,
            "model": resolve_model(persona.model, provider),
            "tools": tools,
            "write_paths": args.write_paths,
            "budget_usd": args.budget_usd,
        }
    )
    await session.warm(args.provider)
    origin = {"persona": persona.name, "lessons": ids}
    record = start_agent(session, spawn_args, origin=origin, persona=persona.name)
    return Hired(pid=record.pid, lessons=ids)


# -- save -----------------------------------------------------------------------------------


class SaveArgs(Args):
    name: Name
    prompt: Prompt
    description: Annotated[str, capped(2000)] = ""
    domain: Domain = ""
    tools: list[Annotated[str, capped(64)]] | None = None  # default: all
    model: Annotated[str, capped(200)] | None = None
    file: bool = False  # also write .yool/personas/<name>.md


class Saved(Result):
    source: str  # the definition in effect: saved, or the file that shadows it
    path: str | None = None  # the file written, or the workspace file that takes precedence


async def _store(session: Session, persona: Persona, write_file: bool) -> Saved:
    registry = session.personas
    saved = await registry.save(persona)
    if write_file:
        written = await registry.write_file(saved)
        return Saved(source="workspace", path=str(written.relative_to(session.workspace)))
    effective = registry.find(saved.name) or saved
    return Saved(source=effective.source, path=effective.path)


@operation("personas")
async def persona_save(call: Call, args: SaveArgs) -> Saved:
    """Save a persona; file: also as .yool/personas/<name>.md."""
    name = _name(args.name)
    blank("prompt", args.prompt, "give the persona's system prompt")
    tools, writes, unknown = map_tools(args.tools)
    if unknown:
        raise OpError(
            f"tools: unknown {list(unknown)}; use files, write, kv, delegate, code (or Claude "
            "Code's Read, Grep, Glob, LS, Write, Edit, MultiEdit, Task, Bash)"
        )
    persona = Persona(
        name=name,
        prompt=args.prompt,
        description=args.description.strip(),
        domain=args.domain.strip(),
        tools=tools,
        model=(args.model or "").strip() or None,
        source="saved",
        writes=writes,
    )
    return await _store(call.session, persona, args.file)


# -- specialize -----------------------------------------------------------------------------


class SpecializeArgs(Args):
    name: Name
    domain: Domain
    goal: Goal = ""
    base: str | None = None
    k: Annotated[int, within(0, 30)] = 8


class Specialized(Result):
    source: str  # saved, or the workspace file that shadows it (see persona_list)
    prompt: str
    lessons: list[int]  # ids of the lessons baked in
    pid: int  # the agent that wrote the prompt (its spend: ps)


@operation("personas", blocking=True)
async def persona_specialize(call: Call, args: SpecializeArgs) -> Specialized:
    """Forge and save a persona for a domain and goal from k recalled lessons."""
    session = call.session
    name = _name(args.name)
    blank("domain", args.domain, "name the persona's domain, e.g. 'SQL migrations'")
    no_host_model(call)
    base: Persona | None = None
    if args.base is not None:
        await session.personas.arefresh()
        base = session.personas.get(args.base)
    tools, writes, missing = (
        (base.tools, base.writes, base.unavailable) if base else map_tools(None)
    )
    template = base or Persona(name=name, prompt="", tools=tools, writes=writes)
    forged, lesson_ids = await forge_from_memory(
        call,
        args.domain,
        args.goal,
        [t for t in declared_tools(template) if t in (*GROUPS, "write")],
        args.k,
        f"forging persona {name}",
        base=base.prompt if base else None,
    )
    persona = Persona(
        name=name,
        prompt=forged.prompt,
        description=args.goal.strip() or f"Specialist in {args.domain.strip()}",
        domain=args.domain.strip(),
        tools=tools,
        model=base.model if base else None,
        source="saved",
        writes=writes,
        unavailable=missing,
    )
    saved = await _store(session, persona, False)
    return Specialized(
        source=saved.source,
        prompt=forged.prompt,
        lessons=lesson_ids,
        pid=forged.pid,
    )
