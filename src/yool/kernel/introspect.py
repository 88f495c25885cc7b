"""Looking at the kernel from outside: `ps`, `inspect`, metrics and their Prometheus text.

Read-only views built from the process table, accounts, capabilities and
counters. Capability references never appear: a view names what a process
may do, not the secret that lets it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from yool.kernel.kernel import Kernel
    from yool.kernel.process import Process


@dataclass(frozen=True, slots=True)
class ProcInfo:
    """One row of `ps`."""

    pid: int
    parent: int
    name: str
    image: str
    state: str
    mailbox: int
    priority: int
    deadline_in: float | None
    usage: dict[str, float]
    remaining: dict[str, float | None]
    uptime_s: float
    memory: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "parent": self.parent,
            "name": self.name,
            "image": self.image,
            "state": self.state,
            "mailbox": self.mailbox,
            "priority": self.priority,
            "deadline_in": self.deadline_in,
            "usage": self.usage,
            "remaining": self.remaining,
            "uptime_s": self.uptime_s,
            "memory": self.memory,
        }


def info(k: Kernel, p: Process) -> ProcInfo:
    now = k.loop.time()
    return ProcInfo(
        pid=p.pid,
        parent=p.parent,
        name=p.name,
        image=p.image,
        state=p.state,
        mailbox=p.pending(),
        priority=p.priority,
        deadline_in=None if p.deadline is None else max(0.0, p.deadline - now),
        usage=p.account.usage(),
        remaining=p.account.remaining(now),
        uptime_s=now - p.started,
        memory=None if p.context is None else dataclasses.asdict(p.context.stats()),
    )


def ps(k: Kernel) -> list[ProcInfo]:
    return [info(k, p) for p in k.procs.values()]


def inspect(k: Kernel, pid: int) -> dict[str, Any]:
    p = k.proc(pid)
    out = info(k, p).to_json()
    out["links"] = sorted(p.links or ())
    out["monitors"] = sorted(p.monitors or ())
    out["children"] = sorted(p.kids or ())
    out["names"] = sorted(n for n, owner in k.names.items() if owner == pid)
    out["caps"] = [
        {
            "kind": c.kind,
            "target": c.target,
            "rights": sorted(c.rights),
            "expires_in": None if c.expires is None else c.expires - k.loop.time(),
        }
        for c in k.caps.held_by(pid)
    ]
    out["mailbox_preview"] = [_preview(m.body) for m in list(p.queue or ())[:5]]
    out["working_set"] = [
        {"id": s.id, "tokens": s.tokens, "pinned": s.pinned, "preview": _preview(s.body)}
        for s in (p.context.working_set() if p.context is not None else ())
    ]
    out["journal"] = (
        None if p.journal is None else {"stream": p.journal.stream, "ops": p.journal.op}
    )
    return out


def metrics(k: Kernel) -> dict[str, Any]:
    c = k.counters
    return {
        "processes": len(k.procs),
        "spawned_total": c.spawned,
        "exits_total": dict(c.exits),
        "messages_sent_total": c.sent,
        "messages_received_total": c.received,
        "messages_dropped_total": c.dropped,
        "charged_total": dict(c.charged),
        "journal_entries_total": k.journal.appended,
        "journal_replayed_total": c.replayed,
        "capabilities": len(k.caps),
        "events_total": k.events.seq,
        "lanes": {
            s.name: {"concurrency": s.concurrency, "in_use": s.in_use, "waiting": s.waiting}
            for s in k.lanes.stats()
        },
    }


def prometheus(k: Kernel) -> str:
    """The metrics in Prometheus text exposition format."""
    m = metrics(k)
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        out.append(f"# HELP yool_{name} {help_}")
        out.append(f"# TYPE yool_{name} {kind}")
        out.extend(f"yool_{name}{labels} {value:g}" for labels, value in samples)

    metric("processes", "gauge", "Live processes.", [("", m["processes"])])
    metric("spawned_total", "counter", "Processes spawned.", [("", m["spawned_total"])])
    metric(
        "exits_total",
        "counter",
        "Process exits by reason.",
        [(f'{{reason="{_label(k)}"}}', v) for k, v in sorted(m["exits_total"].items())],
    )
    metric("messages_sent_total", "counter", "Messages sent.", [("", m["messages_sent_total"])])
    metric(
        "messages_dropped_total",
        "counter",
        "Messages sent to dead processes.",
        [("", m["messages_dropped_total"])],
    )
    metric(
        "charged_total",
        "counter",
        "Resources charged to accounts.",
        [(f'{{meter="{_label(k)}"}}', v) for k, v in sorted(m["charged_total"].items())],
    )
    metric(
        "journal_entries_total",
        "counter",
        "Journal entries appended.",
        [("", m["journal_entries_total"])],
    )
    metric("capabilities", "gauge", "Live capabilities.", [("", m["capabilities"])])
    metric("events_total", "counter", "Kernel events emitted.", [("", m["events_total"])])
    metric(
        "lane_in_use",
        "gauge",
        "Driver slots in use per lane.",
        [(f'{{lane="{_label(k)}"}}', v["in_use"]) for k, v in sorted(m["lanes"].items())],
    )
    metric(
        "lane_waiting",
        "gauge",
        "Callers waiting for a slot per lane.",
        [(f'{{lane="{_label(k)}"}}', v["waiting"]) for k, v in sorted(m["lanes"].items())],
    )
    return "\n".join(out) + "\n"


def _label(value: str) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _preview(body: Any, width: int = 120) -> str:
    text = body if isinstance(body, str) else repr(body)
    return text if len(text) <= width else text[: width - 3] + "..."
