"""The journal of driver I/O: record, strict replay (zero live calls), recover, persistence."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from yool.kernel import (
    NORMAL,
    Cost,
    Driver,
    DriverError,
    Handle,
    Kernel,
    ReplayError,
    Reply,
    Sys,
    killed,
)
from yool.kernel.store import Store

TIMEOUT = 10.0


class Counter(Driver):
    """Answers deterministically, counts live calls; each read costs 10 tokens.

    A request listed in `hold` waits for `release` (to stop a run mid-flight); a request
    listed in `fail` raises DriverError.
    """

    def __init__(self, name: str = "counter") -> None:
        self.name = name
        self.live = 0
        self.seen: list[Any] = []
        self.hold: set[str] = set()
        self.release = asyncio.Event()
        self.fail: set[str] = set()

    async def open(self, pid: int, params: dict[str, Any]) -> Handle:
        return _CounterHandle(self)


class _CounterHandle(Handle):
    def __init__(self, driver: Counter) -> None:
        self.d = driver

    async def read(self, request: Any) -> Reply:
        d = self.d
        d.live += 1
        d.seen.append(request)
        if request in d.hold:
            await d.release.wait()
        if request in d.fail:
            raise DriverError(f"counter: {request} is refused")
        return Reply({"answer": f"{request}!", "n": d.live}, Cost(tokens=10))

    async def write(self, data: Any) -> Reply:
        self.d.live += 1
        self.d.seen.append(data)
        return Reply(len(str(data)))


# Results each process computed, by pid: how a test sees what a process returned.
RESULTS: dict[int, list[Any]] = {}


@pytest.fixture(autouse=True)
def _clear_results() -> Iterator[None]:
    RESULTS.clear()
    yield
    RESULTS.clear()


async def worker(sys: Sys, n: int) -> None:
    """Reads n answers, writing a note after each; faults on a refused read."""
    h = await sys.open(_device(sys))
    out: list[Any] = []
    for i in range(n):
        out.append(await sys.read(h, f"q{i}"))
        out.append(await sys.write(h, {"note": i}))
    RESULTS[sys.pid] = out


async def catcher(sys: Sys) -> None:
    """Sees a driver error and keeps going."""
    h = await sys.open(_device(sys))
    out: list[Any] = [await sys.read(h, "fine")]
    try:
        await sys.read(h, "bad")
    except DriverError as e:
        out.append(f"error: {e}")
    out.append(await sys.read(h, "after"))
    RESULTS[sys.pid] = out


async def child(sys: Sys, tag: str) -> None:
    h = await sys.open(_device(sys))
    RESULTS[sys.pid] = [await sys.read(h, f"{tag}-{i}") for i in range(2)]


async def tree(sys: Sys) -> None:
    """Spawns a child before its own first I/O, then another between reads."""
    dev = _device(sys)
    first = sys.spawn("child", "a", caps=[sys.derive(dev)])
    h = await sys.open(dev)
    out: list[Any] = [await sys.read(h, "parent-0")]
    second = sys.spawn("child", "b", caps=[sys.derive(dev)])
    for c in (first, second):
        assert await sys.wait(c.ref) == NORMAL
        out.append(RESULTS[c.pid])
    out.append(await sys.read(h, "parent-1"))
    RESULTS[sys.pid] = out


def _device(sys: Sys) -> str:
    ref = sys.cap("device", "counter")
    assert ref is not None, "the test forgot to hand the counter device over"
    return ref


def _boot(k: Kernel, driver: Counter) -> str:
    for name, image in (("worker", worker), ("catcher", catcher), ("child", child), ("tree", tree)):
        k.register_image(name, image)
    return k.register_driver(driver)


def _grants(k: Kernel, device: str) -> list[str]:
    """What the host hands a process (or its replay): the device and the right to spawn."""
    spawn = k.init.cap("spawn")
    assert spawn is not None
    return [k.init.derive(device), k.init.derive(spawn)]


async def _run(k: Kernel, image: str, *args: Any, device: str) -> int:
    c = k.init.spawn(image, *args, caps=_grants(k, device))
    assert await asyncio.wait_for(k.wait(c.pid), TIMEOUT) == NORMAL
    return c.pid


# --- record --------------------------------------------------------------------------------


def test_record_journals_every_device_read_and_write_in_order(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel(record=True) as k:
            d = Counter()
            pid = await _run(k, "worker", 2, device=_boot(k, d))
            entries = await k.journal.load(pid)
            assert sorted(entries) == [0, 1, 2, 3]
            assert entries[0].result["value"] == {"answer": "q0!", "n": 1}
            assert entries[0].result["cost"]["tokens"] == 10
            assert entries[1].result["value"] == len(str({"note": 0}))
            assert all(e.error is None for e in entries.values())
            assert k.metrics()["journal_entries_total"] == 4

    virtual(main())


def test_without_record_or_store_nothing_is_journaled(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            d = Counter()
            pid = await _run(k, "worker", 2, device=_boot(k, d))
            assert await k.journal.load(pid) == {}
            assert k.metrics()["journal_entries_total"] == 0
            with pytest.raises(ReplayError, match=f"no journal recorded for pid {pid}"):
                await k.replay(pid, "worker")

    virtual(main())


# --- strict replay ---------------------------------------------------------------------------


def test_strict_replay_reproduces_the_result_with_zero_live_calls(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel(record=True) as k:
            d = Counter()
            dev = _boot(k, d)
            pid = await _run(k, "worker", 3, device=dev)
            assert d.live == 6
            again = await k.replay(pid, "worker", args=(3,), caps=_grants(k, dev))
            assert await asyncio.wait_for(k.wait(again.pid), TIMEOUT) == NORMAL
            assert again.pid != pid
            assert RESULTS[again.pid] == RESULTS[pid]
            assert d.live == 6  # not one live call
            assert k.metrics()["journal_replayed_total"] == 6

    virtual(main())


def test_strict_replay_of_a_tree_finds_each_spawned_childs_recorded_stream(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel(record=True) as k:
            d = Counter()
            dev = _boot(k, d)
            pid = await _run(k, "tree", device=dev)
            live = d.live
            assert live == 6  # two parent reads, two reads by each child
            again = await k.replay(pid, "tree", caps=_grants(k, dev))
            assert await asyncio.wait_for(k.wait(again.pid), TIMEOUT) == NORMAL
            assert RESULTS[again.pid] == RESULTS[pid]
            assert d.live == live
            # The spawns themselves are journaled in the parent's stream.
            spawned = [e.result for e in (await k.journal.load(pid)).values() if e.result]
            assert sum(1 for r in spawned if "spawned" in r) == 2

    virtual(main())


def test_a_driver_error_is_journaled_and_replayed_as_the_same_driver_error(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel(record=True) as k:
            d = Counter()
            d.fail = {"bad"}
            dev = _boot(k, d)
            pid = await _run(k, "catcher", device=dev)
            assert RESULTS[pid][1] == "error: counter: bad is refused"
            entries = await k.journal.load(pid)
            assert entries[1].error == "counter: bad is refused"
            assert entries[1].result is None
            d.fail = set()  # a live call would succeed now; the replay must still fail
            again = await k.replay(pid, "catcher", caps=_grants(k, dev))
            assert await asyncio.wait_for(k.wait(again.pid), TIMEOUT) == NORMAL
            assert RESULTS[again.pid] == RESULTS[pid]
            assert d.live == 3

    virtual(main())


def test_strict_replay_that_runs_past_its_journal_faults_with_replay_error(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel(record=True) as k:
            d = Counter()
            dev = _boot(k, d)
            pid = await _run(k, "worker", 1, device=dev)
            again = await k.replay(pid, "worker", args=(2,), caps=_grants(k, dev))
            reason = await asyncio.wait_for(k.wait(again.pid), TIMEOUT)
            assert reason.kind == "fault"
            assert reason.detail is not None
            assert reason.detail.startswith("ReplayError: ")
            assert f"replay of pid {pid} has no entry at op 2 (counter.read)" in reason.detail
            assert "strict replay makes no live calls" in reason.detail
            assert d.live == 2
            assert again.pid not in RESULTS

    virtual(main())


def test_strict_replay_whose_request_diverges_faults_without_a_live_call(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel(record=True) as k:
            d = Counter()
            dev = _boot(k, d)
            pid = await _run(k, "child", "x", device=dev)
            again = await k.replay(pid, "child", args=("y",), caps=_grants(k, dev))
            reason = await asyncio.wait_for(k.wait(again.pid), TIMEOUT)
            assert reason.kind == "fault"
            assert f"replay of pid {pid} diverged from its entry at op 0" in str(reason.detail)
            assert d.live == 2
            assert d.seen == ["x-0", "x-1"]

    virtual(main())


def test_strict_replay_whose_spawn_diverges_faults_and_leaves_no_half_spawned_child(
    virtual: Any,
) -> None:
    async def main() -> None:
        async with Kernel(record=True) as k:
            images = {"kid": "child"}

            async def spawner(sys: Sys) -> None:
                dev = _device(sys)
                c = sys.spawn(images["kid"], "z", caps=[sys.derive(dev)])
                await sys.wait(c.ref)

            async def other(sys: Sys, tag: str) -> None:
                return None

            d = Counter()
            dev = _boot(k, d)
            k.register_image("spawner", spawner)
            k.register_image("other", other)
            pid = await _run(k, "spawner", device=dev)
            images["kid"] = "other"
            again = await k.replay(pid, "spawner", caps=_grants(k, dev))
            reason = await asyncio.wait_for(k.wait(again.pid), TIMEOUT)
            assert reason.kind == "fault"
            assert "spawn of 'other' was not recorded here" in str(reason.detail)
            await asyncio.sleep(0)
            assert [p.pid for p in k.ps()] == [1]  # no child left behind without a task
            assert d.live == 2

    virtual(main())


def test_replay_with_the_wrong_arguments_faults_the_replayed_process(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel(record=True) as k:
            d = Counter()
            dev = _boot(k, d)
            pid = await _run(k, "worker", 1, device=dev)
            # Without a store the kernel has no process row to take the arguments from.
            again = await k.replay(pid, "worker", caps=_grants(k, dev))
            reason = await asyncio.wait_for(k.wait(again.pid), TIMEOUT)
            assert reason.kind == "fault"
            assert "TypeError" in str(reason.detail)
            assert [p.pid for p in k.ps()] == [1]

    virtual(main())


# --- recover ---------------------------------------------------------------------------------


def test_recover_replays_the_prefix_then_continues_live_and_completes_the_stream(
    virtual: Any,
) -> None:
    async def main() -> None:
        async with Kernel(record=True) as k:
            d = Counter()
            dev = _boot(k, d)
            d.hold = {"q2"}
            c = k.init.spawn("worker", 4, caps=_grants(k, dev))
            for _ in range(1000):  # q0, note, q1, note, then q2 hangs
                if d.live == 5:
                    break
                await asyncio.sleep(0.01)
            assert d.live == 5
            assert k.kill(c.pid, killed(0))  # the run dies mid-flight, its journal stops at op 4
            assert sorted(await k.journal.load(c.pid)) == [0, 1, 2, 3]

            d.hold = set()
            d.seen.clear()
            live_before = d.live
            rec = await k.replay(c.pid, "worker", strict=False, args=(4,), caps=_grants(k, dev))
            assert await asyncio.wait_for(k.wait(rec.pid), TIMEOUT) == NORMAL
            assert d.seen == ["q2", {"note": 2}, "q3", {"note": 3}]  # only the tail was live
            assert d.live == live_before + 4
            result = RESULTS[rec.pid]
            assert result[0] == {"answer": "q0!", "n": 1}  # the prefix as recorded
            assert result[4] == {"answer": "q2!", "n": 6}  # the tail as answered live
            assert any(e.kind == "recovered" and e.pid == rec.pid for e in k.trace(100))

            # The recovered process's own stream is complete: replaying it needs no live call.
            assert sorted(await k.journal.load(rec.pid)) == list(range(8))
            live_after = d.live
            again = await k.replay(rec.pid, "worker", args=(4,), caps=_grants(k, dev))
            assert await asyncio.wait_for(k.wait(again.pid), TIMEOUT) == NORMAL
            assert RESULTS[again.pid] == result
            assert d.live == live_after
            rec2 = await k.replay(rec.pid, "worker", strict=False, args=(4,), caps=_grants(k, dev))
            assert await asyncio.wait_for(k.wait(rec2.pid), TIMEOUT) == NORMAL
            assert d.live == live_after

    virtual(main())


def test_recover_of_a_pid_with_no_journal_runs_it_live_from_the_start(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel(record=True) as k:
            d = Counter()
            dev = _boot(k, d)
            rec = await k.replay(999, "worker", strict=False, args=(1,), caps=_grants(k, dev))
            assert await asyncio.wait_for(k.wait(rec.pid), TIMEOUT) == NORMAL
            assert d.live == 2
            assert sorted(await k.journal.load(rec.pid)) == [0, 1]

    virtual(main())


# --- persistence -----------------------------------------------------------------------------


def test_a_second_kernel_on_the_same_database_replays_the_first_kernels_run(
    real: Any, tmp_path: Path
) -> None:
    db = tmp_path / "yool.db"

    async def first() -> tuple[int, list[Any]]:
        with Store.open(db) as store:
            async with Kernel(store=store) as k:  # a store turns recording on
                d = Counter()
                pid = await _run(k, "tree", device=_boot(k, d))
                return pid, RESULTS[pid]

    async def second(pid: int) -> tuple[list[Any], int]:
        with Store.open(db) as store:
            async with Kernel(store=store) as k:
                d = Counter()
                dev = _boot(k, d)
                # Image and arguments come from the process row the first kernel wrote.
                again = await k.replay(pid, caps=_grants(k, dev))
                assert await asyncio.wait_for(k.wait(again.pid), TIMEOUT) == NORMAL
                return RESULTS[again.pid], d.live

    pid, result = real(first())
    replayed, live = real(second(pid))
    assert replayed == result
    assert live == 0


def test_replay_from_a_store_takes_the_recorded_arguments(real: Any, tmp_path: Path) -> None:
    async def main() -> None:
        with Store.open(tmp_path / "yool.db") as store:
            async with Kernel(store=store) as k:
                d = Counter()
                dev = _boot(k, d)
                pid = await _run(k, "worker", 3, device=dev)
                again = await k.replay(pid, caps=_grants(k, dev))
                assert await asyncio.wait_for(k.wait(again.pid), TIMEOUT) == NORMAL
                assert RESULTS[again.pid] == RESULTS[pid]
                assert d.live == 6
                with pytest.raises(ReplayError, match="no journal recorded for pid 424242"):
                    await k.replay(424242)

    real(main())


def test_a_sealed_request_digests_like_its_plain_json_so_old_journals_still_replay() -> None:
    from yool.drivers.llm.types import LLMRequest, Msg, ToolCall, ToolSpec
    from yool.kernel.journal import digest

    request = LLMRequest(
        (
            Msg("user", 'naïve "quotes" and ünïcode \u2028'),
            Msg("assistant", "", (ToolCall("c1", "read_file", {"path": "a.txt", "n": [1, 2]}),)),
            Msg("tool", "contents", tool_call_id="c1", is_error=True),
        ),
        system="be brief",
        tools=(ToolSpec("read_file", "read a file"),),
        temperature=0.0,
        idempotent=True,
    )
    sealed, plain = request.payload(), request.to_json()
    assert sealed == plain
    assert digest("llm.read", sealed) == digest("llm.read", plain)
    assert LLMRequest.from_json(sealed) == LLMRequest.from_json(plain) == request


def test_a_sealed_message_cannot_be_changed_after_it_was_digested() -> None:
    from yool.drivers.llm.types import Msg

    sealed = Msg("user", "hello").sealed()
    with pytest.raises(TypeError):
        sealed["content"] = "changed"  # type: ignore[index]
