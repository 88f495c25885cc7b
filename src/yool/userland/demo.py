"""`yool demo`: a small supervised team on the embedded defaults, no API key, a few seconds.

A supervisor runs five workers that talk to an in-memory fake LLM. Each ends
differently, so every exit reason shows up once: one finishes (`normal`), one
crashes once and is restarted (`fault`), one spends past its token budget
(`quota(tokens)`), one misses its deadline (`deadline`), and one ignores the
terminate signal and is killed by the supervisor when the team is shut down
(`killed(by=...)`); the rest leave with `shutdown`. A `ps` table is shown as
it runs (redrawn in place on a terminal), then every process's exit reason.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from yool.kernel import Budget, Cost, Driver, Handle, Kernel, Reply, Sys, Term
from yool.kernel.events import Event
from yool.userland.supervisor import ChildSpec, SupervisorSpec, start_supervisor, which_children

TICK_S = 0.5  # between ps snapshots
TICKS = 5  # snapshots before the team is shut down
CALL_TOKENS = 120  # what one fake LLM call costs
DEVICE = "fake-llm"
KINDS = ("normal", "fault", "quota", "deadline", "killed", "shutdown")


# -- the fake LLM ------------------------------------------------------------------


class FakeLLM(Driver):
    """An in-memory chat model: answers at once-ish, charges tokens like a real one."""

    name = DEVICE
    lane = "llm"

    def __init__(self) -> None:
        self.billed: dict[int, int] = {}  # pid -> tokens, kept after the process is gone

    async def open(self, pid: int, params: dict[str, Any]) -> Handle:
        return _Chat(self, pid)


class _Chat(Handle):
    def __init__(self, llm: FakeLLM, pid: int) -> None:
        self._llm = llm
        self._pid = pid

    def estimate(self, request: Any) -> Cost:
        return Cost(tokens=CALL_TOKENS)  # reserved first: an unaffordable call is never sent

    async def read(self, request: Any) -> Reply:
        await asyncio.sleep(0.02)
        self._llm.billed[self._pid] = self._llm.billed.get(self._pid, 0) + CALL_TOKENS
        return Reply(f"ok: {str(request)[:40]}", Cost(tokens=CALL_TOKENS, usd=CALL_TOKENS * 1e-6))


async def _llm(sys: Sys) -> str:
    device = sys.cap("device", DEVICE)
    assert device is not None, "the supervisor grants every worker the fake LLM"
    return await sys.open(device)


# -- the workers -------------------------------------------------------------------


async def finisher(sys: Sys) -> None:
    """Three calls, then done."""
    llm = await _llm(sys)
    for step in range(3):
        await sys.read(llm, f"draft part {step}")
        await sys.sleep(0.3)


async def flaky(sys: Sys, runs: list[int]) -> None:
    """Crashes on its first run; the restarted one keeps working until shut down."""
    runs.append(sys.pid)
    llm = await _llm(sys)
    if len(runs) == 1:
        await sys.read(llm, "call a tool")
        await sys.sleep(0.6)
        raise RuntimeError("the tool returned garbage")
    while True:
        await sys.read(llm, "call the tool again")
        await sys.sleep(0.5)


async def spender(sys: Sys) -> None:
    """Keeps asking until its token budget refuses the next call."""
    llm = await _llm(sys)
    while True:
        await sys.read(llm, "summarise everything, at length")
        await sys.sleep(0.25)


async def straggler(sys: Sys) -> None:
    """Would think for ten seconds; its deadline is shorter."""
    llm = await _llm(sys)
    for _ in range(25):
        await sys.read(llm, "think harder")
        await sys.sleep(0.4)


async def stubborn(sys: Sys) -> None:
    """Ignores the terminate signal, so its supervisor must kill it."""
    sys.trap_term()
    llm = await _llm(sys)
    while True:
        await sys.read(llm, "keep going")
        try:
            msg = await sys.recv(0.5)
        except TimeoutError:
            continue
        if isinstance(msg.body, Term):
            sys.log("ignoring term")


def team() -> SupervisorSpec:
    llm = ("device:" + DEVICE,)
    runs: list[int] = []
    return SupervisorSpec(
        [
            ChildSpec("finisher", finisher, restart="transient", grants=llm),
            ChildSpec("flaky", flaky, (runs,), grants=llm),
            ChildSpec(
                "spender", spender, restart="temporary", budget=Budget(tokens=500), grants=llm
            ),
            ChildSpec("straggler", straggler, restart="temporary", deadline_s=1.5, grants=llm),
            ChildSpec("stubborn", stubborn, shutdown_s=0.4, grants=llm),
        ],
        intensity=3,
        period_s=5.0,
    )


# -- watching ------------------------------------------------------------------------


@dataclass
class _Watch:
    """What the event log says about every process: its parent, name and exit reason."""

    parents: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    exits: dict[int, dict[str, Any]] = field(default_factory=dict)

    def __call__(self, ev: Event) -> None:
        if ev.pid is None or ev.data is None:
            return
        if ev.kind == "spawn":
            self.parents[ev.pid] = int(ev.data["parent"])
            self.names[ev.pid] = str(ev.data["name"])
        elif ev.kind == "exit":
            self.exits[ev.pid] = ev.data["reason"]


def _reason_text(reason: dict[str, Any]) -> str:
    kind = str(reason["kind"])
    if kind == "killed":
        return f"killed(by={reason.get('by')})"
    detail = reason.get("detail")
    return f"{kind}({detail})" if detail is not None else kind


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _ps(k: Kernel, watch: _Watch, llm: FakeLLM, restarts: dict[int, int]) -> list[str]:
    rows: list[tuple[str, ...]] = [
        ("PID", "PARENT", "NAME", "STATE", "TOKENS", "RESTARTS", "MAILBOX")
    ]
    live = {p.pid: p for p in k.ps()}
    for pid in sorted(set(live) | set(watch.exits)):
        p = live.get(pid)
        if p is not None:
            rows.append(
                (
                    str(pid),
                    str(p.parent),
                    p.name,
                    p.state,
                    str(int(p.usage["tokens"])),
                    str(restarts[pid]) if pid in restarts else "-",
                    str(p.mailbox),
                )
            )
        else:
            rows.append(
                (
                    str(pid),
                    str(watch.parents.get(pid, "?")),
                    watch.names.get(pid, "?"),
                    _clip("exited " + _reason_text(watch.exits[pid]), 36),
                    str(llm.billed.get(pid, 0)),
                    "-",
                    "-",
                )
            )
    return _table(rows)


class _Screen:
    """Prints snapshots: redrawn in place on a terminal, one after another otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.drawn = 0

    def show(self, title: str, lines: list[str]) -> None:
        if self.tty and self.drawn:
            self.out.write(f"\x1b[{self.drawn}F\x1b[J")  # up to the last snapshot, clear below
        text = [title, *lines, ""]
        self.out.write("\n".join(text) + "\n")
        self.out.flush()
        self.drawn = len(text) if self.tty else 0


# -- the run -------------------------------------------------------------------------


async def _run(out: TextIO, as_json: bool) -> dict[str, Any]:
    from yool.policy import RuntimePolicy

    began = time.monotonic()
    screen = _Screen(out)
    llm = FakeLLM()
    watch = _Watch()
    async with Kernel.from_policy(RuntimePolicy()) as k:  # the embedded defaults, no store
        k.events.sinks.append(watch)
        k.register_driver(llm)
        spec = team()
        sup = start_supervisor(k.init, spec, name="team")
        if not as_json:
            out.write(
                f"yool demo: supervisor 'team' (pid {sup.pid}) runs {len(spec.children)} "
                "workers against an in-memory fake LLM\n\n"
            )
        restarts: dict[int, int] = {}
        for tick in range(1, TICKS + 1):
            await asyncio.sleep(TICK_S)
            children = await which_children(k.init, sup.ref)
            restarts = {c.pid: c.restarts for c in children if c.pid is not None}
            total = sum(c.restarts for c in children)
            if not as_json:
                lines = _ps(k, watch, llm, restarts)
                screen.show(
                    f"ps at {tick * TICK_S:.1f}s ({_plural(total, 'restart')} so far)", lines
                )
        k.init.term(sup.ref)  # the team's shutdown: the supervisor stops its workers
        async with asyncio.timeout(10):
            await k.init.wait(sup.ref)
        tokens = int(k.procs[1].account.tokens)
        restarts_total = total
    elapsed = time.monotonic() - began
    processes = [
        {
            "pid": pid,
            "parent": watch.parents.get(pid),
            "name": watch.names.get(pid),
            "reason": reason,
            "exited": _reason_text(reason),
        }
        for pid, reason in sorted(watch.exits.items())
    ]
    ended = [reason["kind"] for reason in watch.exits.values()]
    counts = {kind: ended.count(kind) for kind in KINDS}
    return {
        "processes": processes,
        "summary": {
            "processes": len(processes),
            "exits": {kind: n for kind, n in counts.items() if n},
            "restarts": restarts_total,
            "tokens": tokens,
            "elapsed_s": round(elapsed, 2),
        },
    }


def run(*, as_json: bool = False, out: TextIO | None = None) -> int:
    """Run the demo and print it; returns the exit status (0)."""
    import sys

    stream = out if out is not None else sys.stdout
    report = asyncio.run(_run(stream, as_json))
    if as_json:
        stream.write(json.dumps(report, indent=2) + "\n")
        return 0
    rows: list[tuple[str, ...]] = [("PID", "PARENT", "NAME", "EXIT REASON")]
    rows += [
        (str(p["pid"]), str(p["parent"]), str(p["name"]), str(p["exited"]))
        for p in report["processes"]
    ]
    stream.write("how every process ended:\n" + "\n".join(_table(rows)) + "\n\n")
    s = report["summary"]
    exits = ", ".join(f"{n} {kind}" for kind, n in s["exits"].items())
    stream.write(
        f"{s['processes']} processes ran: {exits}; {_plural(s['restarts'], 'restart')}; "
        f"{s['tokens']} tokens charged; {s['elapsed_s']:.1f}s\n"
    )
    stream.flush()
    return 0
