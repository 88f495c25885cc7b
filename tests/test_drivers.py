"""Drivers: key-value and tools devices, device capabilities, handles, and lanes through devices."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from yool.drivers import KVDriver, ToolsDriver
from yool.kernel import (
    NORMAL,
    Budget,
    CapError,
    Driver,
    DriverError,
    Handle,
    Kernel,
    QuotaExceeded,
    Reply,
    Sys,
    killed,
    quota,
)
from yool.kernel.store import Store

TIMEOUT = 10.0

Body = Callable[[Sys, str], Coroutine[Any, Any, Any]]


async def _run_with(k: Kernel, device: str, body: Body, **spawn: Any) -> tuple[Any, Any]:
    """Run `body(sys, device_ref)` as a process holding (a copy of) `device`."""
    box: dict[str, Any] = {}

    async def proc(sys: Sys) -> None:
        dev = sys.cap("device")
        assert dev is not None
        box["value"] = await body(sys, dev)

    c = k.init.spawn(proc, caps=[k.init.derive(device)], **spawn)
    reason = await asyncio.wait_for(k.wait(c.pid), TIMEOUT)
    return reason, box.get("value")


# --- key-value ------------------------------------------------------------------------------


async def _kv_roundtrip(sys: Sys, dev: str) -> dict[str, Any]:
    h = await sys.open(dev, ns="notes")
    assert await sys.read(h, {"op": "get", "key": "a"}) is None
    await sys.write(h, {"op": "put", "key": "a", "value": {"x": [1, 2]}})
    await sys.write(h, {"op": "put", "key": "ab", "value": "two"})
    await sys.write(h, {"op": "put", "key": "b", "value": 3})
    got = await sys.read(h, {"op": "get", "key": "a"})
    keys = await sys.read(h, {"op": "keys", "prefix": "a"})
    all_keys = await sys.read(h, {"op": "keys"})
    await sys.write(h, {"op": "delete", "key": "ab"})
    await sys.write(h, {"op": "delete", "key": "never-there"})
    after = await sys.read(h, {"op": "keys"})
    return {"got": got, "keys": keys, "all": all_keys, "after": after}


EXPECTED_ROUNDTRIP = {
    "got": {"x": [1, 2]},
    "keys": ["a", "ab"],
    "all": ["a", "ab", "b"],
    "after": ["a", "b"],
}


def test_kv_in_memory_gets_puts_deletes_and_lists_keys_by_prefix(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            dev = k.register_driver(KVDriver())
            reason, got = await _run_with(k, dev, _kv_roundtrip)
            assert reason == NORMAL
            assert got == EXPECTED_ROUNDTRIP

    virtual(main())


def test_kv_on_a_store_persists_across_a_kernel_restart(real: Any, tmp_path: Path) -> None:
    db = tmp_path / "yool.db"

    async def first() -> None:
        with Store.open(db) as store:
            async with Kernel(store=store) as k:
                dev = k.register_driver(KVDriver(store))
                reason, got = await _run_with(k, dev, _kv_roundtrip)
                assert reason == NORMAL
                assert got == EXPECTED_ROUNDTRIP

    async def second() -> None:
        async def read_back(sys: Sys, dev: str) -> Any:
            h = await sys.open(dev, ns="notes")
            return [await sys.read(h, {"op": "get", "key": "a"}), await sys.read(h, {"op": "keys"})]

        with Store.open(db) as store:
            async with Kernel(store=store) as k:
                dev = k.register_driver(KVDriver(store))
                reason, got = await _run_with(k, dev, read_back)
                assert reason == NORMAL
                assert got == [{"x": [1, 2]}, ["a", "b"]]

    real(first())
    real(second())


@pytest.mark.parametrize("backed", [False, True], ids=["memory", "store"])
def test_kv_namespaces_are_isolated(real: Any, tmp_path: Path, backed: bool) -> None:
    async def body(sys: Sys, dev: str) -> Any:
        mine = await sys.open(dev, ns="mine")
        theirs = await sys.open(dev, ns="theirs")
        default = await sys.open(dev)
        await sys.write(mine, {"op": "put", "key": "k", "value": "mine"})
        await sys.write(theirs, {"op": "put", "key": "k", "value": "theirs"})
        return [
            await sys.read(mine, {"op": "get", "key": "k"}),
            await sys.read(theirs, {"op": "get", "key": "k"}),
            await sys.read(default, {"op": "get", "key": "k"}),
            await sys.read(default, {"op": "keys"}),
        ]

    async def main() -> None:
        with Store.open(tmp_path / "yool.db") as store:
            async with Kernel(store=store if backed else None) as k:
                dev = k.register_driver(KVDriver(store if backed else None))
                reason, got = await _run_with(k, dev, body)
                assert reason == NORMAL
                assert got == ["mine", "theirs", None, []]

    real(main())


@pytest.mark.parametrize(
    ("op", "request_", "message"),
    [
        ("read", "get a", r"kv: a request is a dict with 'op' \(get or keys\), got str"),
        ("read", {"key": "a"}, r"kv: op must be get or keys, got None"),
        ("read", {"op": "put", "key": "a"}, r"kv: op must be get or keys, got 'put'"),
        ("read", {"op": "get", "key": 7}, r"kv: key must be a string, got int"),
        ("read", {"op": "keys", "prefix": None}, r"kv: prefix must be a string, got NoneType"),
        ("write", {"op": "get", "key": "a"}, r"kv: op must be put or delete, got 'get'"),
        ("write", {"op": "put"}, r"kv: key must be a string, got NoneType"),
        ("write", {"op": "put", "key": "a", "value": {1, 2}}, r"kv: value for 'a' is not JSON"),
    ],
)
def test_kv_bad_requests_give_a_driver_error_naming_the_field(
    virtual: Any, op: str, request_: Any, message: str
) -> None:
    async def body(sys: Sys, dev: str) -> Any:
        h = await sys.open(dev)
        with pytest.raises(DriverError, match=message):
            await (sys.read(h, request_) if op == "read" else sys.write(h, request_))
        return await sys.read(h, {"op": "keys"})  # the handle still works, nothing was written

    async def main() -> None:
        async with Kernel() as k:
            dev = k.register_driver(KVDriver())
            assert await _run_with(k, dev, body) == (NORMAL, [])

    virtual(main())


def test_kv_open_with_a_bad_namespace_is_refused(virtual: Any) -> None:
    async def body(sys: Sys, dev: str) -> None:
        with pytest.raises(DriverError, match="kv: ns must be a non-empty string"):
            await sys.open(dev, ns="")

    async def main() -> None:
        async with Kernel() as k:
            assert await _run_with(k, k.register_driver(KVDriver()), body) == (NORMAL, None)

    virtual(main())


# --- tools ----------------------------------------------------------------------------------


def test_tools_driver_calls_sync_and_async_tools(virtual: Any) -> None:
    def add(a: int, b: int) -> int:
        return a + b

    async def shout(text: str) -> str:
        await asyncio.sleep(0.01)
        return text.upper()

    async def body(sys: Sys, dev: str) -> Any:
        h = await sys.open(dev)
        return [
            await sys.read(h, {"tool": "add", "args": {"a": 2, "b": 3}}),
            await sys.read(h, {"tool": "shout", "args": {"text": "hi"}}),
        ]

    async def main() -> None:
        async with Kernel() as k:
            dev = k.register_driver(ToolsDriver({"add": add, "shout": shout}))
            assert await _run_with(k, dev, body) == (NORMAL, [5, "HI"])

    virtual(main())


def test_a_sync_tool_runs_in_a_worker_thread_without_blocking_the_loop(real: Any) -> None:
    seen: dict[str, Any] = {}

    def slow() -> str:
        seen["thread"] = threading.current_thread()
        time.sleep(0.3)
        return "done"

    async def main() -> None:
        async with Kernel() as k:
            dev = k.register_driver(ToolsDriver({"slow": slow}))
            ticks = 0
            stop = asyncio.Event()

            async def ticker() -> None:
                nonlocal ticks
                while not stop.is_set():
                    ticks += 1
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(ticker())

            async def body(sys: Sys, dev: str) -> Any:
                return await sys.read(await sys.open(dev), {"tool": "slow"})

            assert await _run_with(k, dev, body) == (NORMAL, "done")
            stop.set()
            await task
            assert ticks >= 10  # the loop kept running during the 0.3 s call
            assert seen["thread"] is not threading.main_thread()

    real(main())


def test_each_tool_call_costs_one_tool_call_charged_to_the_caller_and_its_ancestors(
    virtual: Any,
) -> None:
    async def main() -> None:
        async with Kernel() as k:
            dev = k.register_driver(ToolsDriver({"ping": lambda: "pong"}))
            usage: dict[str, Any] = {}

            async def grandchild(sys: Sys) -> None:
                h = await sys.open(sys.cap("device") or "")
                for _ in range(3):
                    assert await sys.read(h, {"tool": "ping"}) == "pong"
                usage["grandchild"] = sys.usage()["tool_calls"]

            async def middle(sys: Sys) -> None:
                dev = sys.cap("device") or ""
                c = sys.spawn(grandchild, caps=[sys.derive(dev)])
                await sys.wait(c.ref)
                usage["middle"] = sys.usage()["tool_calls"]

            spawn = k.init.cap("spawn") or ""
            c = k.init.spawn(middle, caps=[k.init.derive(dev), k.init.derive(spawn)])
            assert await asyncio.wait_for(k.wait(c.pid), TIMEOUT) == NORMAL
            assert usage == {"grandchild": 3, "middle": 3}
            assert k.init.usage()["tool_calls"] == 3
            assert k.metrics()["charged_total"]["tool_calls"] == 3

    virtual(main())


def test_a_call_past_the_tool_call_budget_is_refused_before_the_tool_runs(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            effects: list[int] = []

            def act(i: int) -> int:
                effects.append(i)
                return i

            dev = k.register_driver(ToolsDriver({"act": act}))

            async def greedy(sys: Sys, dev: str) -> None:
                h = await sys.open(dev)
                for i in range(3):
                    await sys.read(h, {"tool": "act", "args": {"i": i}})

            reason, _ = await _run_with(k, dev, greedy, budget=Budget(tool_calls=2))
            assert reason == quota("tool_calls")
            assert effects == [0, 1]  # the third call never reached the tool

            async def careful(sys: Sys, dev: str) -> Any:
                h = await sys.open(dev)
                await sys.read(h, {"tool": "act", "args": {"i": 10}})
                try:
                    await sys.read(h, {"tool": "act", "args": {"i": 11}})
                except QuotaExceeded as e:
                    return [e.resource, sys.usage()["tool_calls"], sys.budget()["tool_calls"]]
                return None

            reason, got = await _run_with(k, dev, careful, budget=Budget(tool_calls=1))
            assert reason == NORMAL
            assert got == ["tool_calls", 1, 0]
            assert effects == [0, 1, 10]

    virtual(main())


def test_an_ancestors_tool_call_budget_bounds_its_descendants(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            effects: list[str] = []
            dev = k.register_driver(ToolsDriver({"act": lambda: effects.append("ran")}))
            reasons: list[Any] = []

            async def worker(sys: Sys) -> None:
                h = await sys.open(sys.cap("device") or "")
                for _ in range(5):
                    await sys.read(h, {"tool": "act"})

            async def boss(sys: Sys) -> None:
                dev = sys.cap("device") or ""
                for _ in range(2):
                    c = sys.spawn(worker, caps=[sys.derive(dev)])
                    reasons.append(await sys.wait(c.ref))

            spawn = k.init.cap("spawn") or ""
            c = k.init.spawn(
                boss, caps=[k.init.derive(dev), k.init.derive(spawn)], budget=Budget(tool_calls=3)
            )
            assert await asyncio.wait_for(k.wait(c.pid), TIMEOUT) == NORMAL
            assert reasons == [quota("tool_calls"), quota("tool_calls")]
            assert len(effects) == 3

    virtual(main())


def test_a_handle_opened_with_a_tool_list_sees_only_those_tools(virtual: Any) -> None:
    async def body(sys: Sys, dev: str) -> Any:
        h = await sys.open(dev, tools=["read_file"])
        ok = await sys.read(h, {"tool": "read_file", "args": {"path": "a.txt"}})
        with pytest.raises(
            DriverError, match=r"no tool 'rm' on this handle \(offered: read_file\)"
        ):
            await sys.read(h, {"tool": "rm", "args": {"path": "a.txt"}})
        with pytest.raises(DriverError, match=r"unknown tool\(s\) nope \(offered: read_file, rm\)"):
            await sys.open(dev, tools=["read_file", "nope"])
        return ok

    async def main() -> None:
        async with Kernel() as k:
            dev = k.register_driver(
                ToolsDriver({"read_file": lambda path: f"<{path}>", "rm": lambda path: None})
            )
            assert await _run_with(k, dev, body) == (NORMAL, "<a.txt>")

    virtual(main())


@pytest.mark.parametrize(
    ("request_", "message", "spent"),
    [
        ({"tool": "ghost"}, r"no tool 'ghost' on this handle \(offered: add, boom, weird\)", 0),
        ("add", r'a tool call is \{"tool": name, "args": \{\.\.\.\}\}', 0),
        ({"tool": "add", "args": [1, 2]}, r"tool 'add': args must be an object, got list", 0),
        ({"tool": "add", "args": {"a": 1}}, r"tool 'add': bad arguments \(missing a required", 0),
        ({"tool": "add", "args": {"a": 1, "b": 2, "c": 3}}, r"tool 'add': bad arguments", 0),
        ({"tool": "boom"}, r"tool 'boom' failed: ValueError: no luck", 1),
        ({"tool": "weird"}, r"tool 'weird' returned a value that is not JSON", 1),
    ],
)
def test_tools_bad_calls_give_a_driver_error_and_cost_only_if_the_tool_ran(
    virtual: Any, request_: Any, message: str, spent: int
) -> None:
    def add(a: int, b: int) -> int:
        return a + b

    def boom() -> None:
        raise ValueError("no luck")

    async def body(sys: Sys, dev: str) -> Any:
        h = await sys.open(dev)
        with pytest.raises(DriverError, match=message):
            await sys.read(h, request_)
        return sys.usage()["tool_calls"]

    async def main() -> None:
        async with Kernel() as k:
            dev = k.register_driver(ToolsDriver({"add": add, "boom": boom, "weird": object}))
            assert await _run_with(k, dev, body) == (NORMAL, spent)

    virtual(main())


def test_tools_driver_refuses_a_tool_that_is_not_callable() -> None:
    with pytest.raises(DriverError, match="tool 'x' is not callable"):
        ToolsDriver({"x": 42})  # type: ignore[dict-item]


# --- device capabilities and handles --------------------------------------------------------


class Probe(Driver):
    """Reads and writes echo; counts opened and closed handles."""

    name = "probe"

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0

    async def open(self, pid: int, params: dict[str, Any]) -> Handle:
        self.opened += 1
        return _ProbeHandle(self)


class _ProbeHandle(Handle):
    def __init__(self, driver: Probe) -> None:
        self.d = driver

    async def read(self, request: Any) -> Reply:
        return Reply(("read", request))

    async def write(self, data: Any) -> Reply:
        return Reply(("wrote", data))

    async def close(self) -> None:
        self.d.closed += 1


def test_a_device_opens_only_through_a_device_capability(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            probe = Probe()
            dev = k.register_driver(probe)
            errors: list[str] = []

            async def intruder(sys: Sys) -> None:
                for ref in (dev, "cap_" + "0" * 24, sys.self_ref(), 42):
                    try:
                        await sys.open(ref)  # type: ignore[arg-type]
                    except CapError as e:
                        errors.append(str(e))

            c = k.init.spawn(intruder)
            assert await k.wait(c.pid) == NORMAL
            assert len(errors) == 4
            assert "is not held by pid" in errors[0]  # init's capability, not the intruder's
            assert "unknown or revoked" in errors[1]
            assert "lacks right 'open'" in errors[2]  # a process capability is not a device
            assert "unknown or revoked" in errors[3]
            assert probe.opened == 0

    virtual(main())


def test_a_read_only_device_capability_gives_a_handle_that_reads_but_cannot_write(
    virtual: Any,
) -> None:
    async def main() -> None:
        async with Kernel() as k:
            probe = Probe()
            dev = k.register_driver(probe)
            read_only = k.init.derive(dev, ["open", "read"])

            async def reader(sys: Sys) -> Any:
                h = await sys.open(sys.cap("device") or "")
                got = await sys.read(h, "x")
                with pytest.raises(CapError, match="lacks right 'write'"):
                    await sys.write(h, "y")
                with pytest.raises(CapError, match="cannot derive right"):
                    sys.derive(sys.cap("device") or "", ["open", "read", "write"])
                return got

            out: list[Any] = []

            async def run(sys: Sys) -> None:
                out.append(await reader(sys))

            c = k.init.spawn(run, caps=[read_only])
            assert await k.wait(c.pid) == NORMAL
            assert out == [("read", "x")]

    virtual(main())


def test_handles_close_when_their_process_dies_however_it_dies(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            probe = Probe()
            dev = k.register_driver(probe)

            async def holder(sys: Sys, how: str) -> None:
                dev = sys.cap("device") or ""
                await sys.open(dev)
                await sys.open(dev)
                if how == "fault":
                    raise RuntimeError("oops")
                if how == "wait":
                    await sys.recv()

            for how in ("normal", "fault"):
                c = k.init.spawn(holder, how, caps=[k.init.derive(dev)])
                await k.wait(c.pid)
            c = k.init.spawn(holder, "wait", caps=[k.init.derive(dev)])
            await asyncio.sleep(0.1)
            assert probe.closed == 4
            assert k.kill(c.pid, killed(1))
            await asyncio.sleep(0.1)
            assert probe.opened == probe.closed == 6

    virtual(main())


def test_a_closed_handle_cannot_be_used_again(virtual: Any) -> None:
    async def body(sys: Sys, dev: str) -> Any:
        h = await sys.open(dev)
        await sys.close(h)
        with pytest.raises(CapError, match="unknown or revoked"):
            await sys.read(h, "x")
        return True

    async def main() -> None:
        async with Kernel() as k:
            probe = Probe()
            assert await _run_with(k, k.register_driver(probe), body) == (NORMAL, True)
            assert probe.closed == 1

    virtual(main())


# --- lanes through devices ------------------------------------------------------------------


class Narrow(Driver):
    """A scarce device on lane "x": records who is served, and how many at once."""

    name = "narrow"
    lane = "x"

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.order: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def open(self, pid: int, params: dict[str, Any]) -> Handle:
        return _NarrowHandle(self)


class _NarrowHandle(Handle):
    def __init__(self, driver: Narrow) -> None:
        self.d = driver

    async def read(self, request: Any) -> Reply:
        d = self.d
        d.inside += 1
        d.most = max(d.most, d.inside)
        d.order.append(request)
        try:
            await d.gate.wait()
            await asyncio.sleep(0.01)
        finally:
            d.inside -= 1
        return Reply(request)


async def _until(predicate: Callable[[], bool]) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def _caller(sys: Sys, label: str) -> None:
    h = await sys.open(sys.cap("device") or "")
    await sys.read(h, label)


def test_a_lane_of_concurrency_one_never_runs_two_device_calls_at_once(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            narrow = Narrow()
            dev = k.register_driver(narrow)
            k.lanes.configure("x", 1)
            kids = [k.init.spawn(_caller, f"c{i}", caps=[k.init.derive(dev)]) for i in range(6)]
            for c in kids:
                assert await asyncio.wait_for(k.wait(c.pid), TIMEOUT) == NORMAL
            assert narrow.most == 1
            assert sorted(narrow.order) == [f"c{i}" for i in range(6)]
            assert k.metrics()["lanes"]["x"] == {"concurrency": 1, "in_use": 0, "waiting": 0}

    virtual(main())


def test_a_higher_priority_process_gets_the_lane_before_lower_ones_queued_earlier(
    virtual: Any,
) -> None:
    async def main() -> None:
        async with Kernel() as k:
            narrow = Narrow()
            dev = k.register_driver(narrow)
            lane = k.lanes.configure("x", 1)
            narrow.gate.clear()
            first = k.init.spawn(_caller, "first", caps=[k.init.derive(dev)])
            await _until(lambda: lane.in_use == 1)
            low = [k.init.spawn(_caller, f"low{i}", caps=[k.init.derive(dev)]) for i in range(2)]
            await _until(lambda: lane.waiting == 2)
            high = k.init.spawn(_caller, "high", caps=[k.init.derive(dev)], priority=5)
            await _until(lambda: lane.waiting == 3)
            narrow.gate.set()
            for c in [first, *low, high]:
                assert await asyncio.wait_for(k.wait(c.pid), TIMEOUT) == NORMAL
            assert narrow.order == ["first", "high", "low0", "low1"]

    virtual(main())


def test_a_tools_caveat_narrows_every_handle_opened_through_the_derived_capability(
    virtual: Any,
) -> None:
    def add(a: int, b: int) -> int:
        return a + b

    def rm(path: str) -> None:
        return None

    async def child(sys: Sys) -> tuple[Any, Any]:
        dev = sys.cap("device")
        assert dev is not None
        h = await sys.open(dev)  # asks for everything: gets only what the caveat allows
        ok = await sys.read(h, {"tool": "add", "args": {"a": 1, "b": 2}})
        with pytest.raises(DriverError, match="no tool 'rm'"):
            await sys.read(h, {"tool": "rm", "args": {"path": "/"}})
        with pytest.raises(DriverError, match="does not allow tool"):
            await sys.open(dev, tools=["rm"])
        return ok, None

    async def main() -> None:
        async with Kernel() as k:
            dev = k.register_driver(ToolsDriver({"add": add, "rm": rm}))
            narrow = k.init.derive(dev, caveat={"tools": ["add"]})
            kid = k.init.spawn(child, caps=(narrow,))
            assert await k.init.wait(kid.ref) == NORMAL

    virtual(main())
