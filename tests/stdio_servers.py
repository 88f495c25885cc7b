"""The one way the tests start `yool server --stdio`: a real subprocess with a clean
environment (no `YOOL_*`, provider keys or Codex settings leak in from the shell running the
tests), its own `YOOL_HOME`, and a workspace as its working directory; and the one way they
call a tool on it and read its result or its error."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

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


async def tool_result(client: Any, tool: str, progress: Any = None, **args: Any) -> dict[str, Any]:
    """Call `tool`; it must succeed, and its structured result is returned."""
    r = await client.call_tool(tool, args, progress_callback=progress)
    assert not r.is_error, r.content
    out = r.structured_content
    assert isinstance(out, dict)
    return out


async def tool_error(client: Any, tool: str, **args: Any) -> str:
    """Call `tool`; it must fail, and its error text is returned."""
    r = await client.call_tool(tool, args)
    assert r.is_error, r.structured_content
    text = r.content[0].text
    assert isinstance(text, str)
    return text
