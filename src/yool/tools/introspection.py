"""Introspection operations: the kernel's event trace, one process in detail, snapshots.

`trace` and `inspect` read; they work on agents of earlier server runs too, from the
store. `snapshot` saves a live process's durable state in the store and `restore` starts a
new process from it: a react agent's snapshot restores as an agent the session tracks,
re-granted the capabilities it was spawned with (capabilities are never in a snapshot).
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError

from yool.kernel import KernelError
from yool.kernel.events import Event
from yool.tools.agents import (
    SpawnArgs,
    _fields,
    agent_spec,
    grant,
    status_of,
)
from yool.tools.session import AgentRecord, Session
from yool.tools.table import Args, Call, OpError, Result, operation
from yool.userland.agents import AgentSpec

MAX_EVENTS = 1000
INSPECT, TRACE = "inspect", "trace"  # what a node answers a peer about the agents it runs for it
TEXT_CHARS = 500  # of each string in an event's data
LIST_ITEMS = 50  # of each list in an event's data
STORE_PAGE = 1000
STORE_PAGES = 100  # at most this many pages of one pid's stored events are scanned


# -- trace --------------------------------------------------------------------------------


def untitled(schema: dict[str, Any]) -> None:
    """Drop the titles pydantic puts on a model and its fields: tools/list stays short."""
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)


COMPACT = ConfigDict(json_schema_extra=untitled)


def clip(value: Any, chars: int = TEXT_CHARS, depth: int = 0) -> Any:
    """`value` made JSON-able and small: long strings and lists cut, deep nesting elided."""
    if isinstance(value, str):
        return value if len(value) <= chars else value[:chars] + "…"
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth >= 4:
        return "…"
    if isinstance(value, dict):
        return {str(k): clip(v, chars, depth + 1) for k, v in list(value.items())[:LIST_ITEMS]}
    if isinstance(value, list | tuple):
        return [clip(v, chars, depth + 1) for v in list(value)[:LIST_ITEMS]]
    return clip(repr(value), chars, depth)


def event_json(
    seq: int, ts: float, kind: str, pid: int | None, data: Any, chars: int = TEXT_CHARS
) -> dict[str, Any]:
    return {"seq": seq, "ts": ts, "kind": kind, "pid": pid, "data": clip(data, chars)}


async def recent_events(
    session: Session,
    pid: int | None,
    n: int,
    kinds: frozenset[str] | None,
    chars: int = TEXT_CHARS,
) -> tuple[list[dict[str, Any]], Literal["ring", "store"]]:
    """The last `n` events (of `pid`, of `kinds`), oldest first, and where they came from.

    The live ring holds the recent past of this run; for one pid whose events the ring does
    not (or no longer) hold, the store has every event it ever persisted.
    """
    k = session.kernel
    ring: list[Event] = k.events.tail(n, pid, kinds)
    store = k.store
    evicted = len(k.events.ring) == k.events.ring.maxlen  # older events may be gone
    if pid is None or store is None or len(ring) >= n or (ring and not evicted):
        return [event_json(*ev, chars) for ev in ring], "ring"
    await store.aflush()
    kept: deque[dict[str, Any]] = deque(maxlen=n)
    after = 0
    for _ in range(STORE_PAGES):
        rows = await store.aevents(after, STORE_PAGE, pid)
        for row in rows:
            if kinds is None or row.kind in kinds:
                kept.append(event_json(row.seq, row.ts, row.kind, row.pid, row.data, chars))
        if len(rows) < STORE_PAGE:
            break
        after = rows[-1].seq
    last = kept[-1]["seq"] if kept else 0
    for ev in ring:  # emitted since the flush
        if ev.seq > last:
            kept.append(event_json(*ev, chars))
    return list(kept), "store"


class TraceArgs(Args):
    pid: int | None = None
    n: int = Field(50, ge=1, le=MAX_EVENTS)
    kinds: list[str] | None = Field(None, description="spawn, exit, signal, log, ...")


class TraceEvent(Result):
    model_config = COMPACT
    seq: int
    ts: float
    kind: str
    pid: int | None
    data: Any = None


class Trace(Result):
    model_config = COMPACT
    events: list[dict[str, Any]]  # TraceEvent: seq, ts, kind, pid, data
    source: Literal["ring", "store"]
    node: str | None = None  # a remote agent's events, as its node keeps them (its pids)
    note: str | None = None  # why they are not (its node could not say)


@operation("system", read_only=True)
async def trace(call: Call, args: TraceArgs) -> Trace:
    """Recent kernel events (spawns, exits, signals, agent turns), of one pid or all."""
    session = call.session
    record = session.agents.get(args.pid) if args.pid is not None else None
    note = None
    if record is not None and record.remote is not None and session.cluster is not None:
        try:
            asked = {"n": args.n, "kinds": args.kinds}
            there = await session.cluster.ask_about(record, TRACE, asked)
            events = [TraceEvent(**e).model_dump() for e in there["events"]]
            source: Literal["ring", "store"] = "store" if there.get("source") == "store" else "ring"
            return Trace(events=events, source=source, node=record.remote[0])
        except (KernelError, KeyError, TypeError, ValidationError) as e:
            note = f"its node could not say ({e}); these are its stub's events here"
    kinds = frozenset(args.kinds) if args.kinds else None
    found, where = await recent_events(session, args.pid, args.n, kinds)
    return Trace(events=[TraceEvent(**e).model_dump() for e in found], source=where, note=note)


# -- inspect ------------------------------------------------------------------------------


class PidArgs(Args):
    pid: int


class Inspected(Result):
    model_config = COMPACT
    pid: int
    live: bool
    agent: dict[str, Any] | None = None  # set when the pid is an agent this session knows
    process: dict[str, Any] | None = None  # live: the kernel's view; ended: its stored row
    reason: str | None = None  # how it ended


@operation("system", read_only=True)
async def inspect(call: Call, args: PidArgs) -> Inspected:
    """One process in detail: state, usage, caps, mailbox, memory, or how it ended (a
    remote agent's as its node sees it)."""
    session = call.session
    record = session.agents.get(args.pid)
    if record is not None and record.remote is not None and session.cluster is not None:
        return await _inspect_remote(session, record)
    return await inspect_of(session, args.pid)


async def inspect_of(session: Session, pid: int) -> Inspected:
    """`inspect` of a pid of this node (also what a node answers a peer about its agents)."""
    k = session.kernel
    agent = status_of(session.record(pid)) if pid in session.agents else None
    agent_json = None if agent is None else agent.model_dump()
    if pid in k.procs:
        return Inspected(pid=pid, live=True, agent=agent_json, process=clip(k.inspect(pid)))
    row = None
    if k.store is not None:
        await k.store.aflush()
        row = await k.store.aprocess(pid)
    if row is None and agent is None:
        raise OpError(f"pid: no process {pid} is live or recorded (see ps or trace)")
    process = None
    reason = agent.reason if agent is not None else None
    if row is not None:
        process = {
            "pid": row.pid,
            "parent": row.parent,
            "image": row.image,
            "name": row.name,
            "status": row.status,
            "started": row.started,
            "ended": row.ended,
        }
        if reason is None and row.reason is not None:
            from yool.kernel import ExitReason

            reason = str(ExitReason.from_json(row.reason))
    return Inspected(pid=pid, live=False, agent=agent_json, process=process, reason=reason)


async def _inspect_remote(session: Session, record: AgentRecord) -> Inspected:
    """A remote agent as its node sees it (live or ended), with this session's record of
    it; if the node cannot say, the stub standing in for it here, and why."""
    assert session.cluster is not None and record.remote is not None
    node = record.remote[0]
    agent = status_of(session.record(record.pid)).model_dump()
    try:
        there = await session.cluster.ask_about(record, INSPECT, {})
        process = there.get("process")
        reason = there.get("reason")
        return Inspected(
            pid=record.pid,
            live=bool(there.get("live")),
            agent=agent,
            process={**process, "node": node} if isinstance(process, dict) else None,
            reason=reason if isinstance(reason, str) else None,
        )
    except KernelError as e:
        here = await inspect_of(session, record.pid)
        note = {"stub_for": record.node, "remote_error": str(e)}
        return here.model_copy(update={"process": {**(here.process or {}), **note}})


# -- snapshot, restore ----------------------------------------------------------------------


class Snapshotted(Result):
    model_config = COMPACT
    snapshot_id: str
    pid: int
    image: str
    agent: bool  # restores as an agent the session tracks


def _store(session: Session, what: str) -> Any:
    store = session.kernel.store
    if store is None:
        raise OpError(f"{what}: snapshots need a store; this session runs in memory")
    return store


@operation("agents")
async def snapshot(call: Call, args: PidArgs) -> Snapshotted:
    """Save a live process's state (memory, mailbox, budget left); returns a snapshot id."""
    session = call.session
    k = session.kernel
    store = _store(session, "pid")
    record = session.agents.get(args.pid)
    p = k.procs.get(args.pid)
    if p is None:
        status = session.record(args.pid).status if record is not None else "not live"
        raise OpError(f"pid: process {args.pid} is not running (status: {status})")
    if args.pid == session.pid:
        raise OpError("pid: the session process cannot be snapshotted")
    if record is not None and record.remote is not None:
        raise OpError(
            f"pid: agent {args.pid} runs on node {record.remote[0]!r}; "
            "snapshot it through that node's server"
        )
    saved_args = p.args
    try:
        if record is not None:
            # An agent's spec holds capability references: never saved, re-made at restore.
            p.args = (record.task,)
        data = k.snapshot(args.pid)
    except KernelError as e:
        raise OpError(f"pid: {e}") from None
    finally:
        p.args = saved_args
    if record is not None:
        data["agent"] = {"spawn": record.spawn, "origin": record.origin}
    snap_id = "snap-" + secrets.token_hex(8)
    store.put_snapshot(snap_id, args.pid, data["image"], time.time(), data)
    await store.aflush()
    return Snapshotted(
        snapshot_id=snap_id, pid=args.pid, image=data["image"], agent=record is not None
    )


class RestoreArgs(Args):
    snapshot_id: str = Field(min_length=1, max_length=64)


class Restored(Result):
    model_config = COMPACT
    pid: int
    restored_from: int
    agent: bool


@operation("agents")
async def restore(call: Call, args: RestoreArgs) -> Restored:
    """Start a new process from a snapshot under the session; an agent's gets its caps back."""
    session = call.session
    store = _store(session, "snapshot_id")
    row = await store.asnapshot(args.snapshot_id)
    if row is None:
        raise OpError(f"snapshot_id: no snapshot {args.snapshot_id!r} (snapshot returns ids)")
    data: dict[str, Any] = dict(row.data)
    agent = data.pop("agent", None)
    if not isinstance(agent, dict):
        try:
            child = await session.kernel.restore(data, parent=session.pid)
        except KernelError as e:
            raise OpError(f"snapshot_id: {e}") from None
        return Restored(pid=child.pid, restored_from=row.pid, agent=False)
    record = await restore_agent(session, args.snapshot_id, row.pid, data, agent)
    return Restored(pid=record.pid, restored_from=row.pid, agent=True)


async def restore_agent(
    session: Session, snap_id: str, old_pid: int, data: dict[str, Any], agent: dict[str, Any]
) -> AgentRecord:
    """A react agent from its snapshot, with a fresh spec and freshly granted capabilities."""
    spawn_args = SpawnArgs.model_validate(agent.get("spawn") or {})
    await session.warm(spawn_args.provider)
    driver, llm = session.llm_device(spawn_args.provider)
    spec_ = agent_spec(session, spawn_args, driver, "")
    caps = grant(session, spawn_args, llm)
    reply_to = session.sys.self_ref(("send",))
    caps.append(reply_to)
    spec = AgentSpec(**{**_fields(spec_), "reply_to": reply_to})
    snap = {**data, "image": "yool.react", "args": [spawn_args.task, spec]}
    try:
        child = await session.kernel.restore(snap, parent=session.pid, caps=caps)
    except KernelError as e:
        for ref in caps:
            if session.kernel.caps.lookup(ref) is not None:
                session.sys.revoke(ref)
        raise OpError(f"snapshot_id: {e}") from None
    session.sys.monitor(child.ref)
    return session.track(
        AgentRecord(
            pid=child.pid,
            task=spawn_args.task,
            spawn=spawn_args.model_dump(),
            persona=spawn_args.persona,
            provider=spawn_args.provider or session.policy.provider,
            model=spawn_args.model or session.policy.model,
            origin={"restored": old_pid, "snapshot": snap_id},
            ref=child.ref,
        )
    )
