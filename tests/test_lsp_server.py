"""`yool server --lsp` at its edges, through the real pygls client against the real server.

Every test starts `python -m yool server --lsp` as a subprocess with a clean environment and
its own `YOOL_HOME` (see `stdio_servers.server_env`), and drives it with
`pygls.lsp.client.LanguageClient`: the initialize result, `yool/<op>` requests and
`yool.<op>` commands (the same results as the MCP tools), errors and the server serving on
after them, `$/progress`, the coalesced `yool/agentsChanged` and `yool/trace`
notifications, `$/cancelRequest`, and a clean shutdown that leaves no process behind and a
store the next server reads. Agents that must stay running think with the fake Anthropic
provider on 127.0.0.1, which never answers a task marked HANG.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types as lsp
from mcp.client import Client
from pygls.exceptions import JsonRpcException
from pygls.lsp.client import LanguageClient

from stdio_servers import on_fake_anthropic, server_env, stdio
from yool import __version__
from yool.policy import RuntimePolicy
from yool.server.lsp import YoolLanguageServer, raw_converter
from yool.testing import FakeProvider, Fault, Recorded, Script, Turn
from yool.testing.fake_provider import ThreadedFakeProvider
from yool.tools import Args, Call, Operation, Result, enabled

SERVER = ("-m", "yool", "server", "--lsp")
CALL_S = 20.0  # one request never takes longer than this
KEY = "sk-ant-lsp-test-secret"


class Served:
    """One server subprocess and the client on it, with everything the server sent."""

    def __init__(self) -> None:
        self.client = LanguageClient("yool-tests", "1", converter_factory=raw_converter)
        self.changed: list[tuple[float, dict[str, Any]]] = []  # (arrival, params)
        self.traced: list[dict[str, Any]] = []
        self.others: list[dict[str, Any]] = []  # yool/othersChanged params
        self.progress: list[tuple[Any, dict[str, Any]]] = []  # (token, value)
        self.created: list[Any] = []  # tokens the server asked the client to create
        self.shown: list[lsp.ShowMessageParams] = []
        self.logged: list[lsp.LogMessageParams] = []
        self.stderr: list[str] = []
        self.init: lsp.InitializeResult | None = None
        self.returncode: int | None = None
        c = self.client

        @c.feature("yool/agentsChanged")
        def changed(params: Any) -> None:
            self.changed.append((time.monotonic(), params))

        @c.feature("yool/trace")
        def traced(params: Any) -> None:
            self.traced.append(params)

        @c.feature("yool/othersChanged")
        def others(params: Any) -> None:
            self.others.append(params)

        @c.feature(lsp.PROGRESS)
        def progress(params: lsp.ProgressParams) -> None:
            self.progress.append((params.token, params.value))

        @c.feature(lsp.WINDOW_WORK_DONE_PROGRESS_CREATE)
        def create(params: lsp.WorkDoneProgressCreateParams) -> None:
            self.created.append(params.token)

        @c.feature(lsp.WINDOW_SHOW_MESSAGE)
        def shown(params: lsp.ShowMessageParams) -> None:
            self.shown.append(params)

        @c.feature(lsp.WINDOW_LOG_MESSAGE)
        def logged(params: lsp.LogMessageParams) -> None:
            self.logged.append(params)

    @property
    def proc(self) -> asyncio.subprocess.Process:
        proc = self.client._server
        assert proc is not None
        return proc

    async def request(self, method: str, params: Any = None) -> Any:
        return await asyncio.wait_for(
            self.client.protocol.send_request_async(method, params), CALL_S
        )

    async def command(self, op: str, *arguments: Any, token: Any = None) -> Any:
        params = lsp.ExecuteCommandParams(
            command=f"yool.{op}", arguments=list(arguments), work_done_token=token
        )
        return await asyncio.wait_for(self.client.workspace_execute_command_async(params), CALL_S)

    async def error(self, method: str, params: Any = None) -> JsonRpcException:
        with pytest.raises(JsonRpcException) as caught:
            await self.request(method, params)
        return caught.value

    async def ps(self, **args: Any) -> dict[str, Any]:
        result = await self.request("yool/ps", args)
        assert isinstance(result, dict)
        return result

    async def stop(self) -> int:
        """shutdown, exit, and the server's exit status."""
        await asyncio.wait_for(self.client.shutdown_async(None), CALL_S)
        self.client.exit(None)
        self.returncode = await asyncio.wait_for(self.proc.wait(), CALL_S)
        await asyncio.wait_for(self.client.stop(), CALL_S)
        return self.returncode


async def until(check: Callable[[], Any], within: float = 10.0) -> Any:
    """Poll `check` until it returns something truthy (then return it), or fail."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {check}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def served(
    home: Path,
    *,
    root: Path | None = None,
    capabilities: lsp.ClientCapabilities | None = None,
    stop: bool = True,
    **extra: str,
) -> AsyncIterator[Served]:
    """A server on `home` working in `root` (its workspace folder), initialized."""
    s = Served()
    await s.client.start_io(sys.executable, *SERVER, env=server_env(home, **extra), cwd=str(home))

    async def drain() -> None:  # the client pipes stderr and never reads it
        stream = s.proc.stderr
        assert stream is not None
        while line := await stream.readline():
            s.stderr.append(line.decode(errors="replace"))

    reader = asyncio.create_task(drain())
    folder = root or home
    s.init = await asyncio.wait_for(
        s.client.initialize_async(
            lsp.InitializeParams(
                capabilities=capabilities or lsp.ClientCapabilities(),
                root_uri=folder.as_uri(),
                workspace_folders=[lsp.WorkspaceFolder(uri=folder.as_uri(), name="ws")],
            )
        ),
        60,
    )
    s.client.initialized(lsp.InitializedParams())
    try:
        yield s
        if stop and s.returncode is None:
            assert await s.stop() == 0, "".join(s.stderr)
    finally:
        if s.proc.returncode is None:
            s.proc.kill()
            await s.proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader, 5)
        assert KEY not in "".join(s.stderr)
        sent = [s.changed, s.traced, s.others, s.progress]
        sent.append([m.message for m in s.shown + s.logged])
        assert KEY not in json.dumps(sent, default=str)


def run(main: Callable[[], Any], timeout: float = 90) -> Any:
    return asyncio.run(asyncio.wait_for(main(), timeout))


def _respond(rec: Recorded) -> Turn:
    return Turn.say("ok")


def _hang(rec: Recorded) -> Fault | None:
    return Fault.timeout() if "HANG" in json.dumps(rec.body) else None


@pytest.fixture
def fake() -> Iterator[ThreadedFakeProvider]:
    with FakeProvider.start_in_thread(Script(respond=_respond), fault_for=_hang) as f:
        yield f


# -- initialize ---------------------------------------------------------------------------


def test_initialize_lists_every_enabled_operation_as_a_command_and_in_experimental(
    tmp_path: Path,
) -> None:
    ops = enabled(RuntimePolicy.model_fields["tools"].default)

    async def main() -> None:
        async with served(tmp_path) as s:
            assert s.init is not None
            caps = s.init.capabilities
            assert s.init.server_info == lsp.ServerInfo(name="yool", version=__version__)
            assert caps.execute_command_provider is not None
            # The table's order follows module import order, which differs between processes.
            commands = sorted(caps.execute_command_provider.commands)
            assert commands == sorted(f"yool.{o.name}" for o in ops)
            assert caps.text_document_sync == lsp.TextDocumentSyncKind.None_
            table = caps.experimental["yool"]
            assert table["version"] == 1
            assert sorted(table["operations"], key=lambda o: o["name"]) == [
                {
                    "name": o.name,
                    "group": o.group,
                    "readOnly": o.read_only,
                    "blocking": o.blocking,
                    "description": o.description,
                }
                for o in sorted(ops, key=lambda o: o.name)
            ]
            assert {"yool.ps", "yool.spawn", "yool.wait", "yool.signal", "yool.trace"} <= set(
                caps.execute_command_provider.commands
            )

    run(main)


def test_yool_tools_limits_the_commands_and_requests_to_its_groups(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path, YOOL_TOOLS="agents") as s:
            assert s.init is not None and s.init.capabilities.execute_command_provider
            commands = set(s.init.capabilities.execute_command_provider.commands)
            assert {"yool.spawn", "yool.ps"} <= commands
            assert "yool.metrics" not in commands
            assert (await s.error("yool/metrics", {})).code == -32601
            assert "agents" in await s.ps()

    run(main)


# -- calling operations -------------------------------------------------------------------


def test_ps_over_lsp_equals_the_mcp_ps_tool_for_the_same_store(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as s:
            pids = [
                (await s.request("yool/spawn", {"task": f"task {name}"}))["pid"]
                for name in ("alpha", "beta")
            ]
            waited = await s.request("yool/wait", {"pids": pids, "timeout_s": 20})
            assert waited["done"], waited
            live = await s.ps()
        assert [a["pid"] for a in live["agents"]] == sorted(pids, reverse=True)
        async with Client(stdio(tmp_path), mode="legacy") as mcp:
            r = await mcp.call_tool("ps", {"all": True})
            assert not r.is_error, r.content
            by_mcp = r.structured_content
        async with served(tmp_path) as s:
            by_lsp = await s.ps(all=True)
        assert by_mcp is not None
        assert by_lsp["agents"] == by_mcp["agents"]
        assert [a["pid"] for a in by_lsp["agents"]] == sorted(pids, reverse=True)
        for agent in by_lsp["agents"]:
            assert {"pid", "status", "steps", "tokens", "usd", "task"} <= agent.keys()
            assert agent["status"] == "exited" and agent["reason"] == "normal"
            assert "answer" not in agent  # ps leaves answers to wait/inspect
        assert by_lsp["session"].keys() == by_mcp["session"].keys()
        assert by_lsp["session"].keys() == {"pid", "tokens", "usd", "tool_calls", "remaining"}
        # what the agents were listed as while they lived, as the later servers list them
        assert live["agents"] == by_lsp["agents"]

    run(main, 120)


def test_spawn_through_execute_command_then_wait_returns_the_answer(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as s:
            spawned = await s.command("spawn", {"task": "say hi"})
            assert spawned.keys() == {"pid", "provider"} and spawned["provider"] == "scripted"
            waited = await s.request("yool/wait", {"pids": [spawned["pid"]], "timeout_s": 20})
            assert waited["done"] and not waited["timed_out"]
            (agent,) = waited["agents"]
            assert agent["pid"] == spawned["pid"]
            assert agent["status"] == "exited" and agent["reason"] == "normal"
            assert agent["answer"] == "Done: say hi"
            # a command with no arguments is the op with its defaults
            assert (await s.command("ps"))["agents"][0]["pid"] == spawned["pid"]
            assert s.shown == []

    run(main)


def test_the_workspace_is_the_clients_first_workspace_folder(tmp_path: Path) -> None:
    root = tmp_path / "project"
    root.mkdir()
    (root / "here.txt").write_text("x")
    home = tmp_path / "home"
    home.mkdir()

    async def main() -> None:
        async with served(home, root=root) as s:
            e = await s.error("yool/spawn", {"task": "t", "paths": ["missing"]})
            assert e.code == -32001
            assert f"does not exist in the workspace {root.resolve()}" in e.message
            ok = await s.request("yool/spawn", {"task": "t", "paths": ["here.txt"]})
            assert ok["pid"] > 0

    run(main)


def test_a_workspace_folder_that_is_no_directory_is_logged_and_the_cwd_used(
    tmp_path: Path,
) -> None:
    gone = tmp_path / "gone"
    cwd = tmp_path.resolve()

    async def main() -> None:
        async with served(tmp_path, root=gone) as s:
            warned = await until(lambda: [m for m in s.logged if str(gone) in m.message])
            assert warned[0].type == lsp.MessageType.Warning
            assert "is not a directory" in warned[0].message
            e = await s.error("yool/spawn", {"task": "t", "paths": ["missing"]})
            assert f"workspace {cwd}" in e.message  # the server's cwd

    run(main)


# -- errors ------------------------------------------------------------------------------


def test_invalid_params_are_32602_naming_the_field_and_the_server_serves_on(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with served(tmp_path) as s:
            e = await s.error("yool/spawn", {})
            assert e.code == -32602
            assert e.message == "task: Field required"
            assert e.data == {"errors": [{"loc": ["task"], "msg": "Field required"}]}
            e = await s.error("yool/signal", {"pid": 3, "signal": "hup"})
            assert e.code == -32602 and e.message.startswith("signal: Input should be 'kill'")
            e = await s.error("yool/ps", {"limit": 10, "bogus": True})
            assert e.code == -32602 and e.message == "bogus: Extra inputs are not permitted"
            e = await s.error("yool/ps", [1, 2])
            assert e.code == -32602 and e.message.startswith("params: ")
            with pytest.raises(JsonRpcException) as caught:
                await s.command("ps", {}, {})
            assert caught.value.code == -32602 and caught.value.message.startswith("arguments:")
            assert (await s.ps())["agents"] == []
            assert not s.proc.returncode

    run(main)


def test_an_op_error_is_32001_with_the_operations_message(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as s:
            e = await s.error("yool/signal", {"pid": 424242, "signal": "kill"})
            assert e.code == -32001
            assert e.message == "pid: no agent 424242 is known to this session (see `ps`)"
            assert e.data is None
            await asyncio.sleep(0.3)
            assert s.shown == []  # a custom request's caller handles its own errors
            assert "Traceback" not in "".join(s.stderr)  # the caller's mistake, not a crash
            assert "agents" in await s.ps()

    run(main)


def test_a_failed_command_also_shows_an_error_message(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as s:
            with pytest.raises(JsonRpcException) as caught:
                await s.command("signal", {"pid": 424242, "signal": "stop"})
            assert caught.value.code == -32001
            shown = await until(lambda: s.shown)
            assert shown[0].type == lsp.MessageType.Error
            assert shown[0].message == (
                "yool signal: pid: no agent 424242 is known to this session (see `ps`)"
            )
            with pytest.raises(JsonRpcException) as caught:
                await s.command("spawn", {"task": ""})
            assert caught.value.code == -32602
            await until(lambda: len(s.shown) == 2)
            assert s.shown[1].message.startswith("yool spawn: task: String should have at least")

    run(main)


def test_an_unknown_operation_is_method_not_found(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as s:
            e = await s.error("yool/nope", {})
            assert e.code == -32601 and "yool/nope" in e.message
            with pytest.raises(JsonRpcException) as caught:
                await s.command("nope", {})
            assert caught.value.code == -32601 and "yool.nope" in caught.value.message
            shown = await until(lambda: s.shown)
            assert shown[0].message.startswith("yool nope: ")
            assert "agents" in await s.ps()

    run(main)


# -- progress -----------------------------------------------------------------------------


def _kinds(progress: list[tuple[Any, dict[str, Any]]], token: Any) -> list[str]:
    return [value["kind"] for t, value in progress if t == token]


def test_a_blocking_op_reports_progress_on_the_callers_work_done_token(
    tmp_path: Path, fake: ThreadedFakeProvider
) -> None:
    async def main() -> None:
        async with served(tmp_path, **on_fake_anthropic(fake.url, KEY)) as s:
            pid = (await s.request("yool/spawn", {"task": "HANG on"}))["pid"]
            waited = await s.request(
                "yool/wait", {"pids": [pid], "timeout_s": 0.5, "workDoneToken": "t-request"}
            )
            assert waited["timed_out"] and not waited["done"]
            kinds = _kinds(s.progress, "t-request")
            assert kinds[0] == "begin" and kinds[-1] == "end"
            assert kinds.count("begin") == 1 and kinds.count("end") == 1
            assert kinds.count("report") >= 2  # heartbeats every YOOL_HEARTBEAT_S
            values = [v for t, v in s.progress if t == "t-request"]
            assert values[0]["title"] == "yool wait"
            reports = [v for v in values if v["kind"] == "report"]
            assert all(r["message"].startswith("0/1 ended") for r in reports), reports
            percents = [r["percentage"] for r in reports]
            assert percents == sorted(percents) and all(0 <= p <= 100 for p in percents)

            waited = await s.command("wait", {"pids": [pid], "timeout_s": 0.3}, token=7)
            assert waited["timed_out"]
            kinds = _kinds(s.progress, 7)
            assert kinds[0] == "begin" and kinds[-1] == "end" and "report" in kinds
            # a quick op with a token: no progress, the token is simply not used
            await s.request("yool/ps", {"workDoneToken": "t-ps"})
            assert _kinds(s.progress, "t-ps") == []
            assert s.created == []  # the client did not announce window.workDoneProgress

    run(main)


def test_the_server_creates_a_progress_token_when_the_client_supports_it(
    tmp_path: Path, fake: ThreadedFakeProvider
) -> None:
    caps = lsp.ClientCapabilities(window=lsp.WindowClientCapabilities(work_done_progress=True))

    async def main() -> None:
        async with served(tmp_path, capabilities=caps, **on_fake_anthropic(fake.url, KEY)) as s:
            pid = (await s.request("yool/spawn", {"task": "HANG on"}))["pid"]
            await s.request("yool/wait", {"pids": [pid], "timeout_s": 0.5})
            (token,) = s.created
            kinds = _kinds(s.progress, token)
            assert kinds[0] == "begin" and kinds[-1] == "end" and "report" in kinds

    run(main)


# -- notifications ------------------------------------------------------------------------


def _agent(params: dict[str, Any], pid: int) -> dict[str, Any] | None:
    return next((a for a in params["agents"] if a["pid"] == pid), None)


def test_agents_changed_arrives_after_spawn_and_after_exit_with_the_reason(
    tmp_path: Path, fake: ThreadedFakeProvider
) -> None:
    async def main() -> None:
        async with served(tmp_path, **on_fake_anthropic(fake.url, KEY)) as s:
            pid = (await s.request("yool/spawn", {"task": "HANG on"}))["pid"]
            spawned = await until(lambda: [p for _, p in s.changed if _agent(p, pid)])
            assert _agent(spawned[0], pid)["status"] == "running"  # type: ignore[index]
            assert spawned[0].keys() == {"agents", "session"}
            assert spawned[0]["session"].keys() == {
                "pid",
                "tokens",
                "usd",
                "tool_calls",
                "remaining",
            }
            session = spawned[0]["session"]["pid"]
            await s.request("yool/signal", {"pid": pid, "signal": "kill"})

            def exited() -> dict[str, Any] | None:
                last = s.changed[-1][1] if s.changed else None
                agent = _agent(last, pid) if last else None
                return agent if agent and agent["status"] == "exited" else None

            agent = await until(exited)
            assert agent["reason"] == f"killed(by={session})"
            # the notification is `ps` with its defaults
            assert s.changed[-1][1]["agents"] == (await s.ps())["agents"]

    run(main)


def test_others_shows_another_servers_agents_on_the_same_home_as_they_change(
    tmp_path: Path, fake: ThreadedFakeProvider
) -> None:
    """VS Code's agent mode runs `yool server --stdio` beside the extension's LSP server:
    its agents are not the LSP session's, but `yool/others` shows them, and while watched
    `yool/othersChanged` follows them from running to how they ended."""
    env = on_fake_anthropic(fake.url, KEY)

    def row(params: dict[str, Any], pid: int, status: str) -> dict[str, Any] | None:
        agent = _agent(params, pid)
        return agent if agent is not None and agent["status"] == status else None

    async def main() -> None:
        async with served(tmp_path, **env) as s:
            first = await s.request("yool/others", {"watch": True})
            assert first == {"agents": [], "watching": True}
            mine = (await s.request("yool/spawn", {"task": "mine"}))["pid"]
            async with Client(stdio(tmp_path, **env), mode="legacy") as mcp:
                r = await mcp.call_tool("spawn", {"task": "HANG in agent mode"})
                assert not r.is_error, r.content
                assert r.structured_content is not None
                theirs = r.structured_content["pid"]
                running = await until(lambda: [p for p in s.others if row(p, theirs, "running")])
                assert (row(running[0], theirs, "running") or {})["task"] == "HANG in agent mode"
                got = await s.request("yool/others")  # no watch given: it keeps watching
                assert got["watching"] and row(got, theirs, "running")
                await mcp.call_tool("signal", {"pid": theirs, "signal": "kill"})
                ended = await until(lambda: [p for p in s.others if row(p, theirs, "exited")])
                assert (row(ended[-1], theirs, "exited") or {})["reason"].startswith("killed")
                # not watched: nothing is pushed, but a request still reads them
                assert (await s.request("yool/others", {"watch": False}))["watching"] is False
                seen = len(s.others)
                r = await mcp.call_tool("spawn", {"task": "unwatched"})
                assert r.structured_content is not None
                later = r.structured_content["pid"]
                await mcp.call_tool("wait", {"pids": [later], "timeout_s": 20})
                await asyncio.sleep(1.5)
                assert len(s.others) == seen
                now = await s.request("yool/others")
                assert row(now, theirs, "exited") and row(now, later, "exited")
            # its own agents are not among the others, and the others not in its ps
            assert all(_agent(p, mine) is None for p in [*s.others, now])
            assert [a["pid"] for a in (await s.ps())["agents"]] == [mine]
            error = await s.error("yool/others", {"watch": "sometimes"})
            assert error.code == -32602 and "watch" in str(error)

    run(main, 120)


def test_a_burst_of_spawns_gives_few_agents_changed_and_the_last_has_them_all(
    tmp_path: Path, fake: ThreadedFakeProvider
) -> None:
    n = 24

    async def main() -> None:
        async with served(tmp_path, **on_fake_anthropic(fake.url, KEY)) as s:
            await s.request("yool/spawn", {"task": "HANG warm the provider"})
            await until(lambda: s.changed)
            await asyncio.sleep(0.6)
            before = len(s.changed)
            spawned = await asyncio.gather(
                *(s.request("yool/spawn", {"task": f"HANG {i}"}) for i in range(n))
            )
            pids = {r["pid"] for r in spawned}

            def complete() -> bool:
                return bool(s.changed) and pids <= {a["pid"] for a in s.changed[-1][1]["agents"]}

            await until(complete)
            await asyncio.sleep(0.6)  # nothing more is owed
            burst = s.changed[before:]
            assert 1 <= len(burst) <= n // 4, len(burst)
            assert pids <= {a["pid"] for a in burst[-1][1]["agents"]}
            gaps = [b[0] - a[0] for a, b in itertools.pairwise(burst)]
            assert all(g > 0.1 for g in gaps), gaps  # 250 ms apart, less the client's jitter

    run(main)


def test_trace_follow_then_trace_notifications_carry_the_kernel_events(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path) as s:
            first = (await s.request("yool/spawn", {"task": "before following"}))["pid"]
            await s.request("yool/wait", {"pids": [first], "timeout_s": 20})
            await asyncio.sleep(0.4)
            assert s.traced == []  # nothing until asked

            assert await s.request("yool/traceFollow", {"follow": True}) == {}
            pid = (await s.request("yool/spawn", {"task": "while following"}))["pid"]
            await s.request("yool/wait", {"pids": [pid], "timeout_s": 20})

            def events() -> list[dict[str, Any]]:
                return [e for batch in s.traced for e in batch["events"]]

            await until(lambda: any(e["kind"] == "exit" and e["pid"] == pid for e in events()))
            got = events()
            assert all(batch.keys() == {"events"} for batch in s.traced)
            assert any(e["kind"] == "spawn" and e["pid"] == pid for e in got)
            assert all(e["pid"] != first for e in got)
            seqs = [e["seq"] for e in got]
            assert seqs == sorted(set(seqs))
            # the same events, in the same shape, as the trace operation returns
            traced = await s.request("yool/trace", {"pid": pid, "n": 1000})
            by_seq = {e["seq"]: e for e in got}
            for event in traced["events"]:
                assert by_seq[event["seq"]] == event

            assert await s.request("yool/traceFollow", {"follow": False}) == {}
            await asyncio.sleep(0.4)
            settled = len(s.traced)
            third = (await s.request("yool/spawn", {"task": "after following"}))["pid"]
            await s.request("yool/wait", {"pids": [third], "timeout_s": 20})
            await asyncio.sleep(0.5)
            assert len(s.traced) == settled
            e = await s.error("yool/traceFollow", {"follow": "maybe"})
            assert e.code == -32602 and e.message.startswith("follow: ")

    run(main)


# -- cancellation, shutdown ----------------------------------------------------------------


def test_cancel_request_stops_a_wait_but_not_the_agent(
    tmp_path: Path, fake: ThreadedFakeProvider
) -> None:
    async def main() -> None:
        async with served(tmp_path, **on_fake_anthropic(fake.url, KEY)) as s:
            pid = (await s.request("yool/spawn", {"task": "HANG on"}))["pid"]
            proto = s.client.protocol
            for method, params in (
                ("yool/wait", {"pids": [pid], "timeout_s": 60}),
                (
                    lsp.WORKSPACE_EXECUTE_COMMAND,
                    lsp.ExecuteCommandParams(
                        command="yool.wait", arguments=[{"pids": [pid], "timeout_s": 60}]
                    ),
                ),
            ):
                msg_id = f"cancel-me-{method}"
                waiting = asyncio.wrap_future(proto.send_request(method, params, msg_id=msg_id))
                await asyncio.sleep(0.5)
                assert not waiting.done()
                start = time.monotonic()
                s.client.cancel_request(lsp.CancelParams(id=msg_id))
                with pytest.raises(JsonRpcException) as caught:
                    await asyncio.wait_for(waiting, 5)
                assert caught.value.code == -32800
                assert time.monotonic() - start < 5
            assert _agent(await s.ps(), pid)["status"] == "running"  # type: ignore[index]
            assert s.shown == []  # a cancelled command did not fail

    run(main)


def _descendants(pid: int) -> set[int]:
    """Every live process under `pid` (by parent links in /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_shutdown_cancels_calls_leaves_no_process_and_the_next_server_sees_the_agents(
    tmp_path: Path, fake: ThreadedFakeProvider
) -> None:
    env = on_fake_anthropic(fake.url, KEY)

    async def main() -> None:
        async with served(tmp_path, stop=False, **env) as s:
            ran = await s.request("yool/code_run", {"code": "print(6 * 7)"})
            assert "42" in json.dumps(ran)
            done = (await s.request("yool/spawn", {"task": "finish"}))["pid"]
            await s.request("yool/wait", {"pids": [done], "timeout_s": 20})
            hung = (await s.request("yool/spawn", {"task": "HANG on"}))["pid"]
            waiting = asyncio.ensure_future(
                s.request("yool/wait", {"pids": [hung], "timeout_s": 60})
            )
            await asyncio.sleep(0.3)
            below = _descendants(s.proc.pid)
            assert below, "the code sandbox runs in child processes"
            assert await s.stop() == 0
            with pytest.raises(JsonRpcException) as caught:
                await waiting
            assert caught.value.code == -32800  # the in-flight wait was cancelled
            await until(lambda: not any(_alive(p) for p in below), within=10)
        async with served(tmp_path, **env) as s:
            agents = {a["pid"]: a for a in (await s.ps(all=True))["agents"]}
            assert agents[done]["status"] == "exited" and agents[done]["reason"] == "normal"
            assert agents[hung]["status"] == "interrupted"  # resumable from its journal

    run(main, 120)


def test_exit_without_shutdown_closes_the_session_and_exits_1(tmp_path: Path) -> None:
    async def main() -> None:
        async with served(tmp_path, stop=False) as s:
            pid = (await s.request("yool/spawn", {"task": "remember me"}))["pid"]
            await s.request("yool/wait", {"pids": [pid], "timeout_s": 20})
            s.client.exit(None)
            assert await asyncio.wait_for(s.proc.wait(), CALL_S) == 1
            await asyncio.wait_for(s.client.stop(), CALL_S)
        async with served(tmp_path) as s:
            assert _agent(await s.ps(all=True), pid)["reason"] == "normal"  # type: ignore[index]

    run(main)


def _framed(*messages: dict[str, Any]) -> bytes:
    out = b""
    for message in messages:
        body = json.dumps(message).encode()
        out += b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    return out


def test_regular_files_as_stdio_and_requests_before_the_initialize_answer(
    tmp_path: Path,
) -> None:
    """Every message is there at once: ps waits for the session initialize is opening."""
    requests = tmp_path / "in.lsp"
    requests.write_bytes(
        _framed(
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}}},
            {"jsonrpc": "2.0", "method": "initialized", "params": {}},
            {"jsonrpc": "2.0", "id": 2, "method": "yool/ps", "params": {}},
            {"jsonrpc": "2.0", "id": 3, "method": "shutdown"},
            {"jsonrpc": "2.0", "id": 4, "method": "yool/ps", "params": {}},
            {"jsonrpc": "2.0", "method": "exit"},
        )
    )
    answers = tmp_path / "out.lsp"
    with requests.open("rb") as stdin, answers.open("wb") as stdout:
        done = subprocess.run(
            [sys.executable, *SERVER],
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=server_env(tmp_path),
            cwd=tmp_path,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr.decode()
    raw = answers.read_bytes()
    bodies: dict[int, Any] = {}
    while raw:
        header, raw = raw.split(b"\r\n\r\n", 1)
        length = int(header.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        message = json.loads(raw[:length])
        raw = raw[length:]
        if "id" in message:
            bodies[message["id"]] = message
    assert bodies[1]["result"]["serverInfo"]["name"] == "yool"
    assert bodies[2]["result"]["agents"] == []
    assert bodies[3]["result"] is None
    assert bodies[4]["error"]["code"] == -32600  # nothing is served after shutdown


def test_end_of_input_before_initialize_ends_the_server_with_status_1(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, *SERVER],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=server_env(tmp_path),
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr.decode()
    assert done.stdout == b""


def test_sigterm_closes_the_session_cleanly_and_the_next_server_sees_its_agents(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with served(tmp_path, stop=False) as s:
            pid = (await s.request("yool/spawn", {"task": "before the signal"}))["pid"]
            await s.request("yool/wait", {"pids": [pid], "timeout_s": 20})
            s.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(s.proc.wait(), CALL_S) == 1  # no shutdown came
            await asyncio.wait_for(s.client.stop(), CALL_S)
            assert "Traceback" not in "".join(s.stderr)
        async with served(tmp_path) as s:
            agent = _agent(await s.ps(all=True), pid)
            assert agent is not None and agent["reason"] == "normal"

    run(main)


class _NoArgs(Args):
    pass


class _Nothing(Result):
    pass


async def _crash(call: Call, args: _NoArgs) -> _Nothing:
    raise RuntimeError(f"internals: {KEY}")


def test_a_crash_is_32603_internal_error_naming_only_the_operation(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In process (no transport): an operation that raises is reported without internals."""
    policy = RuntimePolicy.load(server_env(tmp_path))
    server = YoolLanguageServer(policy, environ={})
    server.operations["boom"] = Operation("boom", "system", "Crash.", _NoArgs, _Nothing, _crash)

    async def main() -> None:
        await server._open(tmp_path)
        try:
            with pytest.raises(JsonRpcException) as caught:
                await server.call("boom", {})
            assert caught.value.code == -32603
            assert caught.value.message == "internal error in boom"
            assert caught.value.data is None
        finally:
            await server.close()

    run(main)
    assert "internal error in boom" in caplog.text  # the traceback stays in the server's log
