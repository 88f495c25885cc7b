"""The sandbox as yool uses it: the probe, failing closed, the device, callbacks, code_run.

Real zygotes, a real kernel and session, the real MCP client over stdio; the attacks
themselves are in test_sandbox_attacks.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

from stdio_servers import stdio
from yool.drivers.kv import KVDriver
from yool.drivers.sandbox import SandboxDriver
from yool.kernel import Kernel, Sys
from yool.policy import RuntimePolicy
from yool.sandbox import Config, Pool, SandboxUnavailable, Task
from yool.sandbox.probe import NAMES, probe
from yool.tools.session import Session

LEVEL = probe().level


def test_the_probe_names_every_layer_and_what_a_missing_one_leaves_open() -> None:
    p = probe()
    assert [layer.name for layer in p.layers] == list(NAMES)
    assert p.layers[0].available and p.layers[1].available
    broken = dataclasses.replace(
        p, layers=(*p.layers[:3], dataclasses.replace(p.layers[3], available=False), *p.layers[4:])
    )
    assert broken.level == 2
    with pytest.raises(SandboxUnavailable) as e:
        broken.check(6)
    text = str(e.value)
    assert "layer 3 (landlock) is missing" in text and "~/.ssh" in text
    assert "YOOL_SANDBOX_LEVEL=2" in text
    broken.check(2)  # accepting the lower level explicitly lets it run


@pytest.mark.skipif(
    os.geteuid() != 0,
    reason="it stages a missing layer by dropping to uid 0, which only root can ask for",
)
def test_a_pool_below_its_level_refuses_to_start(real: Any) -> None:
    async def main() -> None:
        pool = Pool(Config(level=2, uid=0))
        with pytest.raises(SandboxUnavailable, match=r"layer 2 \(privdrop\) is missing"):
            await pool.start()
        await pool.close()

    real(main())


def test_yool_sandbox_probe_prints_json_and_a_table() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOOL_")}
    env["YOOL_SANDBOX_LEVEL"] = str(max(LEVEL, 0))
    out = subprocess.run(
        [sys.executable, "-m", "yool", "sandbox", "probe", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(out.stdout)
    assert doc["ok"] is True and doc["level"] == LEVEL
    assert [layer["name"] for layer in doc["layers"]] == list(NAMES)
    table = subprocess.run(
        [sys.executable, "-m", "yool", "sandbox", "probe"], env=env, capture_output=True, text=True
    )
    assert table.returncode == 0 and "landlock" in table.stdout and "required" in table.stdout
    env["YOOL_SANDBOX_LEVEL"] = "7"
    bad = subprocess.run(
        [sys.executable, "-m", "yool", "sandbox", "probe"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "YOOL_SANDBOX_LEVEL='7'" in bad.stderr


def test_a_run_reports_output_exit_resources_files_and_layers(real: Any) -> None:
    async def main() -> None:
        pool = Pool(Config(level=LEVEL, zygotes=1))
        try:
            r = await pool.run(
                Task(
                    "import sys\nprint(open('in.txt').read().upper())\n"
                    "open('out/x.txt', 'w').write('made')\nprint('err', file=sys.stderr)\n"
                    "raise SystemExit(3)",
                    files={"in.txt": "hello", "out/keep.txt": "k"},
                )
            )
            assert (r.reason, r.exit_code) == ("exited", 3)
            assert r.stdout == "HELLO\n" and r.stderr == "err\n"
            assert r.files == {"out/x.txt": "made"}  # unchanged inputs are not sent back
            assert r.cpu_ms > 0 and r.max_rss_kb > 0 and r.wall_ms > 0
            assert r.layers[:2] == ["supervisor", "rlimits"]
            sh = await pool.run(Task("echo $((6 * 7)) && ls", lang="sh", files={"a": ""}))
            assert sh.stdout.split() == ["42", "a"]
            bad = await pool.run(Task("x", files={"../escape": "no"}))
            assert bad.reason == "sandbox_error" and "relative path" in (bad.error or "")
            many = await asyncio.gather(*(pool.run(Task(f"print({i})")) for i in range(6)))
            assert [m.stdout for m in many] == [f"{i}\n" for i in range(6)]
        finally:
            await pool.close()

    real(main())


async def _code_run_process(sys: Sys, dev: str, code: str, box: dict[str, Any]) -> None:
    h = await sys.open(dev)
    box["result"] = await sys.read(h, {"code": code})


def test_callbacks_act_as_the_caller_and_only_with_its_capabilities(real: Any) -> None:
    async def main() -> None:
        async with Kernel() as k:
            pool = Pool(Config(level=LEVEL, zygotes=1))
            sandbox = k.register_driver(SandboxDriver(pool, k))
            kv = k.register_driver(KVDriver())
            code = (
                "print(yool.kv_put('k', [1, 2]))\nprint(yool.kv_get('k'))\n"
                "print(yool.remember('the sky is green'))\n"
                "print(type(yool.recall('sky')).__name__)\n"
                "try:\n    yool.send(1, 'hi')\nexcept Exception as e:\n    print('refused:', e)\n"
            )
            box: dict[str, Any] = {}
            dev = k.init.derive(sandbox)
            child = k.init.spawn(_code_run_process, dev, code, box, caps=[dev, k.init.derive(kv)])
            assert (await k.init.wait(child.ref)).normal
            lines = box["result"]["stdout"].splitlines()
            assert len(lines) == 5, box["result"]
            assert lines[:2] == ["True", "[1, 2]"]
            assert lines[2].startswith("s") and lines[3] == "list"  # a segment id; a recall
            assert lines[4].startswith("refused: send: pid") and "may not message" in lines[4]
            used = k.procs.get(child.pid)
            assert used is None  # it ended; the run was charged to it:
            assert k.counters.charged["tool_calls"] >= 1

            # Without a kv capability, and with a capability narrowed to no callbacks:
            box2: dict[str, Any] = {}
            narrowed = k.init.derive(sandbox, caveat={"callbacks": ["recall"]})
            c2 = k.init.spawn(
                _code_run_process, narrowed, "yool.kv_get('k')", box2, caps=[narrowed]
            )
            await k.init.wait(c2.ref)
            assert "not allowed by this sandbox capability" in box2["result"]["stderr"]
            box3: dict[str, Any] = {}
            plain = k.init.derive(sandbox)
            c3 = k.init.spawn(_code_run_process, plain, "yool.kv_get('k')", box3, caps=[plain])
            await k.init.wait(c3.ref)
            assert "holds no kv capability" in box3["result"]["stderr"]
            await pool.close()

    real(main())


def test_a_session_journals_code_runs_and_charges_them(real: Any, tmp_path: Path) -> None:
    async def main() -> None:
        policy = RuntimePolicy(home=tmp_path / "home", sandbox_level=max(LEVEL, 0))
        async with Session.open(policy, workspace=tmp_path) as s:
            from yool.tools.code import CodeRunArgs, code_run
            from yool.tools.table import Call

            out = await code_run(Call(s), CodeRunArgs(code="print(yool.kv_put('a', 1))"))
            assert out.stdout == "True\n" and out.exit_code == 0
            assert s.usage()["tool_calls"] == 1
            store = s.kernel.store
            assert store is not None
            await store.aflush()
            journal = await store.read(lambda _c: store.journal(s.pid))
            runs = [e.result["value"] for e in journal if isinstance(e.result, dict)]
            assert any(isinstance(v, dict) and v.get("stdout") == "True\n" for v in runs)

    real(main())


def _params(ws: Path, home: Path) -> StdioServerParameters:
    return stdio(home, cwd=ws, YOOL_SANDBOX_LEVEL=str(max(LEVEL, 0)))


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_code_run_over_mcp_stdio(tmp_path: Path, mode: str) -> None:
    async def main() -> None:
        async with Client(_params(tmp_path, tmp_path / "home"), mode=mode) as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            assert "code_run" in tools
            schema = json.dumps(tools["code_run"].model_dump(exclude_none=True))
            assert len(schema) < 1500
            r = await c.call_tool("code_run", {"code": "print(sum(range(10)))"})
            assert not r.is_error, r.content
            out = r.structured_content
            assert isinstance(out, dict)
            assert out["stdout"] == "45\n" and out["reason"] == "exited"
            assert "seccomp" in out["layers"] or LEVEL < 4
            slow = await c.call_tool(
                "code_run", {"code": "import time; time.sleep(9)", "timeout_s": 0.5}
            )
            assert slow.structured_content and slow.structured_content["reason"] == "timeout"
            bad = await c.call_tool("code_run", {"code": "x", "files": {"/etc/x": "no"}})
            assert bad.structured_content and "relative path" in str(bad.structured_content)
            wrong = await c.call_tool("code_run", {"code": "x", "lang": "ruby"})
            assert wrong.is_error

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_without_bubblewrap_code_run_fails_closed_and_a_lower_level_is_accepted_by_name(
    tmp_path: Path, mode: str
) -> None:
    bare = tmp_path / "bin"  # a PATH with no bwrap on it: as on a machine without bubblewrap
    bare.mkdir()

    def params(level: str) -> StdioServerParameters:
        p = _params(tmp_path, tmp_path / "home")
        env = {**(p.env or {}), "PATH": str(bare), "YOOL_SANDBOX_LEVEL": level}
        return StdioServerParameters(command=p.command, args=p.args, env=env, cwd=p.cwd)

    async def main() -> None:
        async with Client(params("6"), mode=mode) as c:
            refused = await c.call_tool("code_run", {"code": "print('ran')"})
            assert refused.is_error
            text = " ".join(getattr(b, "text", "") for b in refused.content)
            assert "layer 5 (bwrap) is missing: bubblewrap is not installed" in text, text
            assert "host's network, pid" in text  # what that leaves open
            knob = re.search(r"set YOOL_SANDBOX_LEVEL=(\d) to accept that", text)
            assert knob is not None and int(knob.group(1)) < 5, text
            assert "ran" not in text
            ps = await c.call_tool("ps", {})
            assert not ps.is_error  # the server itself is fine
        async with Client(params(knob.group(1)), mode=mode) as c:
            ran = await c.call_tool("code_run", {"code": "print('ran')"})
            assert not ran.is_error, ran.content
            out = ran.structured_content
            assert out is not None and out["stdout"] == "ran\n"
            assert "bwrap" not in out["layers"] and out["layers"][:2] == ["supervisor", "rlimits"]

    asyncio.run(main())
