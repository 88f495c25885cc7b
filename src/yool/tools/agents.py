"""Agent operations: spawn sub-agents, wait for them, talk to them, list and signal them.

Every agent is a `yool.react` process under the session process: it holds derived copies
of the session's devices (the LLM, the workspace paths it was granted, the key-value store,
the code sandbox), a budget carved from the session's, and sends its `AgentResult` to the
session.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from yool.kernel import Budget, ExitReason, KernelError, Sys
from yool.kernel.kernel import PROCESS_RIGHTS
from yool.tools.session import ACTIVE, UNFINISHED, AgentRecord, Session
from yool.tools.table import Args, Call, OpError, Result, operation
from yool.userland.agents import AgentSpec
from yool.userland.agents.spec import HARD_MAX_STEPS

MAX_TASK_CHARS = 100_000
MAX_WAIT_PIDS = 256
ToolName = Literal["files", "kv", "delegate", "code", "tuples"]


# -- spawn --------------------------------------------------------------------------------


class SpawnArgs(Args):
    task: Annotated[str, Field(min_length=1, max_length=MAX_TASK_CHARS, description="what to do")]
    persona: str | None = Field(None, description="a persona name (see persona_list)")
    system: str | None = Field(None, max_length=MAX_TASK_CHARS, description="system prompt")
    provider: str | None = Field(None, description="scripted|anthropic|openai|sampling")
    model: str | None = None
    tools: list[ToolName] = Field(["files", "delegate"], description="tool groups granted")
    paths: list[str] = Field(["."], description="workspace paths it may read")
    write_paths: list[str] = Field([], description="workspace paths it may write")
    budget_tokens: int | None = Field(None, ge=0)
    budget_usd: float | None = Field(None, ge=0)
    budget_tool_calls: int | None = Field(None, ge=0)
    priority: int = Field(0, ge=-10, le=10)
    deadline_s: float | None = Field(None, gt=0, description="kill after this many seconds")
    max_steps: int = Field(64, ge=1, le=HARD_MAX_STEPS)
    node: str | None = Field(None, description="cluster node to run on, or 'any'")


class Spawned(Result):
    pid: int
    provider: str
    model: str | None


@operation("agents")
async def spawn(call: Call, args: SpawnArgs) -> Spawned:
    """Start a sub-agent on a task; returns its pid at once (then use wait)."""
    if args.node is not None:
        record = await _spawn_remote(call.session, args)
        return Spawned(pid=record.pid, provider=record.provider, model=record.model)
    await call.session.warm(args.provider)
    record = start_agent(call.session, args)
    return Spawned(pid=record.pid, provider=record.provider, model=record.model)


async def _spawn_remote(session: Session, args: SpawnArgs) -> AgentRecord:
    cluster = session.cluster
    if cluster is None:
        raise OpError("node: this server is not in a cluster; set YOOL_CLUSTER (tcp or ray)")
    try:
        node = cluster.pick(args.node)
        if node == cluster.node:  # placed here: an ordinary local agent
            await session.warm(args.provider)
            return start_agent(session, args.model_copy(update={"node": None}))
        record: AgentRecord = await cluster.spawn_agent(args.model_copy(update={"node": node}))
    except KernelError as e:
        raise OpError(f"node: {e}") from None
    return record


def agent_spec(session: Session, args: SpawnArgs, driver: str, reply_to: str) -> AgentSpec:
    system = args.system
    if args.persona is not None:
        system = session.persona_prompt(args.persona)
    spec = AgentSpec(
        reply_to=reply_to,
        model=args.model,
        max_steps=args.max_steps,
        llm_device=driver,
    )
    if system:
        spec = AgentSpec(**{**_fields(spec), "system": system})
    return spec


def _fields(spec: AgentSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in AgentSpec.__slots__}


def grant(session: Session, args: SpawnArgs, llm: str) -> list[str]:
    """Derived copies of the session's capabilities for one agent: never wider than asked."""
    sys = session.sys
    caps: list[str] = []
    try:
        caps.append(sys.derive(llm))
        if "files" in args.tools:
            for raw, mode in [(p, "r") for p in args.paths] + [(p, "rw") for p in args.write_paths]:
                root = _inside(session.workspace, raw, "paths" if mode == "r" else "write_paths")
                caps.append(
                    sys.derive(
                        session.files_device,
                        None if mode == "rw" else ("open", "read"),
                        caveat={"root": str(root), "mode": mode},
                    )
                )
        elif args.write_paths:
            raise OpError("write_paths: needs 'files' in tools")
        if "kv" in args.tools:
            caps.append(sys.derive(session.kv_device))
        if "code" in args.tools:
            caps.append(sys.derive(session.sandbox_device, caveat=code_caveat(args)))
        if "tuples" in args.tools:
            caps.append(sys.derive(session.tuples_device))
            caps.append(sys.derive(session.lane_cap))
        if "delegate" in args.tools:
            spawn_cap = sys.cap("spawn")
            if spawn_cap is not None:
                caps.append(sys.derive(spawn_cap))
    except BaseException:
        for ref in caps:
            sys.revoke(ref)
        raise
    return caps


def code_caveat(args: SpawnArgs) -> dict[str, Any]:
    """What an agent's sandbox capability is narrowed to (see `yool.drivers.sandbox`).

    Its code may call back only what its other groups already grant: its own working
    memory, and the key-value store when it holds "kv" (the kv callbacks are checked
    against that capability too). Never `send` (its one process capability is the reply
    channel to the session) nor the session's lessons. With a deadline, no run may outlast
    it. The caveat follows from the spawn arguments alone, so a resumed, replayed or forked
    agent gets the same one.
    """
    callbacks = ["remember", "recall"]
    if "kv" in args.tools:
        callbacks += ["kv_get", "kv_keys", "kv_put"]
    caveat: dict[str, Any] = {"callbacks": callbacks}
    if args.deadline_s is not None:
        caveat["timeout_s"] = args.deadline_s
    return caveat


def _inside(workspace: Path, raw: str, field: str) -> Path:
    if "\x00" in raw or not raw.strip():
        raise OpError(f"{field}: {raw!r} is not a path")
    path = (workspace / raw).resolve()
    if path != workspace and workspace not in path.parents:
        raise OpError(
            f"{field}: {raw!r} is outside the workspace {workspace}; grant paths inside it"
        )
    if not path.exists():
        raise OpError(f"{field}: {raw!r} does not exist in the workspace {workspace}")
    return path


def budget_of(args: SpawnArgs) -> Budget | None:
    if args.budget_tokens is None and args.budget_usd is None and args.budget_tool_calls is None:
        return None
    return Budget(tokens=args.budget_tokens, usd=args.budget_usd, tool_calls=args.budget_tool_calls)


def start_agent(
    session: Session,
    args: SpawnArgs,
    *,
    origin: dict[str, Any] | None = None,
    replay: Any = None,
    persona: str | None = None,
    parent: Sys | None = None,
) -> AgentRecord:
    """Spawn (or, with `replay`, re-run from a journal) one agent and start tracking it.

    `replay(parent_pid, image, run_args, caps) -> Child` is the kernel's replay, bound to the
    journal to read; nothing is left behind if the spawn is refused. `persona` names the
    persona an agent runs as when its prompt was built from one (`args.system`), for `ps`.
    `parent` (a process under the session, e.g. a batch's controller) spawns it instead of
    the session, so the agent is charged under that process's budget; the session still
    monitors and tracks it, and holds its capability.
    """
    if (args.provider or session.policy.provider) == "sampling" and not session.can_sample:
        raise OpError(
            "provider: this MCP client did not offer sampling (or speaks the stateless "
            "2026-07-28 protocol, where yool cannot ask it mid-run); configured providers: "
            f"{', '.join(session.configured_providers())}"
        )
    driver, llm = session.llm_device(args.provider)
    spec_ = agent_spec(session, args, driver, "")  # checks the persona before granting
    caps = grant(session, args, llm)
    reply_to = session.sys.self_ref(("send",))
    caps.append(reply_to)
    spec = AgentSpec(**{**_fields(spec_), "reply_to": reply_to})
    k = session.kernel
    ref: str | None = None
    try:
        if parent is not None:
            for c in caps:
                k.caps.transfer(session.pid, c, parent.pid)
        if replay is None:
            child = (parent or session.sys).spawn(
                "yool.react",
                args.task,
                spec,
                name=f"agent:{_title(args.task)}",
                budget=budget_of(args),
                caps=caps,
                monitor=parent is None,
                priority=args.priority,
                deadline=args.deadline_s,
            )
        else:
            child = replay((args.task, spec), caps)
        if parent is not None:  # it has not run yet: monitoring now misses no exit
            ref = k.caps.mint(session.pid, "process", child.pid, PROCESS_RIGHTS)
            session.sys.monitor(ref)
    except KernelError as e:
        for c in caps:
            if k.caps.lookup(c) is not None:
                k.caps.revoke(c)
        raise OpError(f"spawn refused: {e}") from None
    return session.track(
        AgentRecord(
            pid=child.pid,
            task=args.task,
            spawn=args.model_dump(),
            persona=persona or args.persona,
            provider=(args.provider or session.policy.provider),
            model=args.model or session.policy.model,
            origin=origin,
            ref=child.ref if ref is None else ref,
        )
    )


async def run_agent(
    session: Session,
    args: SpawnArgs,
    *,
    origin: dict[str, Any] | None = None,
    parent: Sys | None = None,
) -> AgentRecord:
    """Start one agent and wait for it to end: the way yool's own work (distilling lessons,
    forging and scoring prompts) runs on an LLM, visible in `ps` and `trace` like any agent
    and paid from the session's budget. Cancelling the wait kills the agent."""
    await session.warm(args.provider)
    record = start_agent(session, args, origin=origin, parent=parent)
    try:
        if record.done is not None:
            await asyncio.shield(record.done)
    except BaseException:
        kill_all(session, [record])
        raise
    return session.record(record.pid)


def kill_all(session: Session, records: Iterable[AgentRecord]) -> None:
    """Kill every agent of `records` still running: a cancelled caller leaves none behind.

    Once the session process itself has ended (the server shutting down), the kernel's
    shutdown ends its agents and there is no one left to send a kill from."""
    me = session.kernel.procs.get(session.pid)
    if me is None or me.reason is not None:
        return
    for record in list(records):
        if record.ref is not None and record.status in ACTIVE:
            with contextlib.suppress(KernelError):
                session.sys.kill(record.ref)


def _title(task: str) -> str:
    line = " ".join(task.split())
    return line[:40] + ("…" if len(line) > 40 else "")


# -- status, wait -------------------------------------------------------------------------


class AgentStatus(Result):
    pid: int
    status: str  # running | stopped | exited | interrupted
    reason: str | None = None  # the kernel's exit reason: normal, quota(tokens), killed(by=1)...
    result: str | None = None  # how the agent ended its work: completed, stalled, step_limit
    answer: str | None = None
    steps: int = 0
    tokens: int = 0
    usd: float = 0.0
    task: str = ""
    persona: str | None = None
    origin: dict[str, Any] | None = None
    node: str | None = None  # node/pid, for an agent on another node


def status_of(record: AgentRecord, *, answer: bool = True, task_chars: int = 200) -> AgentStatus:
    return AgentStatus(
        pid=record.pid,
        status=record.status,
        reason=_reason_text(record.reason),
        result=record.result,
        answer=record.answer if answer else None,
        steps=record.steps,
        tokens=record.tokens,
        usd=round(record.usd, 6),
        task=record.task[:task_chars],
        persona=record.persona,
        origin=record.origin,
        node=record.node,
    )


def _reason_text(reason: dict[str, Any] | None) -> str | None:
    if reason is None:
        return None
    text = _REASON_TEXT.get(id(reason))
    if text is None or text[0] is not reason:
        text = _REASON_TEXT[id(reason)] = (reason, str(ExitReason.from_json(reason)))
        if len(_REASON_TEXT) > 4096:
            _REASON_TEXT.clear()
    return text[1]


# A record's reason dict never changes once set: its text is worked out once.
_REASON_TEXT: dict[int, tuple[dict[str, Any], str]] = {}


class WaitArgs(Args):
    pids: Annotated[list[int], Field(min_length=1, max_length=MAX_WAIT_PIDS)]
    mode: Literal["all", "first"] = "all"
    timeout_s: float = Field(50.0, ge=0, le=3600, description="then return partial status")


class Waited(Result):
    done: bool  # every pid (mode all) or one (mode first) has ended
    timed_out: bool  # not done when timeout_s ran out (not done otherwise: call wait again)
    agents: list[AgentStatus]


@operation("agents", read_only=True, blocking=True)
async def wait(call: Call, args: WaitArgs) -> Waited:
    """Wait for agents to end (all or first); sends progress; on timeout returns status."""
    session = call.session
    records = [session.record(pid) for pid in dict.fromkeys(args.pids)]
    pending: set[asyncio.Future[Any]] = {
        r.done for r in records if r.done is not None and not r.done.done()
    }
    start = time.monotonic()
    deadline = start + args.timeout_s
    beat = session.policy.heartbeat_s
    need = len(pending) if args.mode == "all" else min(1, len(pending))
    if len(pending) < len(records) and args.mode == "first":
        need = 0  # one has ended already
    finished = 0
    host = session.host.arrival() if call.pull else None
    while finished < need and pending:
        left = deadline - time.monotonic()
        if left <= 0 or (host is not None and host.done()):
            break  # a pull-mode caller must answer a sampling request before we go on
        watched = pending if host is None else {*pending, host}
        done, _ = await asyncio.wait(
            watched, timeout=min(beat, left), return_when=asyncio.FIRST_COMPLETED
        )
        done.discard(host)
        finished += len(done)
        pending -= done
        if finished < need and time.monotonic() < deadline:
            await call.progress(
                time.monotonic() - start, args.timeout_s, _summary(session, records)
            )
    statuses = [status_of(session.record(r.pid)) for r in records]
    ended = sum(1 for s in statuses if s.status not in UNFINISHED)
    complete = ended == len(statuses) if args.mode == "all" else ended > 0
    timed_out = not complete and time.monotonic() >= deadline
    return Waited(done=complete, timed_out=timed_out, agents=statuses)


def _summary(session: Session, records: list[AgentRecord]) -> str:
    steps = tokens = 0
    usd = 0.0
    ended = 0
    for r in records:
        r = session.record(r.pid)
        steps += r.steps
        tokens += r.tokens
        usd += r.usd
        ended += r.status not in UNFINISHED
    return f"{ended}/{len(records)} ended; steps={steps} tokens={tokens} usd={usd:.4f}"


# -- ps -----------------------------------------------------------------------------------


class PsArgs(Args):
    all: bool = Field(False, description="include agents of earlier server runs")
    limit: int = Field(50, ge=1, le=10_000)


class SessionStatus(Result):
    pid: int
    tokens: int
    usd: float
    tool_calls: int
    remaining: dict[str, float | None]


class Ps(Result):
    agents: list[AgentStatus]
    session: SessionStatus


@operation("agents", read_only=True)
async def ps(call: Call, args: PsArgs) -> Ps:
    """List agents: live ones, then the most recently ended; with usage and exit reasons."""
    session = call.session
    rows: list[AgentStatus] = []
    for pid in sorted(session.agents, reverse=True):
        record = session.agents[pid]
        if not args.all and record.started < session.started and record.status == "exited":
            continue
        rows.append(status_of(session.record(pid), answer=False, task_chars=80))
        if len(rows) >= args.limit:
            break
    return Ps(agents=rows, session=SessionStatus(**session.usage()))


# -- send, signal -------------------------------------------------------------------------


class SendArgs(Args):
    pid: int
    message: Annotated[str, Field(min_length=1, max_length=MAX_TASK_CHARS)]


class Sent(Result):
    delivered: bool


@operation("agents")
async def send(call: Call, args: SendArgs) -> Sent:
    """Send a text message to a live agent's mailbox."""
    session = call.session
    ref = session.live_ref(args.pid)
    try:
        delivered = session.sys.send_nowait(ref, args.message)
    except KernelError as e:
        raise OpError(f"pid: {e}") from None
    return Sent(delivered=delivered)


class SignalArgs(Args):
    pid: int
    signal: Literal["kill", "term", "stop", "cont"]


class Signalled(Result):
    pid: int
    signal: str
    status: str


@operation("agents")
async def signal(call: Call, args: SignalArgs) -> Signalled:
    """Kill, terminate (catchable), stop or continue a live agent."""
    session = call.session
    ref = session.live_ref(args.pid)
    sys = session.sys
    record = session.record(args.pid)
    if record.node is not None and args.signal != "kill" and session.cluster is not None:
        try:  # the remote agent is stopped, continued or asked to end; its stub stays
            session.cluster.signal(record, args.signal)
        except KernelError as e:
            raise OpError(f"pid: {e}") from None
        return Signalled(pid=args.pid, signal=args.signal, status=record.status)
    try:
        {"kill": sys.kill, "term": sys.term, "stop": sys.stop, "cont": sys.cont}[args.signal](ref)
    except KernelError as e:
        raise OpError(f"pid: {e}") from None
    await asyncio.sleep(0)  # let an exit settle before reporting status
    return Signalled(pid=args.pid, signal=args.signal, status=session.record(args.pid).status)
