"""Team operations: a supervised team of agents, and a fan-out of many tasks.

`supervise` starts an OTP-style supervisor (`yool.userland.supervisor`) under the session
process; its children are react agents. Each incarnation of a child joins the session when
it starts: it is granted its capabilities from the session (exactly as `spawn` would), and
tracked as an agent record (origin `{"team": supervisor pid, "id": child id}`), so `ps`,
`wait`, `send` and `signal` see it and its answer reaches the session. The supervisor is
tracked too: `ps` lists it, `wait` on its pid waits for the whole team to stop, and
`signal kill` on it stops the team (its children are linked to it).

`fanout` runs many tasks as ordinary agents with bounded concurrency and blocks until all
have ended, sending progress; if the caller cancels, every agent it started is killed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field

from yool.kernel import KernelError, Sys
from yool.kernel.kernel import PROCESS_RIGHTS
from yool.tools.agents import (
    MAX_TASK_CHARS,
    SpawnArgs,
    ToolName,
    _fields,
    agent_spec,
    budget_of,
    grant,
    kill_all,
    start_agent,
    status_of,
)
from yool.tools.introspection import COMPACT
from yool.tools.session import AgentRecord, Session
from yool.tools.table import Args, Call, OpError, Result, operation
from yool.userland.agents import AgentSpec
from yool.userland.agents.react import react_agent
from yool.userland.supervisor import ChildSpec, SpecError, SupervisorSpec, start_supervisor

MAX_TEAM = 32
MAX_FANOUT = 256
JOIN_TIMEOUT_S = 10.0  # for a team's first children to start
PERIOD_S = 30.0  # a team's restart intensity is counted over this window

Join = Callable[[int], tuple[str, AgentSpec]]


# -- shared options -----------------------------------------------------------------------


class Options(Args):
    """Spawn options every agent of a team or fan-out shares (see spawn)."""

    provider: str | None = None
    tools: list[ToolName] = Field(["files"])
    paths: list[str] = Field(["."], description="workspace paths it may read")
    budget_tokens: int | None = Field(None, ge=0, description="per agent")

    def spawn_args(self, task: str, persona: str | None, *, exclude: set[str]) -> SpawnArgs:
        shared = self.model_dump(exclude=exclude)
        return SpawnArgs.model_validate({**shared, "task": task, "persona": persona})


# -- supervise ----------------------------------------------------------------------------


class TeamAgent(Args):
    model_config = COMPACT
    id: str = Field(min_length=1, max_length=64)
    task: str = Field(min_length=1, max_length=MAX_TASK_CHARS)
    restart: Literal["permanent", "transient", "temporary"] = "transient"
    persona: str | None = None


class SuperviseArgs(Options):
    name: str = Field(min_length=1, max_length=64)
    agents: Annotated[list[TeamAgent], Field(min_length=1, max_length=MAX_TEAM)]
    strategy: Literal["one_for_one", "one_for_all", "rest_for_one"] = "one_for_one"
    intensity: int = Field(3, ge=0, le=100, description="max restarts in 30 s")


class Supervised(Result):
    model_config = COMPACT
    pid: int  # the supervisor: wait on it for the team, signal it to stop the team
    children: dict[str, int]  # child id -> pid of its first incarnation


@dataclass(slots=True)
class _Team:
    """What the joins of one team share: the supervisor's pid and who has started."""

    name: str
    pid: int = 0
    started: dict[str, list[int]] = field(default_factory=dict)  # id -> pids, in start order
    first: asyncio.Event = field(default_factory=asyncio.Event)
    size: int = 0

    def joined(self, child_id: str, pid: int) -> int:
        pids = self.started.setdefault(child_id, [])
        pids.append(pid)
        if len(self.started) >= self.size:
            self.first.set()
        return len(pids)


async def team_agent(sys: Sys, join: Join) -> None:
    """The image of a team member: join the session (caps, record), then run as an agent."""
    task, spec = join(sys.pid)
    await react_agent(sys, task, spec)


def _joiner(session: Session, team: _Team, agent: TeamAgent, args: SpawnArgs) -> Join:
    def join(pid: int) -> tuple[str, AgentSpec]:
        driver, llm = session.llm_device(args.provider)
        spec = agent_spec(session, args, driver, "")
        caps = grant(session, args, llm)
        reply_to = session.sys.self_ref(("send",))
        caps.append(reply_to)
        k = session.kernel
        try:
            for ref in caps:
                k.caps.transfer(session.pid, ref, pid)
        except KernelError:
            for ref in caps:
                cap = k.caps.lookup(ref)
                if cap is not None and cap.owner == session.pid:
                    session.sys.revoke(ref)
            raise
        ref = k.caps.mint(session.pid, "process", pid, PROCESS_RIGHTS)
        session.sys.monitor(ref)
        start = team.joined(agent.id, pid)
        session.track(
            AgentRecord(
                pid=pid,
                task=args.task,
                spawn=args.model_dump(),
                persona=args.persona,
                provider=args.provider or session.policy.provider,
                model=args.model or session.policy.model,
                origin={"team": team.pid, "id": agent.id, "start": start},
                ref=ref,
            )
        )
        return args.task, AgentSpec(**{**_fields(spec), "reply_to": reply_to})

    return join


def _child_spec(
    session: Session, team: _Team, agent: TeamAgent, options: SuperviseArgs
) -> ChildSpec:
    args = options.spawn_args(agent.task, agent.persona, exclude=_TEAM_ONLY)
    session.llm_device(args.provider)  # a missing provider fails here, not in the child
    if args.persona is not None:
        session.persona_prompt(args.persona)
    return ChildSpec(
        id=agent.id,
        image=team_agent,
        args=(_joiner(session, team, agent, args),),
        restart=agent.restart,
        budget=budget_of(args),
        deadline_s=args.deadline_s,
        shutdown_s=1.0,
    )


_TEAM_ONLY = {"name", "agents", "strategy", "intensity"}


@operation("agents")
async def supervise(call: Call, args: SuperviseArgs) -> Supervised:
    """Start a team of agents under a supervisor that restarts them; returns their pids."""
    session = call.session
    await session.warm(args.provider)
    ids = [a.id for a in args.agents]
    if len(set(ids)) != len(ids):
        raise OpError(f"agents: each agent needs its own id (got {ids})")
    team = _Team(args.name, size=len(ids))
    try:
        spec = SupervisorSpec(
            [_child_spec(session, team, a, args) for a in args.agents],
            strategy=args.strategy,
            intensity=args.intensity,
            period_s=PERIOD_S,
        )
        sup = start_supervisor(session.sys, spec, name=f"team:{args.name}", monitor=True)
    except (SpecError, KernelError) as e:
        raise OpError(f"agents: {e}") from None
    team.pid = sup.pid
    record = session.track(
        AgentRecord(
            pid=sup.pid,
            task=f"team {args.name}: {', '.join(ids)}",
            spawn=args.model_dump(),
            provider="",
            origin={"supervisor": args.name, "strategy": args.strategy},
            ref=sup.ref,
        )
    )
    assert record.done is not None
    first = asyncio.ensure_future(team.first.wait())
    either: set[asyncio.Future[Any]] = {first, record.done}
    try:
        await asyncio.wait(either, timeout=JOIN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    finally:
        first.cancel()
    if record.done.done():
        status = status_of(session.record(sup.pid))
        raise OpError(f"agents: the team's supervisor {sup.pid} exited: {status.reason}")
    return Supervised(pid=sup.pid, children={cid: pids[0] for cid, pids in team.started.items()})


# -- fanout -------------------------------------------------------------------------------


class FanoutArgs(Options):
    tasks: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=MAX_TASK_CHARS)]],
        Field(min_length=1, max_length=MAX_FANOUT, description="one agent per task"),
    ]
    persona: str | None = None
    max_concurrency: int = Field(4, ge=1, le=64)
    timeout_s: float = Field(600.0, gt=0, le=86_400)


class FanoutItem(Result):
    pid: int | None  # None: never started (the fan-out timed out first)
    status: str  # running | stopped | exited | interrupted | not_started
    result: str | None = None  # completed, stalled, step_limit, quota(...), fault(...)
    reason: str | None = None
    answer: str | None = None


class Fanout(Result):
    model_config = COMPACT
    done: bool  # every task's agent has ended
    completed: int  # agents whose result is "completed"
    items: list[dict[str, Any]]  # FanoutItem per task, in task order


_FANOUT_ONLY = {"tasks", "persona", "max_concurrency", "timeout_s"}


@operation("agents", blocking=True)
async def fanout(call: Call, args: FanoutArgs) -> Fanout:
    """Run one agent per task, at most max_concurrency at once; blocks with progress."""
    session = call.session
    # bad options fail here, before any agent starts
    specs = [args.spawn_args(t, args.persona, exclude=_FANOUT_ONLY) for t in args.tasks]
    await session.warm(specs[0].provider)
    session.llm_device(specs[0].provider)
    records: dict[int, AgentRecord] = {}
    gate = asyncio.Semaphore(args.max_concurrency)

    async def run(index: int) -> None:
        async with gate:
            record = start_agent(session, specs[index], origin={"fanout": index})
            records[index] = record
            if record.done is not None:
                await asyncio.shield(record.done)

    start = time.monotonic()
    runners = [asyncio.ensure_future(run(i)) for i in range(len(specs))]
    try:
        pending = set(runners)
        deadline = start + args.timeout_s
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            done, pending = await asyncio.wait(
                pending, timeout=min(session.policy.heartbeat_s, left)
            )
            for task in done:
                error = task.exception()
                if error is not None:
                    raise error
            if pending:
                n_ended = len(specs) - len(pending)
                await call.progress(n_ended, len(specs), f"{n_ended}/{len(specs)} tasks ended")
    except BaseException:
        kill_all(session, records.values())
        raise
    finally:
        for task in runners:
            task.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
    items: list[dict[str, Any]] = []
    for i in range(len(specs)):
        record = records.get(i)
        if record is None:
            items.append(FanoutItem(pid=None, status="not_started").model_dump())
            continue
        st = status_of(session.record(record.pid))
        items.append(
            FanoutItem(
                pid=st.pid, status=st.status, result=st.result, reason=st.reason, answer=st.answer
            ).model_dump()
        )
    ended = [it for it in items if it["status"] not in ("running", "stopped", "not_started")]
    return Fanout(
        done=len(ended) == len(items),
        completed=sum(1 for it in items if it["result"] == "completed"),
        items=items,
    )
