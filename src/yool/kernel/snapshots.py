"""Snapshots: a live process's durable state as JSON, and a new process started from it.

A snapshot holds working memory, mailbox, what is left of the budget and the
schedule (priority, time to deadline, stopped). Capabilities are authority of
this kernel and are never captured: whoever restores re-grants them. The ABI
version is checked so an incompatible snapshot is refused, not misread.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from yool.kernel.accounts import Budget
from yool.kernel.context import Context
from yool.kernel.errors import KernelError
from yool.kernel.messages import Child, Message
from yool.kernel.process import INIT

if TYPE_CHECKING:
    from yool.kernel.kernel import Kernel

ABI_VERSION = 1  # bump when a snapshot's layout changes incompatibly


def snapshot(k: Kernel, pid: int) -> dict[str, Any]:
    """The durable state of a live process, as JSON. Capabilities are not captured."""
    p = k.proc(pid)
    if pid == INIT:
        raise KernelError("init cannot be snapshotted")
    now = k.loop.time()
    b = p.account.budget
    usage = p.account.usage()
    remaining = Budget(
        tokens=None if b is None or b.tokens is None else max(0, b.tokens - p.account.tokens),
        usd=None if b is None or b.usd is None else max(0.0, b.usd - p.account.usd),
        tool_calls=None
        if b is None or b.tool_calls is None
        else max(0, b.tool_calls - p.account.tool_calls),
        children=None if b is None else b.children,
        wall_s=None if p.account.wall_deadline is None else max(0.0, p.account.wall_deadline - now),
        mem=None if b is None else b.mem,
        mailbox=None if b is None else b.mailbox,
    )
    snap = {
        "abi": ABI_VERSION,
        "pid": pid,
        "image": p.image,
        "name": p.name,
        "args": list(p.args),
        "priority": p.priority,
        "deadline_in": None if p.deadline is None else max(0.0, p.deadline - now),
        "stopped": p.stopped is not None,
        "trap": p.trap,
        "budget": remaining.to_json(),
        "usage": usage,
        "mailbox": [{"sender": m.sender, "body": m.body} for m in (p.queue or ())],
        "context": p.context.dump() if p.context is not None else [],
        "journal": None if p.journal is None else {"stream": p.journal.stream, "op": p.journal.op},
    }
    try:
        json.dumps(snap)
    except (TypeError, ValueError) as e:
        raise KernelError(
            f"pid {pid} cannot be snapshotted: its args, mailbox or memory hold a value "
            f"that is not JSON ({e})"
        ) from None
    return snap


async def restore(
    k: Kernel, snap: dict[str, Any], *, parent: int = INIT, caps: Iterable[str] = ()
) -> Child:
    """Start a new process from a snapshot; `caps` are re-granted by the restorer."""
    abi = snap.get("abi") if isinstance(snap, dict) else None
    if abi != ABI_VERSION:
        raise KernelError(f"snapshot ABI v{abi} does not match this kernel's v{ABI_VERSION}")
    budget = Budget.from_json(snap.get("budget") or {})
    context = None
    if snap.get("context"):
        context = await Context.load(snap["context"], budget.mem, k.summarizer)
    p_parent = k.proc(parent)
    child = k.spawn(
        p_parent,
        snap["image"],
        tuple(snap.get("args") or ()),
        name=snap.get("name"),
        budget=budget,
        caps=caps,
        priority=int(snap.get("priority") or 0),
        deadline=snap.get("deadline_in"),
        restored=snap,
    )
    p = k.procs[child.pid]
    p.context = context
    p.trap = int(snap.get("trap") or 0)
    for m in snap.get("mailbox") or ():
        k.deliver(p, Message(int(m.get("sender", 0)), m.get("body")))
    if snap.get("stopped"):
        k.signal(child.pid, "stop")
    k.events.emit("restore", child.pid, {"from": snap.get("pid")})
    return child
