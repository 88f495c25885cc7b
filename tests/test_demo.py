"""`yool demo` end to end, as a user runs it: a real subprocess on the embedded defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

KINDS = ("normal", "fault", "quota", "deadline", "killed", "shutdown")


def _run(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOOL_")}
    env.pop("ANTHROPIC_API_KEY", None)
    env.pop("OPENAI_API_KEY", None)
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "yool", "demo", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    return done, time.monotonic() - began


def test_demo_shows_every_exit_reason_in_a_few_seconds() -> None:
    done, elapsed = _run()
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert elapsed < 10
    assert "\x1b[" not in out  # not a terminal: snapshots one after another
    assert out.count("ps at ") >= 3
    ended = out.split("how every process ended:")[1]
    for kind in KINDS:
        assert kind in ended, kind
    assert "quota(tokens)" in ended
    assert "fault(RuntimeError: the tool returned garbage)" in ended
    assert "killed(by=2)" in ended  # the supervisor (pid 2) killed the worker ignoring term
    assert "processes ran:" in out.splitlines()[-1]


def test_demo_json_lists_each_process_with_its_reason() -> None:
    done, elapsed = _run("--json")
    assert done.returncode == 0, done.stderr
    assert elapsed < 10
    report = json.loads(done.stdout)
    kinds = {p["reason"]["kind"] for p in report["processes"]}
    assert kinds == set(KINDS)
    by_name: dict[str, list[str]] = {}
    for p in report["processes"]:
        by_name.setdefault(p["name"], []).append(p["exited"])
    assert by_name["flaky"] == ["fault(RuntimeError: the tool returned garbage)", "shutdown"]
    assert by_name["spender"] == ["quota(tokens)"]
    assert by_name["straggler"] == ["deadline"]
    assert by_name["finisher"] == ["normal"]
    assert by_name["team"] == ["shutdown"]
    summary = report["summary"]
    assert summary["restarts"] == 1
    assert summary["tokens"] > 0
    assert summary["exits"]["shutdown"] == 2
