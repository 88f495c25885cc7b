"""The one way the tests start `yool server --stdio`: a real subprocess with a clean
environment (no `YOOL_*`, provider keys or Codex settings leak in from the shell running the
tests), its own `YOOL_HOME`, and a workspace as its working directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mcp.client.stdio import StdioServerParameters

SERVER = ["-m", "yool", "server", "--stdio"]


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("YOOL_", "ANTHROPIC_", "OPENAI_", "CODEX_"))
    }
    env.update(YOOL_HOME=str(home), YOOL_HEARTBEAT_S="0.05", YOOL_PROVIDER="scripted")
    env.update(extra)
    return env


def stdio(home: Path, *, cwd: Path | None = None, **extra: str) -> StdioServerParameters:
    """A server on `home`, working in `cwd` (default: the home), with `extra` variables."""
    return StdioServerParameters(
        command=sys.executable,
        args=SERVER,
        env=server_env(home, **extra),
        cwd=str(cwd or home),
    )


def on_fake_anthropic(url: str, key: str) -> dict[str, str]:
    """The variables that put a server's agents on the fake Anthropic provider at `url`."""
    return {"YOOL_PROVIDER": "anthropic", "ANTHROPIC_API_KEY": key, "ANTHROPIC_BASE_URL": url}
