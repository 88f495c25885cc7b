"""`yool config`: the configuration each MCP client needs to launch `yool server --stdio`.

Claude Code reads a project `.mcp.json`, Codex `$CODEX_HOME/config.toml` (default
`~/.codex/config.toml`), VS Code `.vscode/mcp.json`. The launch command is the absolute path
of the `yool` being run (or this interpreter with `-m yool`), so it works from a venv that is
not on the client's PATH. The `YOOL_*` variables set now are copied into the entry, so the
server runs with the same policy as this shell; API keys are never written: the JSON clients
pass their own environment on, and Codex (which passes only a short allow-list) is told the
key variables' *names* in `env_vars`.

`write` merges into an existing file: other servers and settings stay as they were, and a
file it cannot parse is left alone with an error saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Client = Literal["claude", "codex", "vscode"]
CLIENTS: tuple[Client, ...] = ("claude", "codex", "vscode")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Variables Codex should pass from its own environment (names only; values stay out of files).
FORWARDED = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL")
_SECRETISH = re.compile(r"KEY|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


class ConfigError(Exception):
    """A problem the user fixes: a bad `--name`, or a file that cannot be merged into."""


@dataclass(frozen=True, slots=True)
class Launch:
    """How a client starts the server."""

    command: str
    args: tuple[str, ...]
    env: dict[str, str]

    def shell(self) -> str:
        return shlex.join([self.command, *self.args])


def launch(argv0: str | None = None, environ: Mapping[str, str] | None = None) -> Launch:
    """The command that starts this yool's stdio server, and the `YOOL_*` settings to pass."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    env = os.environ if environ is None else environ
    exe = Path(argv0)
    args: tuple[str, ...]
    if exe.name in ("yool", "yool.exe") and exe.is_file():
        command, args = os.path.abspath(exe), ("server", "--stdio")
    else:
        # Not resolved: a venv's python is a symlink, and resolving it would leave the venv.
        command, args = os.path.abspath(sys.executable), ("-m", "yool", "server", "--stdio")
    copied: dict[str, str] = {}
    for key in sorted(env):
        if key.startswith("YOOL_") and not _SECRETISH.search(key):
            value = env[key]
            if key == "YOOL_HOME" and value.strip():
                value = str(Path(value).expanduser().absolute())
            copied[key] = value
    return Launch(command, args, copied)


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            f"--name: {name!r} is not a server name; use 1-64 letters, digits, '-' or '_'"
        )
    return name


# -- the snippets ---------------------------------------------------------------------------


def claude_entry(server: Launch) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "stdio", "command": server.command, "args": list(server.args)}
    entry["env"] = dict(server.env)
    return entry


def vscode_entry(server: Launch) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "stdio", "command": server.command, "args": list(server.args)}
    if server.env:
        entry["env"] = dict(server.env)
    return entry


def codex_entry(server: Launch) -> dict[str, Any]:
    entry: dict[str, Any] = {"command": server.command, "args": list(server.args)}
    if server.env:
        entry["env"] = dict(server.env)
    entry["env_vars"] = list(FORWARDED)
    return entry


def snippet(client: Client, name: str, server: Launch) -> str:
    """The text to put in the client's file: a whole JSON document, or one TOML table."""
    if client == "claude":
        return json.dumps({"mcpServers": {name: claude_entry(server)}}, indent=2) + "\n"
    if client == "vscode":
        return json.dumps({"servers": {name: vscode_entry(server)}}, indent=2) + "\n"
    return codex_table(name, codex_entry(server))


def claude_add_command(name: str, server: Launch) -> str:
    """The `claude mcp add` line equivalent to the `.mcp.json` entry."""
    parts = ["claude", "mcp", "add", "--scope", "project", name]
    for key, value in server.env.items():
        parts += ["-e", f"{key}={value}"]
    return shlex.join([*parts, "--", server.command, *server.args])


def target(client: Client, cwd: Path, environ: Mapping[str, str]) -> Path:
    """The file `--write` updates for `client`."""
    if client == "claude":
        return cwd / ".mcp.json"
    if client == "vscode":
        return cwd / ".vscode" / "mcp.json"
    home = environ.get("CODEX_HOME", "").strip()
    base = Path(home).expanduser() if home else Path(environ.get("HOME") or Path.home()) / ".codex"
    return base / "config.toml"


# -- TOML ----------------------------------------------------------------------------------


def toml_string(value: str) -> str:
    """A TOML basic string."""
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_string(key)


def codex_table(name: str, entry: Mapping[str, Any]) -> str:
    lines = [f"[mcp_servers.{_toml_key(name)}]"]
    lines += [f"{_toml_key(key)} = {_toml_value(value)}" for key, value in entry.items()]
    return "\n".join(lines) + "\n"


_HEADER = re.compile(r"^\s*\[\[?(?P<key>[^\]]*)\]\]?\s*(#.*)?$")


def _header_path(key: str) -> list[str]:
    """The parts of a dotted table key: `mcp_servers."yool"` -> ["mcp_servers", "yool"]."""
    parts: list[str] = []
    rest = key.strip()
    while rest:
        if rest[0] in "\"'":
            quote = rest[0]
            end = rest.find(quote, 1)
            if end < 0:
                return []
            parts.append(rest[1:end])
            rest = rest[end + 1 :].strip()
        else:
            match = re.match(r"[A-Za-z0-9_-]+", rest)
            if match is None:
                return []
            parts.append(match.group(0))
            rest = rest[match.end() :].strip()
        if rest.startswith("."):
            rest = rest[1:].strip()
        elif rest:
            return []
    return parts


def merge_toml(text: str, name: str, table: str) -> str:
    """`text` with the `[mcp_servers.NAME]` table (and its sub-tables) replaced by `table`.

    Everything else is kept byte for byte; the new table goes where the old one was, or at
    the end. A header inside a multi-line string would fool the scan, so the caller checks
    the result with `tomllib`.
    """
    lines = text.splitlines(keepends=True)
    kept: list[str] = []
    inserted = False
    skipping = False
    for line in lines:
        header = _HEADER.match(line)
        if header is not None:
            path = _header_path(header.group("key"))
            ours = path[:2] == ["mcp_servers", name]
            if ours and not inserted:
                if kept and kept[-1].strip():
                    kept.append("\n")
                kept.append(table)
                inserted = True
            skipping = ours
            if ours:
                continue
            if kept and kept[-1] is table:
                kept.append("\n")
        if not skipping:
            kept.append(line)
    if not inserted:
        if kept and not kept[-1].endswith("\n"):
            kept.append("\n")
        if kept and "".join(kept).strip():
            kept.append("\n")
        kept.append(table)
    return "".join(kept)


# -- writing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Written:
    path: Path
    created: bool
    replaced: bool  # an entry of that name was there before
    others: list[str]  # the other servers the file holds, kept


def write(client: Client, name: str, server: Launch, path: Path) -> Written:
    """Merge the entry for `name` into `path` (created if missing), keeping everything else."""
    created = not path.exists()
    old = "" if created else path.read_text(encoding="utf-8")
    if client == "codex":
        text, replaced, others = _merged_toml(old, name, server, path)
    else:
        text, replaced, others = _merged_json(client, old, name, server, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.yool-{os.getpid()}.tmp")
    scratch.write_text(text, encoding="utf-8")
    if not created:
        with contextlib.suppress(OSError):
            os.chmod(scratch, path.stat().st_mode & 0o7777)
    os.replace(scratch, path)
    return Written(path, created, replaced, others)


def _merged_json(
    client: Client, old: str, name: str, server: Launch, path: Path
) -> tuple[str, bool, list[str]]:
    key = "mcpServers" if client == "claude" else "servers"
    document: Any = {}
    if old.strip():
        try:
            document = json.loads(old)
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"{path} is not plain JSON ({e.msg} at line {e.lineno}); it was left as it is: "
                f"remove comments or add the `{name}` entry by hand"
            ) from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path} does not hold a JSON object; it was left as it is")
    servers = document.setdefault(key, {})
    if not isinstance(servers, dict):
        raise ConfigError(f"{path}: {key!r} is not an object; it was left as it is")
    replaced = name in servers
    servers[name] = claude_entry(server) if client == "claude" else vscode_entry(server)
    others = [other for other in servers if other != name]
    return json.dumps(document, indent=2) + "\n", replaced, others


def _merged_toml(old: str, name: str, server: Launch, path: Path) -> tuple[str, bool, list[str]]:
    try:
        before = tomllib.loads(old)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML ({e}); it was left as it is") from None
    servers_before = before.get("mcp_servers", {})
    replaced = isinstance(servers_before, dict) and name in servers_before
    entry = codex_entry(server)
    text = merge_toml(old, name, codex_table(name, entry))
    by_hand = f"add the [mcp_servers.{name}] table by hand (`yool config codex` prints it)"
    try:
        after = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise ConfigError(
            f"{path} defines mcp_servers.{name} in a way yool cannot rewrite safely; it was "
            f"left as it is: {by_hand}"
        ) from None
    servers_after = after.get("mcp_servers", {})
    rest_before = {k: v for k, v in before.items() if k != "mcp_servers"}
    rest_after = {k: v for k, v in after.items() if k != "mcp_servers"}
    others_before = {k: v for k, v in servers_before.items() if k != name}
    others_after = {k: v for k, v in servers_after.items() if k != name}
    if (
        servers_after.get(name) != entry
        or rest_before != rest_after
        or others_before != others_after
    ):
        raise ConfigError(
            f"{path} could not be merged without changing other settings; it was left as it "
            f"is: {by_hand}"
        )
    return text, replaced, sorted(others_after)


def describe(written: Written, name: str) -> str:
    """One line saying what `write` did."""
    if written.created:
        return f"created {written.path} with the {name!r} server"
    done = "replaced" if written.replaced else "added"
    kept = f"; kept {', '.join(written.others)}" if written.others else ""
    return f"{done} the {name!r} server in {written.path}{kept}"


def instructions(client: Client, name: str, server: Launch, path: Path) -> list[str]:
    """What to do with the snippet, for the person reading the terminal."""
    if client == "claude":
        return [
            f"# Claude Code: save as {path} (or run `yool config claude --write`), or run:",
            f"#   {claude_add_command(name, server)}",
            "# then `claude mcp list` shows it connected.",
        ]
    if client == "codex":
        return [
            f"# Codex: add this table to {path} (or run `yool config codex --write`);",
            "# `codex mcp list` shows it. env_vars passes provider keys by name only.",
        ]
    return [
        f"# VS Code: save as {path} (or run `yool config vscode --write`),",
        "# then start the server from the MCP view or `MCP: List Servers`.",
    ]
