"""The fast lane answers read-only tool calls exactly as the SDK would, and takes nothing else.

Two halves. In-process, a `FastLane` over a real `Session` is fed raw lines: it must take
only plain read-only `tools/call`s of a settled connection, in the era the first request
chose, and leave everything unusual to the SDK. Over stdio, two real servers (lane on and
`YOOL_FAST_LANE=0`) get the same raw JSON-RPC script in each protocol era, and every answer
must be the same JSON.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from stdio_servers import server_env
from yool.policy import RuntimePolicy
from yool.server.failures import failure_message
from yool.server.fastlane import FastLane, fast_operations
from yool.tools import OPERATIONS, Args, Call, Operation, OpError, Result, Session, load_all

load_all()

MODERN = "2026-07-28"
STAMP = {"name": "yool", "version": "test"}
CAPS_KEY = "io.modelcontextprotocol/clientCapabilities"
VERSION_KEY = "io.modelcontextprotocol/protocolVersion"


def envelope(version: str = MODERN, caps: Any = None) -> dict[str, Any]:
    meta: dict[str, Any] = {VERSION_KEY: version}
    if caps is not ...:
        meta[CAPS_KEY] = {} if caps is None else caps
    return {"_meta": meta}


def call_line(rid: Any, name: str, arguments: Any = None, **params: Any) -> str:
    body: dict[str, Any] = {"name": name, **params}
    if arguments is not None:
        body["arguments"] = arguments
    return json.dumps({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": body})


def initialize_line(version: str = "2025-11-25") -> str:
    params = {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t"}}
    return json.dumps({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params})


INITIALIZED = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"})


# -- a test operation that takes its time, and one that crashes ----------------------------


class SlowArgs(Args):
    seconds: float = Field(0.0, ge=0)


class Slept(Result):
    slept: float


async def _slow(call: Call, args: SlowArgs) -> Slept:
    await asyncio.sleep(args.seconds)
    if args.seconds == 0.25:
        raise OpError("seconds: 0.25 is unlucky; pick another")
    if args.seconds == 0.5:
        raise RuntimeError("secret internals /etc/passwd")
    return Slept(slept=args.seconds)


SLOW = Operation("slow", "system", "Sleep.", SlowArgs, Slept, _slow, read_only=True)


class Lane:
    """A lane over a real in-memory session; collects what it writes."""

    def __init__(self, session: Session) -> None:
        ops = {**fast_operations(OPERATIONS.values()), "slow": SLOW}
        self.lane = FastLane(ops, lambda: session, STAMP, failure_message)
        self.out: list[dict[str, Any]] = []

    async def _write(self, data: bytes) -> None:
        assert data.endswith(b"\n") and data.count(b"\n") == 1  # one message, one line
        self.out.append(json.loads(data))

    def offer(self, line: str) -> bool:
        return self.lane.offer(line, self._write)

    async def answers(self, n: int) -> list[dict[str, Any]]:
        async with asyncio.timeout(5):
            while len(self.out) < n:  # noqa: ASYNC110 - the lane's tasks write when they run
                await asyncio.sleep(0.001)
        return self.out


@asynccontextmanager
async def lane(tmp_path: Path) -> AsyncIterator[Lane]:
    policy = RuntimePolicy(home=tmp_path / "home")
    async with Session.open(policy, workspace=tmp_path, in_memory=True) as session:
        yield Lane(session)


def test_the_handshake_era_is_served_only_once_the_client_is_initialized(
    tmp_path: Path, real: Any
) -> None:
    async def main() -> list[dict[str, Any]]:
        async with lane(tmp_path) as t:
            assert not t.offer(call_line(1, "ps", {}))  # before initialize: the SDK refuses it
            assert not t.offer(initialize_line())
            assert not t.offer(call_line(2, "ps", {}))  # initialize not yet acknowledged
            assert not t.offer(INITIALIZED)
            assert t.offer(call_line(3, "ps", {}))
            assert t.offer(call_line(4, "policy"))  # no arguments at all is fine
            # a 2026 envelope on a handshake connection is the SDK's to refuse
            assert not t.offer(call_line(5, "ps", {}, **envelope()))
            return await t.answers(2)

    first, second = sorted(real(main()), key=lambda m: m["id"])
    assert first["id"] == 3 and first["jsonrpc"] == "2.0"
    result = first["result"]
    assert result["isError"] is False and "resultType" not in result and "_meta" not in result
    assert json.loads(result["content"][0]["text"]) == result["structuredContent"]
    assert set(result["structuredContent"]) == {"agents", "session"}
    assert second["result"]["structuredContent"]["values"]["YOOL_FAST_LANE"] is True


def test_the_stateless_era_needs_a_whole_envelope_on_every_call(tmp_path: Path, real: Any) -> None:
    async def main() -> list[dict[str, Any]]:
        async with lane(tmp_path) as t:
            assert t.offer(call_line(1, "ps", {}, **envelope()))  # the first request opens it
            assert not t.offer(call_line(2, "ps", {}))  # no envelope
            assert not t.offer(call_line(3, "ps", {}, **envelope(caps=...)))  # no capabilities
            assert not t.offer(call_line(4, "ps", {}, **envelope("2099-01-01")))
            assert not t.offer(call_line(5, "ps", {}, **envelope(caps={"sampling": 5})))
            assert not t.offer(initialize_line())
            assert t.offer(call_line("six", "inspect", {"pid": 424242}, **envelope()))
            return await t.answers(2)

    ok, refused = sorted(real(main()), key=lambda m: str(m["id"]))
    for message in (ok, refused):
        assert message["result"]["resultType"] == "complete"
        assert message["result"]["_meta"] == {"io.modelcontextprotocol/serverInfo": STAMP}
    assert ok["id"] == 1 and ok["result"]["isError"] is False
    assert refused["id"] == "six" and refused["result"]["isError"] is True
    assert refused["result"]["content"][0]["text"].startswith("Error executing tool inspect: pid:")


@pytest.mark.parametrize(
    "line",
    [
        call_line(9, "spawn", {"task": "x"}),  # changes things
        call_line(9, "wait", {"pids": [1]}),  # blocks
        call_line(9, "nosuch", {}),
        call_line(9, "ps", {"limit": 0}),  # the SDK words argument errors
        call_line(9, "ps", {"bogus": True}),
        call_line(9, "ps", [1, 2]),
        call_line(9, "ps", {}, task={"ttl": 1}),  # a request field the lane does not know
        call_line(True, "ps", {}),
        call_line(None, "ps", {}),
        call_line([1], "ps", {}),
        json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}),
        json.dumps({"jsonrpc": "2.0", "id": 9, "method": "tools/call"}),
        json.dumps({"jsonrpc": "1.0", "id": 9, "method": "tools/call", "params": {"name": "ps"}}),
        json.dumps([{"jsonrpc": "2.0", "id": 9, "method": "tools/call"}]),
        '{"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "ps"',
        "not json at all",
    ],
)
def test_anything_but_a_plain_read_only_call_is_left_to_the_sdk(
    tmp_path: Path, real: Any, line: str
) -> None:
    async def main() -> None:
        async with lane(tmp_path) as t:
            t.offer(initialize_line())
            t.offer(INITIALIZED)
            assert not t.offer(line)
            await asyncio.sleep(0.01)
            assert t.out == []

    real(main())


def test_a_server_still_starting_leaves_every_call_to_the_sdk(real: Any) -> None:
    async def main() -> None:
        fast = FastLane(fast_operations(OPERATIONS.values()), lambda: None, STAMP, failure_message)

        async def write(data: bytes) -> None:
            raise AssertionError("nothing is written")

        assert not fast.offer(call_line(1, "ps", {}, **envelope()), write)

    real(main())


def test_failures_read_as_the_sdk_words_them_and_crashes_keep_their_internals(
    tmp_path: Path, real: Any
) -> None:
    async def main() -> list[dict[str, Any]]:
        async with lane(tmp_path) as t:
            assert t.offer(call_line(1, "slow", {"seconds": 0.25}, **envelope()))
            assert t.offer(call_line(2, "slow", {"seconds": 0.5}, **envelope()))
            return await t.answers(2)

    unlucky, crash = sorted(real(main()), key=lambda m: m["id"])
    assert unlucky["result"]["isError"] is True
    text = unlucky["result"]["content"][0]["text"]
    assert text == "Error executing tool slow: seconds: 0.25 is unlucky; pick another"
    assert crash["result"]["content"][0]["text"] == "Error executing tool slow"
    assert "passwd" not in json.dumps(crash)


def test_a_cancelled_call_is_never_answered_and_the_end_waits_for_the_rest(
    tmp_path: Path, real: Any
) -> None:
    async def main() -> list[dict[str, Any]]:
        async with lane(tmp_path) as t:
            assert t.offer(call_line(1, "slow", {"seconds": 0.2}, **envelope()))
            assert t.offer(call_line(2, "slow", {"seconds": 0.1}, **envelope()))
            assert not t.offer(call_line(2, "slow", {}, **envelope()))  # id 2 is in flight
            cancel = {"method": "notifications/cancelled", "params": {"requestId": 1}}
            assert not t.offer(json.dumps({"jsonrpc": "2.0", **cancel}))
            await t.lane.aclose()
            await asyncio.sleep(0.3)
            return t.out

    out = real(main())
    assert [m["id"] for m in out] == [2]
    assert out[0]["result"]["structuredContent"] == {"slept": 0.1}


# -- lane on and lane off, over stdio, side by side --------------------------------------


class Raw:
    """A server over its pipes: raw JSON-RPC lines in, answers by id out."""

    def __init__(self, home: Path, **env: str) -> None:
        home.mkdir()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "yool", "server", "--stdio"],
            env=server_env(home, **env),
            cwd=home,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.answers: dict[Any, dict[str, Any]] = {}
        self.lines: dict[Any, bytes] = {}  # the raw line of each answer
        self._seen = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = json.loads(line)
            with self._seen:
                if "id" in message:
                    self.answers[message["id"]] = message
                    self.lines[message["id"]] = line
                self._seen.notify_all()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def ask(self, line: str, rid: Any, timeout: float = 60) -> dict[str, Any]:
        self.send(line)
        deadline = time.monotonic() + timeout
        with self._seen:
            while rid not in self.answers:
                left = deadline - time.monotonic()
                assert left > 0, f"no answer to {rid}"
                self._seen.wait(left)
            return self.answers.pop(rid)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


SCRIPT: list[tuple[str, dict[str, Any]]] = [
    ("ps", {}),
    ("ps", {"limit": 1}),
    ("ps", {"all": True}),
    ("inspect", {"pid": 424242}),
    ("inspect", {"pid": 1}),
    ("trace", {"pid": 424242}),
    ("trace", {"n": 3, "kinds": ["spawn", "exit"]}),
    ("trace", {"n": 0}),  # refused by the SDK on both servers
    ("policy", {}),
    ("metrics", {}),
]


_CLOCKS = {"ts", "started", "ended", "created", "at", "time_s", "uptime_s", "age_s", "wall_s"}


def _same(value: Any, home: Path, key: str = "") -> Any:
    """An answer with what differs between two servers by nature (clocks, homes) blanked; a
    text block holding JSON is compared as the JSON it holds."""
    if isinstance(value, dict):
        # the one setting that differs on purpose
        return {k: _same(v, home, k) for k, v in value.items() if k != "YOOL_FAST_LANE"}
    if isinstance(value, list):
        items = [_same(v, home) for v in value]
        # capabilities are listed in the order of their (random) refs
        return sorted(items, key=json.dumps) if key == "caps" else items
    if isinstance(value, float) and key in _CLOCKS:
        return 0.0
    if isinstance(value, str):
        if key == "text" and value.startswith("{"):
            return {"json": _same(json.loads(value), home)}
        return value.replace(str(home), "HOME")
    return value


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_the_lane_answers_every_read_only_call_as_the_sdk_does(tmp_path: Path, era: str) -> None:
    meta = envelope() if era == "modern" else {}
    homes = {"fast": tmp_path / "fast", "sdk": tmp_path / "sdk"}
    servers = {
        "fast": Raw(homes["fast"]),
        "sdk": Raw(homes["sdk"], YOOL_FAST_LANE="0"),
    }
    try:
        for raw in servers.values():
            if era == "legacy":
                raw.ask(initialize_line(), 0)
                raw.send(INITIALIZED)
            spawned = raw.ask(call_line(1, "spawn", {"task": "hello there"}, **meta), 1)
            pid = spawned["result"]["structuredContent"]["pid"]
            waited = raw.ask(call_line(2, "wait", {"pids": [pid]}, **meta), 2)
            assert waited["result"]["structuredContent"]["done"] is True
        for rid, (name, args) in enumerate(SCRIPT, start=10):
            line = call_line(rid, name, args, **meta)
            fast, sdk = (servers[k].ask(line, rid) for k in ("fast", "sdk"))
            if name == "metrics":  # counters move with every call; the shape must not
                assert fast["result"].keys() == sdk["result"].keys()
                f, s = (m["result"]["structuredContent"]["metrics"] for m in (fast, sdk))
                assert f.keys() == s.keys()
                continue
            assert _same(fast, homes["fast"]) == _same(sdk, homes["sdk"]), name
            # and the lane did answer: it writes a text block's type first, the SDK its text
            witness = b'{"jsonrpc":"2.0","id":%d,"result":{"content":[{"type":"text",' % rid
            lane_took = fast["result"]["isError"] is False or "validation error" not in repr(fast)
            assert servers["fast"].lines[rid].startswith(witness) is lane_took, name
            assert not servers["sdk"].lines[rid].startswith(witness), name
    finally:
        for raw in servers.values():
            raw.close()
