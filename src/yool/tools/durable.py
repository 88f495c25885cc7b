"""Durable agents: resume, replay and fork an agent from its journal, across server restarts.

Every LLM reply, tool read and spawn of an agent is journaled in the store on `YOOL_HOME`
as it happens, so a run outlives the server that made it:

- `resume` continues an agent a dead server left `interrupted`: its journaled steps are
  answered from the journal (not sent again, not paid again), then it runs live;
- `replay` runs a recorded agent again from its journal alone, with zero live calls;
- `fork` replays an agent's first steps, then continues live (with a new instruction).

The new agent is an ordinary agent of this session (wait, signal, ps work on it); its
record's `origin` names the agent it came from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from yool.kernel import Child, KernelError
from yool.kernel.kernel import ReplayPlan
from yool.tools.agents import MAX_TASK_CHARS, SpawnArgs, budget_of, start_agent
from yool.tools.session import UNFINISHED, AgentRecord, Session, llm_steps
from yool.tools.table import Args, Call, OpError, Result, operation
from yool.userland.agents import AgentSpec

IMAGE = "yool.react"
_PENDING = 0  # `resumed_as` while a resume is starting: a second one is refused meanwhile


class PidArgs(Args):
    pid: int = Field(description="the agent to run again (see ps with all=true)")


class ForkArgs(Args):
    pid: int = Field(description="the agent to fork")
    steps: int = Field(ge=0, description="LLM steps to take from its journal")
    instruction: Annotated[str, Field(min_length=1, max_length=MAX_TASK_CHARS)] | None = Field(
        None, description="a user turn added before the first live step"
    )


class Rerun(Result):
    pid: int  # the new agent: wait on it
    origin: int  # the agent it came from
    journaled: int  # LLM steps answered from the journal, not sent to the provider


@operation("agents")
async def resume(call: Call, args: PidArgs) -> Rerun:
    """Continue an agent interrupted by a server restart from its journal; returns its pid."""
    session = call.session
    record = session.record(args.pid)
    if record.status in UNFINISHED:
        raise OpError(f"pid: agent {args.pid} is {record.status}; only an interrupted one resumes")
    if record.status != "interrupted":
        raise OpError(
            f"pid: agent {args.pid} has {record.status}; use replay or fork to run it again"
        )
    if record.resumed_as is not None:
        again = f"was resumed as {record.resumed_as}"
        if record.resumed_as == _PENDING:
            again = "is being resumed"
        raise OpError(f"pid: agent {args.pid} {again}; wait on that one, or fork {args.pid}")
    record.resumed_as = _PENDING
    try:
        steps = await _journaled_steps(session, record)
        plan = await _plan(session, record, strict=False)
        new = _start(session, record, plan, {"resumed": record.pid})
    except BaseException:
        record.resumed_as = None
        raise
    record.resumed_as = new.pid
    session._persist(record)
    return Rerun(pid=new.pid, origin=record.pid, journaled=len(steps))


@operation("agents")
async def replay(call: Call, args: PidArgs) -> Rerun:
    """Re-run a recorded agent from its journal alone: no provider call; returns its pid."""
    session = call.session
    record = session.record(args.pid)
    if record.status in UNFINISHED:
        raise OpError(f"pid: agent {args.pid} is {record.status}; replay it once it ends, or fork")
    steps = await _journaled_steps(session, record)
    plan = await _plan(session, record, strict=True)
    new = _start(session, record, plan, {"replayed": record.pid})
    return Rerun(pid=new.pid, origin=record.pid, journaled=len(steps))


@operation("agents")
async def fork(call: Call, args: ForkArgs) -> Rerun:
    """Replay an agent's first `steps` LLM steps, then continue live (optional instruction)."""
    session = call.session
    record = session.record(args.pid)
    steps = await _journaled_steps(session, record)
    if args.steps >= len(steps):
        raise OpError(
            f"steps: agent {args.pid} has {len(steps)} journaled LLM step(s); "
            f"fork at 0..{len(steps) - 1}"
        )
    # Keep the ops before the (steps+1)-th LLM reply: its request and all after it go live.
    plan = await _plan(session, record, strict=False, keep_ops=steps[args.steps])
    origin: dict[str, Any] = {"forked": record.pid, "steps": args.steps}
    if args.instruction is not None:
        origin["instruction"] = args.instruction[:200]
    new = _start(session, record, plan, origin, note=args.instruction, note_at=args.steps)
    return Rerun(pid=new.pid, origin=record.pid, journaled=args.steps)


# -- helpers -------------------------------------------------------------------------------


async def _journaled_steps(session: Session, record: AgentRecord) -> list[int]:
    """The ops of the agent's journaled LLM replies; an OpError if there are none."""
    if record.remote is not None:
        node, pid = record.remote
        raise OpError(
            f"pid: agent {record.pid} ran on node {node!r} (as pid {pid}) and its journal is "
            "there: resume, replay or fork it through that node's server"
        )
    entries = await session.kernel.journal.load(record.pid)
    steps = llm_steps((op, e.result) for op, e in entries.items())
    if not steps:
        raise OpError(
            f"pid: agent {record.pid} has no journaled LLM step to run from; spawn it again"
        )
    return steps


async def _plan(
    session: Session, record: AgentRecord, *, strict: bool, keep_ops: int | None = None
) -> ReplayPlan:
    await session.warm(record.provider or None)
    try:
        return await session.kernel.plan_replay(record.pid, IMAGE, strict=strict, keep_ops=keep_ops)
    except KernelError as e:
        raise OpError(f"pid: {e}") from None


def _start(
    session: Session,
    record: AgentRecord,
    plan: ReplayPlan,
    origin: dict[str, Any],
    *,
    note: str | None = None,
    note_at: int = 0,
) -> AgentRecord:
    """Start the new agent as the original was started, its journal answering what it can."""
    try:
        args = SpawnArgs(**record.spawn)
    except ValueError as e:
        raise OpError(f"pid: agent {record.pid}'s spawn arguments no longer load: {e}") from None

    def spawn(run_args: tuple[str, AgentSpec], caps: list[str]) -> Child:
        task, spec = run_args
        if note:
            spec = dataclasses.replace(spec, note=note, note_at=note_at)
        return session.kernel.spawn_replay(
            plan,
            parent=session.pid,
            args=(task, spec),
            caps=caps,
            name=f"agent:{next(iter(origin))}:{record.pid}",
            budget=budget_of(args),
            monitor=True,
            priority=args.priority,
            deadline=args.deadline_s,
        )

    replayer: Callable[[tuple[str, AgentSpec], list[str]], Child] = spawn
    return start_agent(session, args, origin=origin, replay=replayer)
