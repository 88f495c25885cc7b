"""Tuple-space operations: `tuple_out`, `tuple_in`, `tuple_rd`, `tuple_scan` and `batch_spawn`.

They act as the session process on `session.tuples` through the session's lane capability, so
what they may do is what that capability grants. Templates are JSON arrays: `null` matches
anything; `{"type": ...}`, `{"gte": ...}` (gt, lt, lte), `{"prefix": ...}` constrain a field
(see `yool.tuplespace.templates`). Schemas are kept tiny: every byte sits in the client's context.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any
from weakref import WeakKeyDictionary

from pydantic import WithJsonSchema

from yool.kernel import Budget, CapError, KernelError, Sys
from yool.tools.agents import MAX_TASK_CHARS, SpawnArgs, run_agent, status_of
from yool.tools.session import Session
from yool.tools.table import Args, Call, OpError, Result, operation
from yool.tuplespace import SpaceError, TemplateError, TupleError
from yool.tuplespace.batch import Agent, Batch, BatchError, check_shape, load_batch
from yool.tuplespace.space import Tup

MAX_WAIT_S = 300.0
MAX_SCAN = 1000

# Bounds are checked in code, not published: a schema costs context on every turn.
JSONList = Annotated[list[Any], WithJsonSchema({"type": "array"})]


class OutArgs(Args):
    lane: str
    tuple: JSONList
    durable: bool = False


class OutResult(Result):
    id: int


class InArgs(Args):
    lane: str
    template: JSONList
    wait_s: float = 0


class Got(Result):
    tuple: Annotated[list[Any] | None, WithJsonSchema({"type": "array"})] = None


class ScanArgs(Args):
    lane: str
    template: JSONList
    limit: int = 100


class Scanned(Result):
    tuples: Annotated[list[list[Any]], WithJsonSchema({"type": "array"})]


def _allowed(call: Call, lane: str, right: str) -> None:
    s = call.session
    try:
        s.tuples.require(s.kernel.caps, s.pid, s.lane_cap, right, lane)
    except CapError as e:
        raise OpError(f"lane: {e}") from None


def _bad(e: Exception) -> OpError:
    text = str(e)
    field = "tuple" if isinstance(e, TupleError) else "lane" if isinstance(e, SpaceError) else ""
    return OpError(text if text.startswith(("template", "tuple", "lane")) else f"{field}: {text}")


@operation("tuples")
async def tuple_out(call: Call, args: OutArgs) -> OutResult:
    """Put a tuple (JSON array) on a lane."""
    _allowed(call, args.lane, "write")
    space = call.session.tuples
    try:
        if args.durable:
            space.declare(args.lane, durable=True)
        return OutResult(id=await space.out(args.lane, args.tuple))
    except (SpaceError, TupleError) as e:
        raise _bad(e) from None


async def _wait(call: Call, args: InArgs, take: bool) -> Got:
    if not 0 <= args.wait_s <= MAX_WAIT_S:
        raise OpError(f"wait_s: must be 0 to {MAX_WAIT_S:g} seconds")
    _allowed(call, args.lane, "take" if take else "read")
    space = call.session.tuples
    try:
        fn = space.in_ if take else space.rd
        got = await fn(args.lane, args.template, args.wait_s)
    except (SpaceError, TemplateError) as e:
        raise _bad(e) from None
    return Got(tuple=None if got is None else list(got))


@operation("tuples", blocking=True)
async def tuple_in(call: Call, args: InArgs) -> Got:
    """Take a tuple matching template: null=any, {type|gte|lt|prefix:x}."""
    return await _wait(call, args, True)


@operation("tuples", read_only=True, blocking=True)
async def tuple_rd(call: Call, args: InArgs) -> Got:
    """tuple_in, but leave it."""
    return await _wait(call, args, False)


@operation("tuples", read_only=True)
async def tuple_scan(call: Call, args: ScanArgs) -> Scanned:
    """Tuples matching template (read only)."""
    if not 1 <= args.limit <= MAX_SCAN:
        raise OpError(f"limit: must be 1 to {MAX_SCAN}")
    _allowed(call, args.lane, "read")
    space = call.session.tuples
    try:
        tpl = await space.prepare(args.lane, args.template)  # an index being built: wait for it
        found = space.scan(args.lane, tpl, args.limit)
    except (SpaceError, TemplateError) as e:
        raise _bad(e) from None
    return Scanned(tuples=[list(t) for t in found])


# -- batch_spawn ------------------------------------------------------------------------------

IDLE_S = 5.0  # idle agents are compressed this long after a task ends (no timer otherwise)
NOTES = 4  # earlier tasks an agent remembers (its state, kept in its token)
RERUN_MARK = " (rerun: its first start was interrupted)"
RERUN_NOTE = (
    "Note: you started this task before, but the server stopped while you worked on it; "
    "some of it may already be done."
)
_RUNS: WeakKeyDictionary[Session, dict[str, _Run]] = WeakKeyDictionary()


class BatchArgs(Args):
    depth: int = 4
    branching: int = 32
    id: str | None = None
    budget_tokens: int | None = None
    budget_usd: float | None = None


class BatchInfo(Result):
    id: str
    lane: str  # put [agent index, task] here
    out: str  # results come here as [agent index, task, exit reason, answer]
    pid: int  # the controller
    agents: int
    active: int
    peak_active: int
    materialised: int
    restored: int
    compressed: int


@dataclass(slots=True)
class _Run:
    """A live batch of this session: the lazy agents and the controller process serving them."""

    batch: Batch
    out: str
    pid: int
    sys: Sys | None = None


@operation("tuples")
async def batch_spawn(call: Call, args: BatchArgs) -> BatchInfo:
    """branching^depth lazy agents: tuple_out [i, task] to lane; results [i,task,reason,answer]
    on out. id: status, or reopen after a restart."""
    session = call.session
    runs = _RUNS.setdefault(session, {})
    budget = (
        None
        if args.budget_tokens is None and args.budget_usd is None
        else Budget(tokens=args.budget_tokens, usd=args.budget_usd)
    )
    if args.id is not None:
        run = runs.get(args.id)
        if run is None or run.pid not in session.kernel.procs:
            run = await _reopen(session, args.id, run, budget)
        return _info(run)
    try:
        check_shape(args.depth, args.branching)
    except BatchError as e:
        raise OpError(f"depth, branching: {e}") from None
    _allowed(call, "batch_", "write")
    batch_id = "batch_" + os.urandom(6).hex()
    return _info(_start(session, batch_id, args.depth, args.branching, budget, None))


def _start(
    session: Session,
    batch_id: str,
    depth: int,
    branching: int,
    budget: Budget | None,
    tokens: dict[int, str] | None,
) -> _Run:
    """Spawn the controller under the session and the batch it serves (from tokens if any)."""
    sys, space = session.sys, session.tuples
    lane, out = batch_id, f"{batch_id}/out"
    durable = space._store is not None
    for name in (lane, out):
        space.declare(name, durable=durable)
    spawn = sys.cap("spawn")
    caps = [] if spawn is None else [sys.derive(spawn)]
    try:
        child = sys.spawn(
            _controller, session, batch_id, name=f"batch:{batch_id}", budget=budget, caps=caps
        )
    except KernelError as e:
        for ref in caps:
            sys.revoke(ref)
        raise OpError(f"batch refused: {e}") from None
    batch = Batch(
        space,
        depth=depth,
        branching=branching,
        lane=lane,
        controller=session.kernel.procs[child.pid].account,
        policy=session.policy,
        store=session.kernel.store,
        batch_id=batch_id,
        tokens=tokens,
        meta={"budget": None if budget is None else budget.to_json()},
        results=out,
    )
    run = _RUNS.setdefault(session, {})[batch_id] = _Run(batch, out, child.pid)
    return run


async def _reopen(session: Session, batch_id: str, run: _Run | None, budget: Budget | None) -> _Run:
    """A batch whose controller is gone (ended, or of an earlier server): serve it again."""
    if run is not None:  # its tokens and active agents are in memory: carry on from them
        b = run.batch
        b.compress_idle()
        return _start(session, batch_id, b.depth, b.branching, budget, b.tokens)
    store = session.kernel.store
    found = None if store is None else await store.read(partial(load_batch, batch=batch_id))
    if found is None:
        raise OpError(f"id: no batch {batch_id!r} here; declare one with depth and branching")
    spec, tokens = found
    if budget is None and spec.get("meta", {}).get("budget"):
        budget = Budget.from_json(spec["meta"]["budget"])
    return _start(session, batch_id, int(spec["depth"]), int(spec["branching"]), budget, tokens)


def _info(run: _Run) -> BatchInfo:
    s = run.batch.stats()
    keep = ("agents", "active", "peak_active", "materialised", "restored", "compressed")
    return BatchInfo(
        id=run.batch.id, lane=run.batch.lane, out=run.out, pid=run.pid, **{k: s[k] for k in keep}
    )


async def _controller(sys: Sys, session: Session, batch_id: str) -> None:
    """The controller process: serve the batch's lane for ever, each task as a real agent.

    Its agents are its children (charged under its budget); the session monitors and tracks
    them. Tasks are claimed before an agent starts on them and settled with their result in
    one write (see `yool.tuplespace.batch`): a task started when the server died is started
    once more when the batch is reopened, its agent told so and its result's reason marked
    `RERUN_MARK`; one interrupted twice is reported as `interrupted ...`, not run again.
    Idle agents are compressed `IDLE_S` after a task ends; a quiet batch sets no timer. When
    it ends (killed, or the server stops), the tokens of the agents still materialised are
    written to the store.
    """
    run = _RUNS[session][batch_id]
    run.sys = sys
    batch = run.batch

    async def work(agent: Agent, claim: Tup) -> list[Any]:
        task, starts = claim[1], claim[-1]
        if type(task) is not str or not task.strip() or len(task) > MAX_TASK_CHARS // 2:
            return await reject(claim, "the second field is the task text")
        notes: list[str] = agent.state.get("notes", [])
        text = task
        if notes:
            text = "Your notes from earlier tasks:\n" + "\n".join(notes) + "\n\nTask: " + task
        if starts > 1:
            text = f"{RERUN_NOTE}\n\n{text}"
        args = SpawnArgs.model_validate(
            {"task": text, "system": _system(batch, agent), "tools": []}
        )
        origin = {
            "batch": batch.id,
            "agent": agent.index,
            **({"rerun": True} if starts > 1 else {}),
        }
        try:
            record = await run_agent(session, args, origin=origin, parent=sys)
        except OpError as e:
            return [agent.index, task, f"refused: {e}", None]
        a = agent.account  # already charged up the tree by the agent process: carried only
        a.tokens, a.usd = a.tokens + record.tokens, a.usd + record.usd
        a.tool_calls += record.tool_calls
        reason = status_of(record).reason or "unknown"
        agent.state["notes"] = [*notes, f"{task[:120]} -> {(record.answer or reason)[:240]}"][
            -NOTES:
        ]
        if starts > 1:
            reason += RERUN_MARK
        # Returned, not put: the batch puts it in the write that settles the task's claim.
        return [agent.index, task, reason, record.answer]

    async def reject(t: Tup, why: str) -> list[Any]:
        plain = why.startswith(("interrupted", "failed"))  # from the batch: says it all
        return [*t[:2], why if plain else f"rejected: {why}", None]

    try:
        await batch.serve(
            work, wait_s=None, reject=reject, batch_size=1, serial=True, idle_s=IDLE_S
        )
    finally:
        batch.persist()


def _system(batch: Batch, agent: Agent) -> str:
    path = ".".join(map(str, agent.path))
    return (
        f"You are agent {agent.index} (path {path}) of a batch of {batch.size} agents. "
        "Do the task you are given and answer briefly."
    )
