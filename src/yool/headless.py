"""`yool run`: one agent on one task from a shell or CI, through the operations table.

It opens a `Session` on `YOOL_HOME` and calls the same `spawn` and `wait` operations an MCP
client calls, so a headless run behaves exactly like one started from an assistant: same
budgets, same store, same exit reasons (and `yool ps` / `yool trace` see it).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from yool.kernel.store import EventRow
from yool.policy import RuntimePolicy
from yool.tools import OPERATIONS, Call, Session, load_all
from yool.watch import render

WAIT_SLICE_S = 3600.0  # the longest one `wait` call may block (its own limit)
GRACE_S = 5.0  # past a --timeout, for the kernel's deadline kill to land


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the run ended: the agent's status as `wait` reports it, plus where it ran."""

    status: dict[str, Any]
    provider: str
    model: str | None

    @property
    def normal(self) -> bool:
        return self.status.get("reason") == "normal"

    def to_json(self) -> dict[str, Any]:
        return {**self.status, "provider": self.provider, "model": self.model}


async def run(
    policy: RuntimePolicy,
    spawn: dict[str, Any],
    *,
    timeout_s: float | None,
    say: Callable[[str], None] | None,
) -> Outcome:
    """Spawn one agent with `spawn` arguments and wait for it to end.

    `say`, if given, gets progress lines: the spawn, the transcript as it happens, heartbeats.
    An `OpError` or a `pydantic.ValidationError` (bad arguments) reaches the caller.
    """
    load_all()
    async with Session.open(policy) as session:
        if timeout_s is not None:
            spawn = {**spawn, "deadline_s": timeout_s}

        async def progress(done: float, total: float | None, message: str) -> None:
            if say is not None:
                say(f"{message} ({done:.0f}s)")

        call = Call(session, progress, "cli")
        if say is not None:
            mine: set[int] = set()

            def echo(ev: Any) -> None:
                data = ev.data or {}
                if ev.kind == "log" and data.get("message") == "turn" and ev.pid in mine:
                    say(render(EventRow(ev.seq, ev.ts, ev.kind, ev.pid, data)))
                elif ev.kind == "spawn" and data.get("parent") in mine:
                    mine.add(ev.pid)  # a sub-agent it delegated to

            session.kernel.events.sinks.append(echo)
        spawned = await OPERATIONS["spawn"](call, spawn)
        if say is not None:
            mine.add(spawned.pid)
            model = f", model {spawned.model}" if spawned.model else ""
            say(f"spawned agent pid {spawned.pid} (provider {spawned.provider}{model})")
        loop = asyncio.get_running_loop()
        limit = None if timeout_s is None else loop.time() + timeout_s + GRACE_S
        while True:
            slice_s = WAIT_SLICE_S if limit is None else max(0.0, limit - loop.time())
            waited = await OPERATIONS["wait"](
                call, {"pids": [spawned.pid], "timeout_s": min(slice_s, WAIT_SLICE_S)}
            )
            if waited.done:
                break
            if limit is not None and loop.time() >= limit:
                # The deadline kill should have ended it; make sure, then read its status.
                with contextlib.suppress(Exception):
                    await OPERATIONS["signal"](call, {"pid": spawned.pid, "signal": "kill"})
                waited = await OPERATIONS["wait"](call, {"pids": [spawned.pid], "timeout_s": 5})
                break
        status = waited.agents[0].model_dump()
        return Outcome(status, spawned.provider, spawned.model)


def run_blocking(
    policy: RuntimePolicy,
    spawn: dict[str, Any],
    *,
    timeout_s: float | None,
    say: Callable[[str], None] | None,
) -> Outcome:
    """`run` on a fresh event loop; SIGTERM shuts the session down as Ctrl-C does."""

    async def main() -> Outcome:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        if task is not None and sys.platform != "win32":
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await run(policy, spawn, timeout_s=timeout_s, say=say)
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None
        finally:
            if sys.platform != "win32":
                loop.remove_signal_handler(signal.SIGTERM)

    return asyncio.run(main())
