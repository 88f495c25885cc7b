"""MCP server figures: `ps` round trips over stdio, calls per second, and the size of
`tools/list`. A real `python -m yool server --stdio` subprocess, driven by the real MCP SDK
client in each protocol era. Prints one JSON object per figure."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# This script shares its name with the SDK package: keep its own directory off the import
# path while importing `mcp`, then put it back (last) for `_common`.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
from mcp.client import Client  # noqa: E402
from mcp.client.stdio import StdioServerParameters  # noqa: E402

sys.path.append(str(_HERE))
from _common import emit  # noqa: E402

AGENTS = 5  # agents in the session, so `ps` lists real rows
WARMUP = 200
CALLS = 2_000  # timed sequential `ps` round trips per era
BURST = 2_000  # calls in the concurrent figure
CONCURRENCY = 16
ERAS = {"legacy": "2025-11-25", "auto": "2026-07-28"}


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's direct children: the server."""
    me, total = os.getpid(), 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _pct(sorted_s: list[float], q: float) -> float:
    return sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1e3


async def era(mode: str, home: str) -> dict[str, Any]:
    env = dict(os.environ, YOOL_HOME=home, YOOL_PROVIDER="scripted", YOOL_TOOLS="all")
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "yool", "server", "--stdio"], env=env, cwd=home
    )
    async with Client(params, mode=mode) as c:
        listed = await c.list_tools()
        wire = listed.model_dump(mode="json", by_alias=True, exclude_none=True)
        tools_chars = len(json.dumps(wire, separators=(",", ":")))
        pids = []
        for i in range(AGENTS):
            spawned = await c.call_tool("spawn", {"task": f"bench task {i}"})
            assert not spawned.is_error, spawned.content
            pids.append(spawned.structured_content["pid"])  # type: ignore[index]
        await c.call_tool("wait", {"pids": pids})
        for _ in range(WARMUP):
            await c.call_tool("ps", {})
        times: list[float] = []
        cpu0, server0, t0 = time.process_time(), _children_cpu(), time.perf_counter()
        for _ in range(CALLS):
            t = time.perf_counter()
            result = await c.call_tool("ps", {})
            times.append(time.perf_counter() - t)
        wall = time.perf_counter() - t0
        client_cpu, server_cpu = time.process_time() - cpu0, _children_cpu() - server0
        assert not result.is_error and len(result.structured_content["agents"]) == AGENTS  # type: ignore[index]

        sem = asyncio.Semaphore(CONCURRENCY)

        async def one() -> None:
            async with sem:
                await c.call_tool("ps", {"limit": 1})

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(BURST)))
        burst = time.perf_counter() - t0
    times.sort()
    return {
        "p50": _pct(times, 0.5),
        "p99": _pct(times, 0.99),
        "sequential": CALLS / wall,
        "concurrent": BURST / burst,
        "client_cpu_us": client_cpu / CALLS * 1e6,
        "server_cpu_us": server_cpu / CALLS * 1e6,
        "tools_chars": tools_chars,
        "tools": len(listed.tools),
    }


async def pipelined(home: str) -> float:
    """Calls/s the server answers when a client pipelines raw JSON-RPC (no SDK client)."""
    env = dict(os.environ, YOOL_HOME=home, YOOL_PROVIDER="scripted", YOOL_TOOLS="all")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "yool", "server", "--stdio"),
        env=env,
        cwd=home,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        limit=1 << 24,
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    def line(message: dict[str, Any]) -> bytes:
        return json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n"

    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "b"}}
    stdin.write(line({"id": 0, "method": "initialize", "params": {**hello}}))
    await stdout.readline()
    stdin.write(line({"method": "notifications/initialized"}))
    call = {"method": "tools/call", "params": {"name": "ps", "arguments": {"limit": 1}}}

    async def burst(n: int) -> float:
        t0 = time.perf_counter()
        for i in range(n):
            stdin.write(line({"id": i + 1, **call}))
        await stdin.drain()
        for _ in range(n):
            answer = json.loads(await stdout.readline())
            assert "result" in answer and not answer["result"].get("isError"), answer
        return n / (time.perf_counter() - t0)

    await burst(WARMUP)
    rate = await burst(BURST)
    stdin.close()
    await proc.wait()
    return rate


def main() -> None:
    results = {}
    for mode in ERAS:
        with tempfile.TemporaryDirectory() as home:
            results[mode] = asyncio.run(era(mode, home))
    with tempfile.TemporaryDirectory() as home:
        raw_rate = asyncio.run(pipelined(home))
    for mode, protocol in ERAS.items():
        r = results[mode]
        suffix = "" if mode == "legacy" else "_2026"
        context = {"protocol": protocol, "agents": AGENTS, "calls": CALLS}
        emit(
            f"mcp_ps_p50_ms{suffix}",
            r["p50"],
            "ms",
            **context,
            client_cpu_us=round(r["client_cpu_us"]),
            server_cpu_us=round(r["server_cpu_us"]),
        )
        emit(f"mcp_ps_p99_ms{suffix}", r["p99"], "ms", **context)
        emit(
            f"mcp_calls_per_s{suffix}",
            r["concurrent"],
            "calls/s",
            protocol=protocol,
            measure=f"{BURST} `ps limit=1` calls, {CONCURRENCY} in flight on one connection",
            sequential=round(r["sequential"]),
        )
    emit(
        "mcp_server_calls_per_s",
        raw_rate,
        "calls/s",
        protocol=ERAS["legacy"],
        measure=f"{BURST} `ps limit=1` calls pipelined as raw JSON-RPC lines (no SDK client)",
    )
    emit(
        "tools_list_chars",
        results["legacy"]["tools_chars"],
        "chars",
        tools=results["legacy"]["tools"],
        groups="all",
        measure="compact JSON of the tools/list result",
    )


if __name__ == "__main__":
    sys.exit(main())
