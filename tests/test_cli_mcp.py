"""The headless commands and client set-up, as a user runs them: `python -m yool ...`.

`yool run`, `yool ps`, `yool trace` and `yool config` run as real subprocesses on a store in
a temporary `YOOL_HOME`; slow agents talk to the fake provider on 127.0.0.1; the config a
client would be given is started with the real MCP SDK client.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from yool.clients import merge_toml
from yool.testing import FakeProvider
from yool.testing.fake_provider import ThreadedFakeProvider

TIMEOUT = 30


def env_for(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("YOOL_", "ANTHROPIC_", "OPENAI_", "CODEX_"))
    }
    env.update(YOOL_HOME=str(home), YOOL_HEARTBEAT_S="0.1", HOME=str(home / "user"))
    env.update(extra)
    return env


def yool(
    home: Path, *args: str, cwd: Path | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "yool", *args],
        env=env_for(home, **extra),
        cwd=cwd or home,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def background(home: Path, *args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "yool", *args],
        env=env_for(home, **extra),
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def fake_env(fake: ThreadedFakeProvider) -> dict[str, str]:
    """Settings that point yool at the fake (OpenAI wire: its SDK imports fastest)."""
    return {
        "YOOL_PROVIDER": "openai",
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": fake.openai_url,
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home where one run ended normally and one ran out of tokens."""
    home = tmp_path_factory.mktemp("home")
    assert yool(home, "run", "first task").returncode == 0
    assert yool(home, "run", "too big", "--budget-tokens", "1").returncode == 1
    return home


# -- yool run -----------------------------------------------------------------------------


def test_run_prints_the_answer_and_exits_0_with_the_embedded_provider(tmp_path: Path) -> None:
    done = yool(tmp_path, "run", "say hello")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Done: say hello"
    assert done.stderr == ""  # stderr is not a TTY and --verbose was not given: no progress


def test_run_json_prints_the_agents_status(tmp_path: Path) -> None:
    done = yool(tmp_path, "run", "report in JSON", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["reason"] == "normal"
    assert status["status"] == "exited"
    assert status["answer"] == "Done: report in JSON"
    assert status["provider"] == "scripted"
    assert status["steps"] == 1 and status["tokens"] > 0


def test_run_over_its_budget_exits_1_and_names_the_reason(tmp_path: Path) -> None:
    done = yool(tmp_path, "run", "a task", "--budget-tokens", "1", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["reason"] == "quota(tokens)"
    assert "ended: quota(tokens)" in done.stderr


def test_run_verbose_shows_progress_and_the_transcript_on_stderr(tmp_path: Path) -> None:
    done = yool(tmp_path, "run", "talk to me", "--verbose")
    assert done.returncode == 0
    assert done.stdout.strip() == "Done: talk to me"
    assert "spawned agent pid" in done.stderr
    assert "assistant: Done: talk to me" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--provider", "nosuch"], "provider: unknown provider"),
        (["--provider", "openai"], "OPENAI_API_KEY"),
        (["--budget-usd", "-1"], "--budget-usd"),
    ],
)
def test_run_with_bad_arguments_exits_2_naming_the_fix(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = yool(tmp_path, "run", "a task", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


# -- yool ps --------------------------------------------------------------------------------


def test_ps_lists_the_agents_of_earlier_runs(store: Path) -> None:
    listed = yool(store, "ps", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["task"]: row for row in json.loads(listed.stdout)["agents"]}
    assert rows["first task"]["status"] == "exited"
    assert rows["first task"]["reason"] == "normal"
    assert rows["first task"]["steps"] == 1
    assert rows["too big"]["reason"] == "quota(tokens)"
    table = yool(store, "ps")
    assert table.stdout.splitlines()[0].split() == [
        *("PID", "STATUS", "REASON", "STEPS", "TOKENS", "USD", "TIME", "TASK")
    ]
    assert any("quota(tokens)" in line and "too big" in line for line in table.stdout.splitlines())


def test_ps_and_trace_without_a_store_say_how_to_make_one(tmp_path: Path) -> None:
    for command in (["ps"], ["trace"]):
        done = yool(tmp_path, *command)
        assert done.returncode == 3
        assert f"no yool store at {tmp_path / 'yool.db'}" in done.stderr
        assert "yool server" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "yool.db").exists()  # reading never creates it


# -- yool trace ---------------------------------------------------------------------------


def test_trace_renders_the_transcript_readably(store: Path) -> None:
    done = yool(store, "trace", "-n", "100")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    pid = json.loads(yool(store, "ps", "--json").stdout)["agents"][0]["pid"]
    assert any(line.endswith(f"[pid {pid}] user: first task") for line in lines)
    assert any(line.endswith(f"[pid {pid}] assistant: Done: first task") for line in lines)
    assert any(f"[pid {pid}] exit normal" in line for line in lines)


def test_trace_json_is_one_event_per_line_filtered_by_pid(store: Path) -> None:
    pid = json.loads(yool(store, "ps", "--json").stdout)["agents"][0]["pid"]
    done = yool(store, "trace", "--json", "--pid", str(pid), "-n", "50")
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events and {e["pid"] for e in events} == {pid}
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    turns = [e for e in events if e["kind"] == "log" and e["message"] == "turn"]
    assert [t["role"] for t in turns] == ["user", "assistant"]


def test_trace_follow_sees_a_later_run_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    follower = background(tmp_path, "trace", "--follow", "-n", "0")
    try:
        time.sleep(0.5)  # it is waiting for a store that does not exist yet
        assert yool(tmp_path, "run", "watched").returncode == 0
        time.sleep(0.5)  # a few polls
        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=10)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    assert "Traceback" not in err
    pid = re.search(r"\[pid (\d+)\] user: watched", out)
    assert pid is not None, out
    assert f"[pid {pid[1]}] assistant: Done: watched" in out
    assert f"[pid {pid[1]}] exit normal" in out


# -- yool config ----------------------------------------------------------------------------


def parse(client: str, text: str) -> dict[str, Any]:
    """The server entry named yool from a client's config text."""
    if client == "codex":
        return tomllib.loads(text)["mcp_servers"]["yool"]  # type: ignore[no-any-return]
    key = "mcpServers" if client == "claude" else "servers"
    return json.loads(text)[key]["yool"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("client", ["claude", "codex", "vscode"])
def test_config_prints_a_valid_entry_that_launches_the_stdio_server(
    tmp_path: Path, client: str
) -> None:
    done = yool(tmp_path, "config", client)
    assert done.returncode == 0, done.stderr
    entry = parse(client, done.stdout)
    assert Path(entry["command"]).is_absolute()
    assert entry["args"][-2:] == ["server", "--stdio"]
    assert entry["env"]["YOOL_HOME"] == str(tmp_path)
    if client != "codex":
        assert entry["type"] == "stdio"
    else:
        assert "ANTHROPIC_API_KEY" in entry["env_vars"]  # forwarded by name only
    if client == "claude":
        assert "claude mcp add --scope project yool" in done.stderr


def test_config_never_writes_secrets(tmp_path: Path) -> None:
    done = yool(tmp_path, "config", "codex", ANTHROPIC_API_KEY="sk-very-secret")
    assert "sk-very-secret" not in done.stdout + done.stderr


EXISTING = {
    "claude": json.dumps({"mcpServers": {"other": {"command": "other-mcp"}}, "x": 1}),
    "vscode": json.dumps({"inputs": [], "servers": {"other": {"type": "http", "url": "u"}}}),
    "codex": (
        'model = "o4"\n\n[mcp_servers.other]\ncommand = "other-mcp"\n\n'
        '[mcp_servers.yool]\ncommand = "stale"\n\n[mcp_servers.yool.env]\nA = "b"\n\n'
        '[profiles.fast]\nmodel = "mini"\n'
    ),
}


def config_file(home: Path, client: str) -> Path:
    return {
        "claude": home / "project" / ".mcp.json",
        "vscode": home / "project" / ".vscode" / "mcp.json",
        "codex": home / "codex" / "config.toml",
    }[client]


@pytest.mark.parametrize("client", ["claude", "codex", "vscode"])
def test_config_write_merges_into_the_clients_file_keeping_other_entries(
    tmp_path: Path, client: str
) -> None:
    path = config_file(tmp_path, client)
    path.parent.mkdir(parents=True)
    (tmp_path / "project").mkdir(exist_ok=True)
    path.write_text(EXISTING[client])
    extra = {"CODEX_HOME": str(tmp_path / "codex")}
    done = yool(tmp_path, "config", client, "--write", cwd=tmp_path / "project", **extra)
    assert done.returncode == 0, done.stderr
    assert str(path) in done.stdout and "kept other" in done.stdout
    text = path.read_text()
    entry = parse(client, text)
    assert entry["args"][-2:] == ["server", "--stdio"]
    if client == "codex":
        document = tomllib.loads(text)
        assert document["model"] == "o4"
        assert document["profiles"] == {"fast": {"model": "mini"}}
        assert document["mcp_servers"]["other"] == {"command": "other-mcp"}
        assert entry["env"] == {"YOOL_HEARTBEAT_S": "0.1", "YOOL_HOME": str(tmp_path)}
        assert "stale" not in text
    else:
        document = json.loads(text)
        before = json.loads(EXISTING[client])
        key = "mcpServers" if client == "claude" else "servers"
        assert document[key]["other"] == before[key]["other"]
        assert {k: v for k, v in document.items() if k != key} == {
            k: v for k, v in before.items() if k != key
        }
    again = yool(tmp_path, "config", client, "--write", cwd=tmp_path / "project", **extra)
    assert again.returncode == 0 and path.read_text() == text  # idempotent


def test_config_write_creates_the_codex_file_under_home(tmp_path: Path) -> None:
    done = yool(tmp_path, "config", "codex", "--write")
    path = tmp_path / "user" / ".codex" / "config.toml"
    assert done.returncode == 0 and f"created {path}" in done.stdout
    assert parse("codex", path.read_text())["command"]


def test_config_write_leaves_a_file_it_cannot_parse_alone(tmp_path: Path) -> None:
    path = tmp_path / ".vscode" / "mcp.json"
    path.parent.mkdir()
    commented = '{\n  // my servers\n  "servers": {}\n}\n'
    path.write_text(commented)
    done = yool(tmp_path, "config", "vscode", "--write")
    assert done.returncode == 2
    assert "not plain JSON" in done.stderr and str(path) in done.stderr
    assert path.read_text() == commented
    bad_name = yool(tmp_path, "config", "claude", "--name", "a b")
    assert bad_name.returncode == 2 and "--name" in bad_name.stderr


def test_merge_toml_replaces_only_the_named_table_in_place() -> None:
    before = EXISTING["codex"]
    after = merge_toml(before, "yool", '[mcp_servers.yool]\ncommand = "new"\n')
    assert after == (
        'model = "o4"\n\n[mcp_servers.other]\ncommand = "other-mcp"\n\n'
        '[mcp_servers.yool]\ncommand = "new"\n\n[profiles.fast]\nmodel = "mini"\n'
    )
    appended = merge_toml('model = "o4"', "yool", '[mcp_servers.yool]\ncommand = "x"\n')
    assert tomllib.loads(appended) == {"model": "o4", "mcp_servers": {"yool": {"command": "x"}}}


def test_the_configured_command_serves_mcp_to_a_real_client(tmp_path: Path) -> None:
    from mcp import StdioServerParameters
    from mcp.client import Client

    done = yool(tmp_path, "config", "claude")
    entry = parse("claude", done.stdout)

    async def main() -> list[str]:
        env = {**env_for(tmp_path), **entry["env"]}
        params = StdioServerParameters(
            command=entry["command"], args=entry["args"], env=env, cwd=str(tmp_path)
        )
        async with Client(params, mode="legacy") as client:
            tools = await client.list_tools()
            return [tool.name for tool in tools.tools]

    names = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert {"spawn", "wait", "ps"} <= set(names)


# -- against a slow model (started in the background with the first test) -----------------


@dataclass
class SlowRun:
    home: Path
    proc: subprocess.Popen[str]
    started: float


@pytest.fixture(scope="module", autouse=True)
def slow_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SlowRun]]:
    """Runs against a model that takes a minute to answer, started with the module's first
    test: importing a provider SDK takes seconds, which pass while the other tests run."""
    with FakeProvider.start_in_thread(["too late"], latency=60.0) as fake:
        runs: dict[str, SlowRun] = {}
        for name, extra in (("deadline", ["--timeout", "0.5"]), ("sigterm", [])):
            home = tmp_path_factory.mktemp(name)
            proc = background(home, "run", f"take your time ({name})", *extra, **fake_env(fake))
            runs[name] = SlowRun(home, proc, time.monotonic())
        try:
            yield runs
        finally:
            for run in runs.values():
                run.proc.kill()
                run.proc.communicate()


def test_run_past_its_timeout_is_killed_with_reason_deadline(
    slow_runs: dict[str, SlowRun],
) -> None:
    run = slow_runs["deadline"]
    out, err = run.proc.communicate(timeout=TIMEOUT)
    assert run.proc.returncode == 1, err
    assert "ended: deadline" in err
    assert time.monotonic() - run.started < 40  # it did not wait for the model's reply
    assert out == ""


def test_ps_sees_a_running_agent_beside_the_writer_and_sigterm_ends_the_run(
    slow_runs: dict[str, SlowRun],
) -> None:
    run = slow_runs["sigterm"]
    running: list[dict[str, Any]] = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and not running and run.proc.poll() is None:
        listed = yool(run.home, "ps", "--json")
        if listed.returncode == 0:
            running = [a for a in json.loads(listed.stdout)["agents"] if a["status"] == "running"]
        if not running:
            time.sleep(0.2)
    assert running and running[0]["task"] == "take your time (sigterm)", run.proc.poll()
    run.proc.send_signal(signal.SIGTERM)
    out, err = run.proc.communicate(timeout=TIMEOUT)
    assert run.proc.returncode == 130, err
    assert out == ""  # no answer: the model never replied
    assert "interrupted" in err and "Traceback" not in err
    after = json.loads(yool(run.home, "ps", "--json").stdout)["agents"]
    assert [(a["status"], a["reason"]) for a in after] == [("exited", "shutdown")]
