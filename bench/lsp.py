"""LSP server figures: `yool/ps` round trips over stdio, and how long the server takes to
answer `initialize`. A real `python -m yool server --lsp` subprocess (scripted provider,
5 finished agents in the session so `ps` lists real rows), driven by the real pygls client.
Prints one JSON object per figure; well under a minute."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lsprotocol import types as lsp
from pygls.lsp.client import LanguageClient

sys.path.append(str(Path(__file__).resolve().parent))
from _common import emit
from yool.server.lsp import raw_converter

AGENTS = 5
WARMUP = 100
CALLS = 1_000


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("YOOL_", "ANTHROPIC_", "OPENAI_", "CODEX_"))
    }
    env.update(YOOL_HOME=str(home), YOOL_PROVIDER="scripted")
    return env


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        client = LanguageClient("bench", "1", converter_factory=raw_converter)
        client.feature("yool/agentsChanged")(lambda params: None)
        started = time.perf_counter()
        await client.start_io(
            sys.executable, "-m", "yool", "server", "--lsp", env=_env(home), cwd=tmp
        )
        proc = client._server
        assert proc is not None and proc.stderr is not None
        drain = asyncio.create_task(proc.stderr.read())  # the client never reads stderr
        params = lsp.InitializeParams(capabilities=lsp.ClientCapabilities(), root_uri=home.as_uri())
        await client.initialize_async(params)
        emit("lsp_initialize_ms", (time.perf_counter() - started) * 1000, "ms", note="from exec")
        request = client.protocol.send_request_async
        pids: list[Any] = [
            (await request("yool/spawn", {"task": f"task {i}"}))["pid"] for i in range(AGENTS)
        ]
        await request("yool/wait", {"pids": pids, "timeout_s": 30})
        for _ in range(WARMUP):
            await request("yool/ps", {})
        times = []
        cpu0, mine0 = _cpu(proc.pid), time.process_time()
        for _ in range(CALLS):
            t0 = time.perf_counter()
            await request("yool/ps", {})
            times.append(time.perf_counter() - t0)
        server_us = (_cpu(proc.pid) - cpu0) / CALLS * 1e6
        client_us = (time.process_time() - mine0) / CALLS * 1e6
        times.sort()
        p50 = statistics.median(times) * 1000
        p99 = times[int(len(times) * 0.99)] * 1000
        emit(
            "lsp_ps_p50_ms",
            p50,
            "ms",
            calls=CALLS,
            rows=AGENTS,
            server_cpu_us=round(server_us),
            client_cpu_us=round(client_us),
        )
        emit("lsp_ps_p99_ms", p99, "ms", calls=CALLS, rows=AGENTS)
        await client.shutdown_async(None)
        client.exit(None)
        await proc.wait()
        await client.stop()
        await drain


if __name__ == "__main__":
    asyncio.run(main())
