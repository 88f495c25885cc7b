"""The MCP server at its edges: both protocol eras, bad input, raw JSON-RPC, cancellation,
context cost and streamable HTTP.

Every test talks to a real `python -m yool server` subprocess on a temporary `YOOL_HOME`:
through the real MCP SDK client over stdio (one server per era, shared by the tests of this
module so the file stays fast), raw newline-delimited JSON-RPC for malformed input, and the
SDK's streamable HTTP client for `--http`. Slow agents think with the fake provider on
127.0.0.1. After every refused call the server must still answer `ps`.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import queue
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import anyio
import mcp_types as types
import pytest
from jsonschema import Draft202012Validator
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from pydantic import BaseModel, Field

from stdio_servers import server_env, stdio
from yool.server.schema import compact_schema

T = TypeVar("T")
CALL_S = 20.0  # one client interaction never takes longer than this
CONTEXT_BUDGET = 16_000  # chars of the serialised tools/list with every group on


class Served:
    """One stdio server and its SDK client, kept open on a loop in a thread.

    A single task owns the client for its whole life (anyio scopes must close in the task
    that opened them); tests submit coroutines to the same loop with `run`.
    """

    def __init__(self, params: StdioServerParameters, mode: str) -> None:
        self.mode = mode
        self.loop = asyncio.new_event_loop()
        self.release = asyncio.Event()  # the host model answers once this is set
        self.asked = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.client: Client | None = None
        self._thread = threading.Thread(target=self._main, args=(params,), daemon=True)
        self._thread.start()
        if not self._ready.wait(60) or self.client is None:
            raise RuntimeError(f"the server did not start: {self._error!r}")

    async def _host_model(
        self, context: Any, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        """The client's model, for agents on the `sampling` provider: slow until released."""
        self.asked += 1
        await self.release.wait()
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="done"),
            model="host",
            stop_reason="endTurn",
        )

    def _main(self, params: StdioServerParameters) -> None:
        async def own() -> None:
            self._stop = asyncio.Event()
            try:
                async with Client(
                    params,
                    mode=self.mode,
                    sampling_callback=self._host_model,
                ) as client:
                    self.client = client
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as e:  # reported by __init__ or close
                self._error = e
                self._ready.set()

        self.loop.run_until_complete(own())
        self.loop.close()

    def run(self, fn: Callable[[Client], Awaitable[T]], timeout: float = CALL_S) -> T:
        assert self.client is not None
        client = self.client

        async def call() -> T:
            return await fn(client)

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout)

    def close(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module", params=["legacy", "auto"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    s = Served(stdio(tmp_path_factory.mktemp(f"home-{request.param}")), request.param)
    yield s
    s.close()


def ps(served: Served) -> dict[str, Any]:
    """A `ps` that must succeed: the server is still serving."""
    result = served.run(lambda c: c.call_tool("ps", {}))
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def refused(served: Served, name: str, arguments: dict[str, Any]) -> str:
    """Call a tool that must fail; its error text (then check the server still serves)."""
    try:
        result = served.run(lambda c: c.call_tool(name, arguments))
    except MCPError as e:  # a protocol-level refusal is fine too, if it says why
        text = e.error.message
    else:
        assert result.is_error, f"{name}({arguments}) was accepted: {result.structured_content}"
        assert result.structured_content is None
        assert isinstance(result.content[0], types.TextContent)
        text = result.content[0].text
    ps(served)
    return text


# -- tools/list, logging -------------------------------------------------------------------


def test_tools_list_fits_the_context_budget_and_read_only_tools_publish_their_results(
    served: Served,
) -> None:
    listed = served.run(lambda c: c.list_tools())
    names = {t.name for t in listed.tools}
    assert {"spawn", "wait", "ps", "send", "signal", "policy", "metrics"} <= names
    for tool in listed.tools:
        read_only = bool(tool.annotations and tool.annotations.read_only_hint)
        assert (tool.output_schema is not None) is read_only, tool.name
        if tool.output_schema is not None:
            assert tool.output_schema.get("type") == "object", tool.name
        assert tool.description and len(tool.description) <= 200, tool.name
        # unknown fields are refused by the server, by name; the schema need not say so
        assert '"additionalProperties": false' not in json.dumps(tool.input_schema), tool.name
    wire = json.dumps(
        listed.model_dump(mode="json", by_alias=True, exclude_none=True), separators=(",", ":")
    )
    assert len(wire) <= CONTEXT_BUDGET, f"tools/list is {len(wire)} chars"


def test_logging_set_level_is_supported_in_the_handshake_era_and_harmless_in_2026(
    served: Served,
) -> None:
    async def set_level(c: Client, level: types.LoggingLevel = "debug") -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)  # deprecated in 2026-07-28
            return await c.set_logging_level(level)

    if served.mode == "legacy":
        assert isinstance(served.run(set_level), types.EmptyResult)
        assert isinstance(served.run(lambda c: set_level(c, "warning")), types.EmptyResult)
    else:
        with contextlib.suppress(MCPError):  # refusing the deprecated request is allowed
            served.run(set_level)
    ps(served)


class _Inner(BaseModel):
    n: Annotated[int, Field(ge=0)]


class _Node(BaseModel):
    children: list[_Node] = []


class _Shape(BaseModel):
    name: str
    mode: Literal["a", "b"] | None = None
    size: Annotated[int, Field(le=5)] | None = None
    inner: _Inner | None = None
    items: list[_Inner] = []


@pytest.mark.parametrize(
    "instance",
    [
        {"name": "x"},
        {"name": "x", "mode": None, "size": None, "inner": None},
        {"name": "x", "mode": "a", "size": 5, "inner": {"n": 0}, "items": [{"n": 1}]},
        {"name": "x", "mode": "c"},  # not in the enum
        {"name": "x", "size": 6},  # over the maximum
        {"name": "x", "size": "6"},
        {"name": "x", "inner": {"n": -1}},
        {"name": "x", "items": [{"n": "one"}]},
        {"mode": "a"},  # name missing
    ],
)
def test_a_compacted_schema_accepts_and_refuses_exactly_what_the_original_does(
    instance: dict[str, Any],
) -> None:
    original = _Shape.model_json_schema()
    compact = compact_schema(original, keep_defaults=False)
    assert "$defs" not in compact and "$ref" not in json.dumps(compact)
    assert "title" not in json.dumps(compact)
    assert compact["properties"]["size"] == {"maximum": 5, "type": ["integer", "null"]}
    assert "anyOf" in compact["properties"]["mode"]  # an enum cannot absorb the null arm
    verdicts = [
        not list(Draft202012Validator(schema).iter_errors(instance))
        for schema in (original, compact)
    ]
    assert verdicts[0] == verdicts[1], (instance, compact)


def test_a_recursive_schema_is_left_as_it_is() -> None:
    original = _Node.model_json_schema()
    assert compact_schema(original, keep_defaults=False) == original


# -- bad input -----------------------------------------------------------------------------


def test_an_unknown_tool_is_refused_by_name(served: Served) -> None:
    assert "no_such_tool" in refused(served, "no_such_tool", {})


def test_wrong_types_are_refused_naming_the_field(served: Served) -> None:
    text = refused(served, "signal", {"pid": "twelve", "signal": "kill"})
    assert "pid" in text and "integer" in text
    text = refused(served, "spawn", {"task": ["do", "this"]})
    assert "task" in text and "string" in text
    text = refused(served, "signal", {"pid": 3, "signal": "explode"})
    assert "signal" in text and "'kill'" in text


def test_missing_required_fields_are_refused_naming_them(served: Served) -> None:
    assert "task" in refused(served, "spawn", {})
    text = refused(served, "signal", {"pid": 3})
    assert "signal" in text and "required" in text.lower()
    assert "pids" in refused(served, "wait", {})


def test_a_megabyte_task_is_refused_naming_the_limit_without_echoing_it(served: Served) -> None:
    text = refused(served, "spawn", {"task": "x" * 1_000_000})
    assert "task" in text and "100000" in text
    assert len(text) < 2_000


def test_unknown_pids_are_refused_naming_the_pid(served: Served) -> None:
    for name, args in [
        ("wait", {"pids": [99_999], "timeout_s": 1}),
        ("signal", {"pid": 99_999, "signal": "kill"}),
        ("send", {"pid": 99_999, "message": "hello"}),
    ]:
        text = refused(served, name, args)
        assert "pid" in text and "99999" in text, (name, text)


def test_forged_capability_refs_and_pids_that_are_not_agents_are_refused(served: Served) -> None:
    session_pid = ps(served)["session"]["pid"]
    forged = "cap:7f3a9c2e1b5d4f60a1b2c3d4e5f60718"
    text = refused(served, "send", {"pid": forged, "message": "hi"})
    assert "pid" in text and "integer" in text
    assert "pid" in refused(served, "signal", {"pid": forged, "signal": "kill"})
    for pid in (1, session_pid):  # init and the session process itself: not agents
        for name, args in [
            ("send", {"pid": pid, "message": "hi"}),
            ("signal", {"pid": pid, "signal": "kill"}),
            ("wait", {"pids": [pid], "timeout_s": 1}),
        ]:
            text = refused(served, name, args)
            assert f"no agent {pid}" in text, (name, pid, text)
    assert ps(served)["session"]["pid"] == session_pid  # nothing was killed


def test_unknown_fields_are_refused_naming_the_field(served: Served) -> None:
    text = refused(served, "ps", {"bogus_flag": True})
    assert "bogus_flag" in text and "not permitted" in text
    text = refused(served, "spawn", {"task": "hello", "budget": 5})
    assert "budget" in text


def test_a_tool_error_is_a_result_with_is_error_and_a_message(served: Served) -> None:
    result = served.run(lambda c: c.call_tool("signal", {"pid": 424_242, "signal": "term"}))
    assert result.is_error
    assert isinstance(result.content[0], types.TextContent)
    assert "pid: no agent 424242" in result.content[0].text
    ps(served)


# -- cancellation ----------------------------------------------------------------------------


async def kill(c: Client, pid: int) -> types.CallToolResult:
    return await c.call_tool("signal", {"pid": pid, "signal": "kill"})


def test_cancelling_a_wait_leaves_the_agents_running_and_the_server_usable(
    served: Served,
) -> None:
    # The agents think with the client's own model (sampling), which answers only when
    # released: they are running for as long as the test needs.
    async def scenario(c: Client) -> tuple[list[int], bool]:
        pids = []
        for i in range(2):
            r = await c.call_tool("spawn", {"task": f"slow {i}", "provider": "sampling"})
            assert not r.is_error, r.content
            pids.append(r.structured_content["pid"])
        with anyio.move_on_after(0.5) as scope:
            await c.call_tool("wait", {"pids": pids, "timeout_s": 60})
        return pids, scope.cancelled_caught

    pids, cancelled = served.run(scenario)
    assert cancelled
    rows = {row["pid"]: row for row in ps(served)["agents"]}
    assert all(rows[pid]["status"] == "running" for pid in pids), rows
    for pid in pids:  # the server still acts on them
        r = served.run(partial(kill, pid=pid))
        assert not r.is_error, r.content
    served.loop.call_soon_threadsafe(served.release.set)
    r = served.run(lambda c: c.call_tool("wait", {"pids": pids, "timeout_s": 10}))
    assert r.structured_content is not None and r.structured_content["done"]
    assert {a["reason"] for a in r.structured_content["agents"]} == {"killed(by=2)"}


# -- YOOL_TOOLS ------------------------------------------------------------------------------


def test_yool_tools_agents_hides_the_system_tools(tmp_path: Path) -> None:
    async def main() -> set[str]:
        async with Client(stdio(tmp_path, YOOL_TOOLS="agents"), mode="legacy") as c:
            names = {t.name for t in (await c.list_tools()).tools}
            refused = await c.call_tool("metrics", {})
            assert refused.is_error
            return names

    names = asyncio.run(asyncio.wait_for(main(), 60))
    assert {"spawn", "wait", "ps", "send", "signal"} <= names
    assert not names & {"policy", "metrics"}


def test_an_unknown_tool_group_stops_the_server_start_naming_it(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "yool", "server", "--stdio"],
        env=server_env(tmp_path, YOOL_TOOLS="agents,telepathy"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "YOOL_TOOLS" in done.stderr and "'telepathy'" in done.stderr
    assert "agents" in done.stderr  # the groups that do exist
    assert done.stdout == ""  # nothing on the protocol stream


# -- raw JSON-RPC ----------------------------------------------------------------------------


class Raw:
    """The server over its pipes, one JSON-RPC message a line, with no SDK in between."""

    def __init__(self, home: Path, argv: tuple[str, ...] = ("-m", "yool", "server")) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            env=server_env(home),
            cwd=home,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def write(self, raw: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(raw + b"\n")
        self.proc.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.write(json.dumps(message).encode())

    def until(self, rid: int, timeout: float = 30) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The answer to request `rid`, and every other message that came before it."""
        before: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            message = json.loads(line)  # every line the server writes is JSON
            if message.get("id") == rid and ("result" in message or "error" in message):
                return message, before
            before.append(message)

    def handshake(self) -> dict[str, Any]:
        self.send(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "0"},
                },
            }
        )
        hello, _ = self.until(1)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return hello

    def call(self, rid: int, name: str) -> None:
        params = {"name": name, "arguments": {}}
        self.send({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params})

    def close(self) -> str:
        """Stop the server (end of input); what it wrote to stderr."""
        assert self.proc.stdin is not None and self.proc.stderr is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        return self.proc.stderr.read().decode(errors="replace")


def test_every_malformed_json_rpc_line_gets_an_error_and_the_server_keeps_serving(
    tmp_path: Path,
) -> None:
    raw = Raw(tmp_path)
    try:
        assert raw.handshake()["result"]["serverInfo"]["name"] == "yool"
        for junk in [
            b"this is not json",
            b'{"jsonrpc": "2.0", "id": 2}',  # no method
            b'{"jsonrpc": "1.0", "id": 3, "method": "tools/list"}',  # wrong version
            b'{"id": 4, "method": "tools/list"}',  # no version at all
            b"[1, 2, 3]",
            b'{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": "ps"}',
            b'{"jsonrpc": "2.0", "id": 6, "method": "no/such/method"}',
            b"\x00\xff\xfe garbage " + b"#" * 2_000_000,  # a huge line of bytes
            b"{" * 100_000,  # deep nesting
        ]:
            raw.write(junk)
        raw.call(9, "ps")
        answer, before = raw.until(9)
        assert "result" in answer and not answer["result"].get("isError")
        assert "session" in answer["result"]["structuredContent"]
        assert all("error" in m and "result" not in m for m in before), before
        assert len(before) == 9, before  # one error for every bad line, in order
        by_id = {m["id"]: m["error"] for m in before if m["id"] is not None}
        assert {i: e["code"] for i, e in by_id.items()} == {
            2: -32600,
            3: -32600,
            4: -32600,
            5: -32600,
            6: -32601,  # method not found
        }
        assert "method" in by_id[2]["message"] and "2.0" in by_id[3]["message"]
        assert "params" in by_id[5]["message"]
        anonymous = [m["error"]["code"] for m in before if m["id"] is None]
        assert anonymous.count(-32700) == 3, before  # the three lines that are not JSON
        assert anonymous.count(-32600) == 1, before  # the array
        assert raw.proc.poll() is None
    finally:
        raw.close()


NOISY_SERVER = """
import subprocess, sys
from yool.server.mcp import YoolMCPServer
server = YoolMCPServer("noisy")

@server.tool()
def noisy() -> str:
    print("a stray print")
    subprocess.run([sys.executable, "-c", "print('a child writing to fd 1')"], check=True)
    return "ok"

server.run("stdio")
"""


def test_stray_output_of_a_handler_or_its_child_never_reaches_the_protocol_stream(
    tmp_path: Path,
) -> None:
    script = tmp_path / "noisy.py"
    script.write_text(NOISY_SERVER)
    raw = Raw(tmp_path, (str(script),))
    try:
        raw.handshake()
        for rid in (2, 3):
            raw.call(rid, "noisy")
            answer, others = raw.until(rid)  # every line on stdout parses as JSON
            assert answer["result"]["content"][0]["text"] == "ok" and not others
    finally:
        stderr = raw.close()
    assert raw.lines.empty()
    assert stderr.count("a stray print") == 2 and stderr.count("a child writing to fd 1") == 2


# -- streamable HTTP -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_http_server_serves_the_sdk_client_and_refuses_a_foreign_host(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "yool", "server", "--http", "--port", str(port)],
        env=server_env(tmp_path),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the HTTP server did not start"
                time.sleep(0.1)

        async def main() -> tuple[set[str], dict[str, Any]]:
            async with Client(f"http://127.0.0.1:{port}/mcp", mode="legacy") as c:
                names = {t.name for t in (await c.list_tools()).tools}
                r = await c.call_tool("ps", {})
                assert not r.is_error and r.structured_content is not None
                return names, r.structured_content

        names, status = asyncio.run(asyncio.wait_for(main(), 60))
        assert "spawn" in names and "session" in status

        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "rebind", "version": "0"},
                },
            }
        )
        headers = {
            "Host": "evil.example",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        }
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/mcp", body=body, headers=headers)
        status_code = conn.getresponse().status
        conn.close()
        assert 400 <= status_code < 500, status_code
        headers["Host"] = f"127.0.0.1:{port}"  # a right Host from a foreign page: refused too
        headers["Origin"] = "http://evil.example"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/mcp", body=body, headers=headers)
        assert 400 <= conn.getresponse().status < 500
        conn.close()
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
