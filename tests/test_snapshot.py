"""Snapshot and restore: what a snapshot captures, ABI checks, capabilities, persistence."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from yool.kernel import (
    ABI_VERSION,
    DEADLINE,
    NORMAL,
    Budget,
    Cost,
    Driver,
    Handle,
    Kernel,
    KernelError,
    Reply,
    Sys,
    killed,
)
from yool.kernel.store import Store

TIMEOUT = 10.0
RESULTS: dict[int, dict[str, Any]] = {}


@pytest.fixture(autouse=True)
def _clear_results() -> Iterator[None]:
    RESULTS.clear()
    yield
    RESULTS.clear()


class Meter(Driver):
    """Every read costs 30 tokens and answers how many reads there were."""

    name = "meter"

    def __init__(self) -> None:
        self.reads = 0

    async def open(self, pid: int, params: dict[str, Any]) -> Handle:
        return _MeterHandle(self)


class _MeterHandle(Handle):
    def __init__(self, driver: Meter) -> None:
        self.d = driver

    async def read(self, request: Any) -> Reply:
        self.d.reads += 1
        return Reply(self.d.reads, Cost(tokens=30))


async def keeper(sys: Sys) -> None:
    """Builds up state once, then waits for "go"; a restored one starts from its snapshot."""
    if sys.restored is None:
        await sys.remember("the plan: fix the parser first", pin=True)
        await sys.remember({"step": 1, "done": ["lexer"]})
        dev = sys.cap("device", "meter")
        if dev is not None:
            await sys.read(await sys.open(dev))
    await sys.recv(match=lambda body: body == "go")
    mailbox: list[Any] = []
    while sys.pending():
        mailbox.append((await sys.recv(timeout=0)).body)
    dev = sys.cap("device", "meter")
    RESULTS[sys.pid] = {
        "restored_from": None if sys.restored is None else sys.restored["pid"],
        "memory": [(s.body, s.pinned) for s in sys.working_set()],
        "mailbox": mailbox,
        "budget": sys.budget(),
        "has_device": dev is not None,
        "read": None if dev is None else await sys.read(await sys.open(dev)),
    }


async def _settle(k: Kernel, pid: int) -> None:
    """Let `pid` run until it blocks waiting for a message."""
    for _ in range(100):
        if k.inspect(pid)["state"] == "waiting":
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"pid {pid} never started waiting")


async def _keeper_with_state(k: Kernel, device: str) -> int:
    c = k.init.spawn(
        "keeper",
        budget=Budget(tokens=100, tool_calls=5),
        caps=[k.init.derive(device)],
        priority=3,
        deadline=50.0,
    )
    await _settle(k, c.pid)
    assert k.post(c.pid, "first")
    assert k.post(c.pid, {"second": [1, 2]})
    return c.pid


def _boot(k: Kernel) -> tuple[Meter, str]:
    k.register_image("keeper", keeper)
    meter = Meter()
    return meter, k.register_driver(meter)


def test_snapshot_captures_memory_mailbox_budget_priority_deadline_and_abi(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            _, dev = _boot(k)
            pid = await _keeper_with_state(k, dev)
            await asyncio.sleep(20.0)  # virtual: 30 of the 50 deadline seconds remain
            snap = k.snapshot(pid)
            assert snap["abi"] == ABI_VERSION
            assert snap["pid"] == pid
            assert snap["image"] == "keeper"
            assert snap["priority"] == 3
            assert snap["deadline_in"] == pytest.approx(30.0, abs=0.01)
            assert snap["stopped"] is False
            assert snap["budget"]["tokens"] == 70  # 100 minus the one 30-token read
            assert snap["budget"]["tool_calls"] == 5
            assert snap["mailbox"] == [
                {"sender": 0, "body": "first"},
                {"sender": 0, "body": {"second": [1, 2]}},
            ]
            bodies = [(s["body"], s["pinned"]) for s in snap["context"]]
            assert bodies == [
                ("the plan: fix the parser first", True),
                ({"step": 1, "done": ["lexer"]}, False),
            ]
            assert json.loads(json.dumps(snap)) == snap  # plain JSON through and through
            assert "cap_" not in json.dumps(snap)  # no capability is captured

    virtual(main())


def test_a_restored_process_resumes_from_its_memory_mailbox_and_remaining_budget(
    virtual: Any,
) -> None:
    async def main() -> None:
        async with Kernel() as k:
            meter, dev = _boot(k)
            pid = await _keeper_with_state(k, dev)
            snap = k.snapshot(pid)
            assert k.kill(pid, killed(0))
            new = await k.restore(snap, caps=[k.init.derive(dev)])
            assert new.pid != pid
            info = k.inspect(new.pid)
            assert info["priority"] == 3
            assert info["deadline_in"] == pytest.approx(50.0, abs=0.01)
            assert info["mailbox"] == 2
            assert k.post(new.pid, "go")
            assert await asyncio.wait_for(k.wait(new.pid), TIMEOUT) == NORMAL
            got = RESULTS[new.pid]
            assert got["restored_from"] == pid
            assert got["memory"] == [
                ("the plan: fix the parser first", True),
                ({"step": 1, "done": ["lexer"]}, False),
            ]
            assert got["mailbox"] == ["first", {"second": [1, 2]}]
            assert got["budget"]["tokens"] == 70  # as restored, before its own read below
            assert got["has_device"] is True
            assert got["read"] == 2
            assert meter.reads == 2  # the restored process did not redo its first read
            assert any(e.kind == "restore" and e.data == {"from": pid} for e in k.trace(50))

    virtual(main())


def test_restore_does_not_capture_capabilities_the_restorer_regrants_them(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            _, dev = _boot(k)
            pid = await _keeper_with_state(k, dev)
            snap = k.snapshot(pid)
            bare = await k.restore(snap)
            assert k.inspect(bare.pid)["caps"] == []
            assert k.post(bare.pid, "go")
            assert await asyncio.wait_for(k.wait(bare.pid), TIMEOUT) == NORMAL
            assert RESULTS[bare.pid]["has_device"] is False
            granted = await k.restore(snap, caps=[k.init.derive(dev, ["open", "read"])])
            caps = k.inspect(granted.pid)["caps"]
            assert caps == [
                {
                    "kind": "device",
                    "target": "meter",
                    "rights": ["open", "read"],
                    "expires_in": None,
                }
            ]

    virtual(main())


def test_restore_of_a_stopped_process_keeps_it_stopped_until_continued(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            _, dev = _boot(k)
            pid = await _keeper_with_state(k, dev)
            assert k.signal(pid, "stop")
            snap = k.snapshot(pid)
            assert snap["stopped"] is True
            new = await k.restore(snap)
            assert k.post(new.pid, "go")
            await asyncio.sleep(1.0)
            assert k.inspect(new.pid)["state"] == "stopped"
            assert new.pid not in RESULTS
            assert k.signal(new.pid, "cont")
            assert await asyncio.wait_for(k.wait(new.pid), TIMEOUT) == NORMAL
            assert RESULTS[new.pid]["mailbox"] == ["first", {"second": [1, 2]}]

    virtual(main())


def test_a_restored_process_is_killed_when_its_remaining_deadline_runs_out(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            _, dev = _boot(k)
            pid = await _keeper_with_state(k, dev)
            await asyncio.sleep(40.0)
            snap = k.snapshot(pid)
            k.kill(pid, killed(0))
            loop = asyncio.get_running_loop()
            start = loop.time()
            new = await k.restore(snap)
            assert await k.wait(new.pid) == DEADLINE
            assert loop.time() - start == pytest.approx(10.0, abs=0.01)

    virtual(main())


def test_restore_refuses_a_snapshot_of_another_abi_version_clearly(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            _, dev = _boot(k)
            snap = k.snapshot(await _keeper_with_state(k, dev))
            snap["abi"] = ABI_VERSION + 1
            before = len(k.ps())
            with pytest.raises(KernelError, match=f"snapshot ABI v{ABI_VERSION + 1} does not"):
                await k.restore(snap)
            with pytest.raises(KernelError, match="ABI vNone"):
                await k.restore({"image": "keeper"})
            assert len(k.ps()) == before  # nothing was started

    virtual(main())


def test_snapshot_of_a_process_holding_a_non_json_value_is_refused_clearly(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            _, dev = _boot(k)
            pid = await _keeper_with_state(k, dev)
            assert k.post(pid, object())
            with pytest.raises(KernelError, match=f"pid {pid} cannot be snapshotted.*not JSON"):
                k.snapshot(pid)

    virtual(main())


def test_snapshot_of_init_or_of_a_dead_process_is_refused(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            _, dev = _boot(k)
            pid = await _keeper_with_state(k, dev)
            k.kill(pid, killed(0))
            with pytest.raises(KernelError, match=f"no live process {pid}"):
                k.snapshot(pid)
            with pytest.raises(KernelError, match="init cannot be snapshotted"):
                k.snapshot(1)

    virtual(main())


def test_a_snapshot_persisted_in_the_store_is_restored_by_a_new_kernel(
    real: Any, tmp_path: Path
) -> None:
    db = tmp_path / "yool.db"

    async def first() -> int:
        with Store.open(db) as store:
            async with Kernel(store=store) as k:
                _, dev = _boot(k)
                pid = await _keeper_with_state(k, dev)
                snap = k.snapshot(pid)
                store.put_snapshot("snap-1", pid, snap["image"], k.wall(), snap)
                await store.aflush()
                return pid

    async def second(old: int) -> dict[str, Any]:
        with Store.open(db) as store:
            async with Kernel(store=store) as k:
                _, dev = _boot(k)
                row = await store.asnapshot("snap-1")
                assert row is not None
                assert row.pid == old
                new = await k.restore(row.data, caps=[k.init.derive(dev)])
                assert new.pid > old
                assert k.post(new.pid, "go")
                assert await asyncio.wait_for(k.wait(new.pid), TIMEOUT) == NORMAL
                return RESULTS[new.pid]

    old = real(first())
    got = real(second(old))
    assert got["restored_from"] == old
    assert got["mailbox"] == ["first", {"second": [1, 2]}]
    assert got["memory"][0] == ("the plan: fix the parser first", True)
    assert got["budget"]["tokens"] == 70


def test_restore_of_an_image_this_kernel_does_not_know_is_refused_clearly(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            _, dev = _boot(k)
            snap = k.snapshot(await _keeper_with_state(k, dev))
        async with Kernel() as other:
            with pytest.raises(KernelError, match="no image named 'keeper'"):
                await other.restore(snap)
            assert [p.pid for p in other.ps()] == [1]

    virtual(main())
