"""Introspection: ps, inspect, trace, metrics and the Prometheus text exposition."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from typing import Any

import pytest

from yool.drivers import ToolsDriver
from yool.kernel import NORMAL, Budget, Kernel, KernelError, ProcInfo, Sys, killed


async def waiter(sys: Sys) -> None:
    """Waits for "go", leaving anything else in its mailbox."""
    await sys.recv(match=lambda body: body == "go")


async def sleeper(sys: Sys) -> None:
    await sys.sleep(3600)


async def spender(sys: Sys) -> None:
    h = await sys.open(sys.cap("device") or "")
    await sys.read(h, {"tool": "ping"})
    await sys.recv(match=lambda body: body == "go")


async def parent(sys: Sys) -> None:
    sys.register("boss")
    sys.spawn(waiter, name="kid-a")
    sys.spawn(waiter, name="kid-b")
    await sys.remember("remember the milk " * 20)
    await sys.recv(match=lambda body: body == "go")


async def _until(predicate: Any) -> None:
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition not reached")


def _row(k: Kernel, pid: int) -> ProcInfo:
    return next(p for p in k.ps() if p.pid == pid)


def test_ps_shows_state_mailbox_usage_and_remaining_budget(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            dev = k.register_driver(ToolsDriver({"ping": lambda: "pong"}))
            w = k.init.spawn(waiter, name="w")
            s = k.init.spawn(sleeper, priority=2, deadline=100.0)
            m = k.init.spawn(
                spender, caps=[k.init.derive(dev)], budget=Budget(tool_calls=5, tokens=1000)
            )
            await _until(lambda: _row(k, w.pid).state == "waiting")
            await _until(lambda: _row(k, m.pid).state == "waiting")
            assert k.post(w.pid, "later")
            assert k.post(w.pid, {"also": "later"})
            k.signal(s.pid, "stop")

            rows = {p.pid: p for p in k.ps()}
            assert set(rows) == {1, w.pid, s.pid, m.pid}
            assert rows[1].name == "init"
            assert rows[w.pid].name == "w"
            assert rows[w.pid].state == "waiting"
            assert rows[w.pid].mailbox == 2
            assert rows[w.pid].parent == 1
            assert rows[s.pid].state == "stopped"
            assert rows[s.pid].priority == 2
            assert rows[s.pid].deadline_in == pytest.approx(100.0, abs=0.1)
            assert rows[m.pid].usage["tool_calls"] == 1
            assert rows[m.pid].remaining["tool_calls"] == 4
            assert rows[m.pid].remaining["tokens"] == 1000
            assert rows[w.pid].remaining["tool_calls"] is None  # no limit anywhere
            assert rows[1].usage["tool_calls"] == 1  # init's account covers the whole tree
            assert json.loads(json.dumps(rows[m.pid].to_json()))["usage"]["tool_calls"] == 1
            assert rows[w.pid].uptime_s >= 0

            assert k.post(w.pid, "go")
            assert await k.wait(w.pid) == NORMAL
            assert w.pid not in {p.pid for p in k.ps()}

    virtual(main())


def test_inspect_shows_links_monitors_children_names_caps_and_previews(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            dev = k.register_driver(ToolsDriver({"ping": lambda: "pong"}))
            spawn = k.init.cap("spawn") or ""
            p = k.init.spawn(
                parent,
                caps=[k.init.derive(spawn), k.init.derive(dev, ["open", "read"])],
                link=True,
                monitor=True,
            )
            await _until(lambda: len(k.ps()) == 4 and _row(k, p.pid).state == "waiting")
            assert k.post(p.pid, "x" * 500)
            info = k.inspect(p.pid)
            kids = sorted(c.pid for c in k.ps() if c.parent == p.pid)
            assert len(kids) == 2
            assert info["children"] == kids
            assert info["links"] == [1]
            assert info["monitors"] == [1]
            assert info["names"] == ["boss"]
            assert info["state"] == "waiting"
            assert info["mailbox"] == 1
            assert info["mailbox_preview"] == ["x" * 117 + "..."]
            caps = sorted(info["caps"], key=lambda c: c["kind"])
            assert caps == [
                {
                    "kind": "device",
                    "target": "tools",
                    "rights": ["open", "read"],
                    "expires_in": None,
                },
                {"kind": "spawn", "target": None, "rights": ["spawn"], "expires_in": None},
            ]
            assert len(info["working_set"]) == 1
            assert info["working_set"][0]["preview"].startswith("remember the milk")
            assert info["working_set"][0]["preview"].endswith("...")
            assert info["memory"]["resident"] == 1
            text = json.dumps(info)  # plain JSON, and no capability reference leaks out
            assert "cap_" not in text
            assert all("ref" not in c for c in info["caps"])

            with pytest.raises(KernelError, match="no live process 424242"):
                k.inspect(424242)

    virtual(main())


def test_inspect_shows_an_expiring_capability_with_its_time_left(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            dev = k.register_driver(ToolsDriver({}))
            w = k.init.spawn(waiter, caps=[k.init.derive(dev, expires_in=30.0)])
            await asyncio.sleep(10.0)
            (cap,) = k.inspect(w.pid)["caps"]
            assert cap["expires_in"] == pytest.approx(20.0)
            await asyncio.sleep(25.0)
            assert k.inspect(w.pid)["caps"] == []  # expired capabilities are not shown

    virtual(main())


def test_trace_returns_the_last_n_events_optionally_for_one_pid(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            a = k.init.spawn(waiter)
            b = k.init.spawn(waiter)
            await asyncio.sleep(0)
            k.signal(a.pid, "stop")
            k.signal(a.pid, "cont")
            k.kill(a.pid, killed(1))
            k.kill(b.pid, killed(1))
            mine = k.trace(10, a.pid)
            assert [e.kind for e in mine] == ["spawn", "signal", "signal", "exit"]
            assert [e.data["signal"] for e in mine[1:3] if e.data] == ["stop", "cont"]
            assert mine[-1].data is not None
            assert mine[-1].data["reason"] == {"kind": "killed", "by": 1}
            assert [e.kind for e in k.trace(2, a.pid)] == ["signal", "exit"]
            last = k.trace(2)
            assert [(e.kind, e.pid) for e in last] == [("exit", a.pid), ("exit", b.pid)]
            assert last[0].seq < last[1].seq
            assert all(e.seq < f.seq for e, f in itertools.pairwise(k.trace(50)))
            assert k.trace(5, 424242) == []
            as_json = last[0].to_json()
            assert as_json["kind"] == "exit"
            assert as_json["reason"] == {"kind": "killed", "by": 1}

    virtual(main())


def test_metrics_count_spawns_exits_by_reason_messages_drops_and_charges(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            dev = k.register_driver(ToolsDriver({"ping": lambda: "pong"}))

            async def crash(sys: Sys) -> None:
                raise RuntimeError("no")

            async def chatter(sys: Sys, ref: str) -> None:
                assert await sys.send(ref, "go")

            w = k.init.spawn(waiter)
            m = k.init.spawn(spender, caps=[k.init.derive(dev)])
            bad = k.init.spawn(crash)
            await k.wait(bad.pid)
            await _until(lambda: _row(k, m.pid).state == "waiting")
            ref = k.init.derive(w.ref)
            k.init.spawn(chatter, ref, caps=[ref])
            assert await asyncio.wait_for(k.wait(w.pid), 10.0) == NORMAL
            assert not await k.init.send(w.ref, "too late")  # dropped: the receiver is dead
            k.kill(m.pid, killed(1))
            await asyncio.sleep(0)

            got = k.metrics()
            assert got["processes"] == 1
            assert got["spawned_total"] == 4
            assert got["exits_total"] == {"normal": 2, "fault": 1, "killed": 1}
            assert got["messages_sent_total"] == 1
            assert got["messages_received_total"] == 1
            assert got["messages_dropped_total"] == 1
            assert got["charged_total"] == {"tokens": 0, "usd": 0.0, "tool_calls": 1}
            assert got["events_total"] == k.events.seq
            assert got["capabilities"] >= 2  # init's spawn and device capabilities
            assert got["lanes"]["tools"]["in_use"] == 0
            json.dumps(got)

    virtual(main())


_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?:\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*)\})?'
    r" (?P<value>[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|Inf|NaN))$"
)


def _parse_prometheus(text: str) -> dict[str, dict[str, Any]]:
    """A strict reader of the text exposition format: families with HELP, TYPE and samples."""
    assert text.endswith("\n")
    families: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, help_ = line[len("# HELP ") :].split(" ", 1)
            assert name not in families, f"{name} described twice"
            families[name] = {"help": help_, "type": None, "samples": {}}
        elif line.startswith("# TYPE "):
            name, kind = line[len("# TYPE ") :].split(" ")
            assert families[name]["type"] is None
            assert not families[name]["samples"], "TYPE must come before the samples"
            assert kind in ("counter", "gauge")
            families[name]["type"] = kind
        else:
            m = _SAMPLE.match(line)
            assert m is not None, f"not a sample line: {line!r}"
            family = families[m["name"]]  # a sample belongs to a family already described
            assert family["type"] is not None
            family["samples"][m["labels"] or ""] = float(m["value"])
    for name, family in families.items():
        assert family["help"], name
        if family["type"] == "counter":
            assert name.endswith("_total"), name
    return families


def test_prometheus_text_is_valid_exposition_matching_the_metrics(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            dev = k.register_driver(ToolsDriver({"ping": lambda: "pong"}))
            k.lanes.configure('odd "lane"\\name', 1)
            m = k.init.spawn(spender, caps=[k.init.derive(dev)])
            await _until(lambda: _row(k, m.pid).state == "waiting")
            k.kill(m.pid, killed(1))
            w = k.init.spawn(waiter)
            await asyncio.sleep(0)

            families = _parse_prometheus(k.prometheus())
            metrics = k.metrics()
            assert families["yool_processes"]["type"] == "gauge"
            assert families["yool_processes"]["samples"] == {"": 2}
            assert families["yool_spawned_total"]["samples"] == {"": 2}
            assert families["yool_exits_total"]["samples"] == {'reason="killed"': 1}
            assert families["yool_charged_total"]["samples"]['meter="tool_calls"'] == 1
            assert families["yool_events_total"]["samples"][""] == metrics["events_total"]
            lanes = families["yool_lane_in_use"]["samples"]
            assert lanes['lane="tools"'] == 0
            assert lanes['lane="odd \\"lane\\"\\\\name"'] == 0  # label values are escaped
            assert k.post(w.pid, "go")

    virtual(main())


def test_prometheus_text_of_a_fresh_kernel_is_valid(virtual: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            families = _parse_prometheus(k.prometheus())
            assert families["yool_exits_total"]["samples"] == {}
            assert families["yool_processes"]["samples"] == {"": 1}

    virtual(main())


def test_a_child_spawned_with_wrong_arguments_faults_and_leaves_no_stale_ps_row(
    virtual: Any,
) -> None:
    def not_async(sys: Sys) -> None:
        return None

    async def main() -> None:
        async with Kernel() as k:
            arity = k.init.spawn(waiter, "unexpected")
            sync = k.init.spawn(not_async)  # type: ignore[arg-type]
            reason = await asyncio.wait_for(k.wait(arity.pid), 10.0)
            assert reason.kind == "fault"
            assert "TypeError" in str(reason.detail)
            reason = await asyncio.wait_for(k.wait(sync.pid), 10.0)
            assert reason.kind == "fault"
            assert "is not an async function" in str(reason.detail)
            assert [p.pid for p in k.ps()] == [1]
            assert k.metrics()["exits_total"] == {"fault": 2}

    virtual(main())
