"""The kernel on a real SQLite store: pids never reused, persisted rows and events,
interrupted processes after a crash, exit reasons after death, a writer that never
blocks the loop."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from yool.drivers import ToolsDriver
from yool.kernel import (
    INTERRUPTED,
    NORMAL,
    Kernel,
    KernelError,
    Sys,
    killed,
)
from yool.kernel.kernel import PID_BLOCK
from yool.kernel.store import Store

TIMEOUT = 10.0
TESTS = Path(__file__).resolve().parent
RESULTS: dict[int, list[Any]] = {}


@pytest.fixture(autouse=True)
def _clear_results() -> Iterator[None]:
    RESULTS.clear()
    yield
    RESULTS.clear()


async def noop(sys: Sys) -> None:
    return None


async def idle(sys: Sys) -> None:
    await sys.recv()


async def crash(sys: Sys) -> None:
    raise ValueError("bad input")


async def stepper(sys: Sys, n: int) -> None:
    """Calls the `step` tool n times."""
    dev = sys.cap("device", "tools")
    assert dev is not None
    h = await sys.open(dev)
    RESULTS[sys.pid] = [await sys.read(h, {"tool": "step", "args": {"i": i}}) for i in range(n)]


def _images(k: Kernel) -> None:
    for name, image in (("noop", noop), ("idle", idle), ("crash", crash), ("stepper", stepper)):
        k.register_image(name, image)


async def _spawn(k: Kernel, n: int) -> list[int]:
    pids = [k.init.spawn("noop").pid for _ in range(n)]
    for pid in pids:
        await k.wait(pid)
    return pids


# --- pids ----------------------------------------------------------------------------------


def test_a_kernel_restarted_on_the_same_database_never_reuses_a_pid(
    real: Any, tmp_path: Path
) -> None:
    db = tmp_path / "yool.db"

    async def run() -> list[int]:
        with Store.open(db) as store:
            async with Kernel(store=store) as k:
                _images(k)
                return await _spawn(k, 5)

    first = real(run())
    second = real(run())
    third = real(run())
    assert min(second) > max(first)
    assert min(third) > max(second)
    assert len(set(first + second + third)) == 15


def test_pids_stay_unique_across_background_block_top_ups_and_a_restart(
    real: Any, tmp_path: Path
) -> None:
    db = tmp_path / "yool.db"
    many = PID_BLOCK + 2000

    async def first() -> list[int]:
        with Store.open(db) as store:
            async with Kernel(store=store) as k:
                _images(k)
                pids: list[int] = []
                for i in range(many):
                    pids.append(k.init.spawn("noop").pid)
                    if i % 256 == 0:
                        await asyncio.sleep(0)  # let top-ups land, as a server would
                for pid in pids:
                    assert await k.wait(pid) == NORMAL
                await store.aflush()
                rows = await store.aprocesses(limit=many + 10)
                assert len(rows) == many
                return pids

    async def second() -> list[int]:
        with Store.open(db) as store:
            async with Kernel(store=store) as k:
                _images(k)
                return await _spawn(k, 3)

    old = real(first())
    assert len(set(old)) == many
    assert max(old) > PID_BLOCK  # past the boot block: a top-up was used
    new = real(second())
    assert min(new) > max(old)


def test_fifty_thousand_spawns_with_a_store_never_stall_a_ticker(real: Any, tmp_path: Path) -> None:
    n = 50_000

    async def main() -> tuple[int, float]:
        with Store.open(tmp_path / "yool.db") as store:
            async with Kernel(store=store) as k:
                _images(k)
                loop = asyncio.get_running_loop()
                ticks: list[float] = []
                done = asyncio.Event()

                async def ticker() -> None:
                    while not done.is_set():
                        ticks.append(loop.time())
                        await asyncio.sleep(0.005)

                task = asyncio.create_task(ticker())
                await asyncio.sleep(0)
                pids = []
                for i in range(n):
                    pids.append(k.init.spawn("noop").pid)
                    if i % 500 == 0:
                        await asyncio.sleep(0)
                for pid in pids:
                    await k.wait(pid)
                done.set()
                await task
                assert len(set(pids)) == n
                assert k.metrics()["exits_total"] == {"normal": n}
                await store.aflush()
                assert (await store.aprocess(pids[-1])) is not None
                gaps = [b - a for a, b in itertools.pairwise(ticks)]
                return len(ticks), max(gaps)

    ticks, worst = real(main())
    assert ticks > 20
    # The loop never waited for the writer (e.g. for a pid block behind a long backlog).
    assert worst < 0.35, f"the loop stalled for {worst:.3f}s"


# --- rows, events, reasons -----------------------------------------------------------------


def test_process_rows_and_events_are_persisted_with_their_exit_reasons(
    real: Any, tmp_path: Path
) -> None:
    async def main() -> None:
        with Store.open(tmp_path / "yool.db") as store:
            async with Kernel(store=store) as k:
                _images(k)
                ok = k.init.spawn("noop", name="fine")
                bad = k.init.spawn("crash")
                gone = k.init.spawn("idle")
                assert await k.wait(ok.pid) == NORMAL
                assert (await k.wait(bad.pid)).kind == "fault"
                await asyncio.sleep(0)
                k.kill(gone.pid, killed(1))
                await store.aflush()
                rows = {r.pid: r for r in await store.aprocesses()}
                assert rows[ok.pid].name == "fine"
                assert rows[ok.pid].image == "noop"
                assert rows[ok.pid].parent == 1
                assert rows[ok.pid].status == "exited"
                assert rows[ok.pid].reason == {"kind": "normal"}
                assert rows[bad.pid].reason == {"kind": "fault", "detail": "ValueError: bad input"}
                assert rows[gone.pid].reason == {"kind": "killed", "by": 1}
                assert all(r.ended is not None for r in rows.values())
                events = await store.aevents()
                kinds = [(e.kind, e.pid) for e in events]
                assert kinds[0] == ("boot", 1)
                for pid in (ok.pid, bad.pid, gone.pid):
                    assert ("spawn", pid) in kinds
                    assert ("exit", pid) in kinds
                fault = next(e for e in events if e.kind == "fault" and e.pid == bad.pid)
                assert fault.data is not None
                assert "ValueError: bad input" in fault.data["traceback"]
                assert [e.seq for e in events] == sorted({e.seq for e in events})

    real(main())


def test_a_restarted_kernel_continues_the_event_sequence_and_knows_old_exit_reasons(
    real: Any, tmp_path: Path
) -> None:
    db = tmp_path / "yool.db"

    async def first() -> tuple[int, int, int]:
        with Store.open(db) as store:
            async with Kernel(store=store) as k:
                _images(k)
                ok = k.init.spawn("noop")
                bad = k.init.spawn("crash")
                await k.wait(ok.pid)
                await k.wait(bad.pid)
                return ok.pid, bad.pid, k.events.seq

    async def second(ok: int, bad: int, last_seq: int) -> None:
        with Store.open(db) as store:
            async with Kernel(store=store) as k:
                assert k.events.seq > last_seq
                assert k.interrupted == []
                # Long dead to this kernel: the answer comes from the process table.
                assert await k.reason_of(ok) == NORMAL
                assert (await k.reason_of(bad)).detail == "ValueError: bad input"
                with pytest.raises(KernelError, match="no process 999999 is known"):
                    await k.reason_of(999_999)
                await store.aflush()
                seqs = [e.seq for e in await store.aevents(limit=10_000)]
                assert len(seqs) == len(set(seqs))  # nothing overwritten by the second boot

    real(second(*real(first())))


def test_shutdown_records_shutdown_for_processes_it_stops(real: Any, tmp_path: Path) -> None:
    db = tmp_path / "yool.db"

    async def first() -> int:
        with Store.open(db) as store:
            async with Kernel(store=store) as k:
                _images(k)
                c = k.init.spawn("idle")
                await asyncio.sleep(0)
                return c.pid

    async def second(pid: int) -> None:
        with Store.open(db) as store:
            async with Kernel(store=store) as k:
                assert k.interrupted == []
                assert (await k.reason_of(pid)).kind == "shutdown"

    real(second(real(first())))


# --- a crash ---------------------------------------------------------------------------------


def _crashing_kernel(db: str) -> None:
    """Run in a subprocess: a kernel whose stepper hangs in its third tool call."""

    async def step(i: int) -> dict[str, int]:
        if i == 2:
            stalled.set()
            await asyncio.Event().wait()  # hangs until the process is SIGKILLed
        return {"step": i}

    async def main() -> None:
        store = Store.open(db)
        k = Kernel(store=store)
        _images(k)
        tools = k.register_driver(ToolsDriver({"step": step}))
        done = k.init.spawn("noop")
        waiting = k.init.spawn("idle")
        stuck = k.init.spawn("stepper", 4, caps=[k.init.derive(tools)])
        await k.wait(done.pid)
        await asyncio.wait_for(stalled.wait(), TIMEOUT)
        await store.aflush()
        print(json.dumps({"done": done.pid, "waiting": waiting.pid, "stuck": stuck.pid}))
        sys.stdout.flush()
        await asyncio.sleep(3600)

    stalled = asyncio.Event()
    asyncio.run(main())


def _crash(db: Path) -> dict[str, int]:
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); "
        f"import test_kernel_store as t; t._crashing_kernel({str(db)!r})"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            _, err = proc.communicate(timeout=TIMEOUT)
            raise AssertionError(f"the crashing kernel died early:\n{err}")
        pids: dict[str, int] = json.loads(line)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
        assert proc.returncode == -signal.SIGKILL
        return pids
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_after_a_crash_running_processes_are_interrupted_and_a_stuck_run_recovers(
    real: Any, tmp_path: Path
) -> None:
    db = tmp_path / "yool.db"
    pids = _crash(db)
    calls: list[int] = []

    def step(i: int) -> dict[str, int]:
        calls.append(i)
        return {"step": i}

    async def main() -> None:
        with Store.open(db) as store:
            async with Kernel(store=store) as k:
                _images(k)
                assert k.interrupted == sorted([pids["waiting"], pids["stuck"]])
                assert await k.reason_of(pids["waiting"]) == INTERRUPTED
                assert await k.reason_of(pids["stuck"]) == INTERRUPTED
                assert await k.reason_of(pids["done"]) == NORMAL
                row = await store.aprocess(pids["stuck"])
                assert row is not None
                assert row.status == "interrupted"
                boot = k.trace(5)[0]
                assert boot.kind == "boot"
                assert boot.data == {"interrupted": k.interrupted}

                # Recover the stuck run: its two journaled calls are replayed, the rest run live.
                tools = k.register_driver(ToolsDriver({"step": step}))
                rec = await k.replay(pids["stuck"], strict=False, caps=[k.init.derive(tools)])
                assert rec.pid > max(pids.values())
                assert await asyncio.wait_for(k.wait(rec.pid), TIMEOUT) == NORMAL
                assert calls == [2, 3]
                assert RESULTS[rec.pid] == [{"step": i} for i in range(4)]

    real(main())


def test_kernel_start_does_not_block_on_a_database_written_by_a_dead_kernel(
    real: Any, tmp_path: Path
) -> None:
    db = tmp_path / "yool.db"
    _crash(db)

    async def main() -> float:
        start = time.monotonic()
        with Store.open(db) as store:
            async with Kernel(store=store) as k:
                _images(k)
                assert await k.wait(k.init.spawn("noop").pid) == NORMAL
        return time.monotonic() - start

    assert real(main()) < 5.0
