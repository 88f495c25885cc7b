"""Several yool processes on one YOOL_HOME: a boot leaves the live ones' processes alone and
marks only the processes of boots that died as interrupted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from yool.drivers.llm.scripted import reply
from yool.drivers.llm.types import LLMRequest, LLMResponse
from yool.kernel.store import Store
from yool.policy import RuntimePolicy
from yool.tools import OPERATIONS, Call, OpError, Session, load_all

load_all()


def test_a_second_store_leaves_a_live_boots_processes_running(tmp_path: Path) -> None:
    db = tmp_path / "yool.db"
    first = Store.open(db)
    pid = first.reserve_pids(8).start
    first.put_process(pid, 1, "worker", None, "running", time.time())
    first.flush()
    second = Store.open(db)
    try:
        assert second.mark_interrupted() == []  # the first is alive: its row stays running
        row = second.process(pid)
        assert row is not None and row.status == "running"
    finally:
        second.close()
    first.close()  # gone without ending its process, like a crash
    third = Store.open(db)
    try:
        assert third.mark_interrupted() == [pid]
    finally:
        third.close()


def test_a_second_server_sees_the_first_ones_agents_as_elsewhere_and_cannot_touch_them(
    tmp_path: Path,
) -> None:
    release = asyncio.Event()

    async def slow_host(request: LLMRequest) -> LLMResponse:
        await release.wait()
        return reply("finished")

    async def main() -> None:
        policy = RuntimePolicy(home=tmp_path / "home", heartbeat_s=0.05)
        async with Session.open(policy, workspace=tmp_path, environ={}) as first:
            first.sampling.callback = slow_host
            a = Call(first)
            pid = (await OPERATIONS["spawn"](a, {"task": "t", "provider": "sampling"})).pid
            await asyncio.sleep(0.1)
            async with Session.open(policy, workspace=tmp_path, environ={}) as second:
                b = Call(second)
                rows = (await OPERATIONS["ps"](b, {"all": True})).agents
                assert [(r.pid, r.status) for r in rows] == [(pid, "elsewhere")]
                for name, args in (
                    ("signal", {"pid": pid, "signal": "kill"}),
                    ("resume", {"pid": pid}),
                ):
                    with pytest.raises(OpError, match=f"agent {pid}"):
                        await OPERATIONS[name](b, args)
                waited = await OPERATIONS["wait"](b, {"pids": [pid], "timeout_s": 0.1})
                assert not waited.done
            release.set()
            done: Any = await OPERATIONS["wait"](a, {"pids": [pid], "timeout_s": 5})
            assert done.agents[0].reason == "normal"

    asyncio.run(main())


def test_yool_ps_shows_the_agents_of_a_dead_server_as_interrupted(tmp_path: Path) -> None:
    import sqlite3

    from yool import watch

    db = tmp_path / "yool.db"
    server = Store.open(db)
    pid = server.reserve_pids(8).start
    server.put_process(pid, 2, "yool.react", "agent", "running", time.time())
    server.kv_put("agents", f"{pid:012d}", {"pid": pid, "task": "t", "status": "running"})
    server.flush()

    def status() -> str:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            return str(watch.agents(conn)[0]["status"])
        finally:
            conn.close()

    assert status() == "running"  # its server is alive
    server.close()  # the server is gone without ending its agent (as with SIGKILL)
    assert status() == "interrupted"
