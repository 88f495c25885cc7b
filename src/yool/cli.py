"""The `yool` command: one small function per subcommand, listed in `COMMANDS`.

Imports beyond the standard library happen inside the subcommands, so `yool --help` and
`yool --version` stay fast.
"""

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from yool import __version__

if TYPE_CHECKING:
    from yool.policy import RuntimePolicy

EXIT_USAGE = 2
"""Exit status for a bad command line or a bad configuration: the run never started."""
EXIT_BROKEN_PIPE = 128 + 13
"""What a shell reports for a command killed by SIGPIPE, e.g. `yool policy | head -1`."""


@dataclass(frozen=True)
class Command:
    """A subcommand: `configure` adds its arguments, `run` does the work and returns the status."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    configure: Callable[[argparse.ArgumentParser], None] = lambda parser: None


def load_policy() -> "RuntimePolicy":
    """The policy from the environment; a `PolicyError` reaches `main`, which reports it."""
    from yool.policy import RuntimePolicy

    return RuntimePolicy.load()


def _policy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _policy(args: argparse.Namespace) -> int:
    import json

    rows = load_policy().describe()
    if args.json:
        document = {
            row.field: {"env": row.env, "value": row.value, "source": row.source} for row in rows
        }
        print(json.dumps(document, indent=2))
        return 0
    table = [("VARIABLE", "VALUE", "SOURCE", "MEANING")]
    table += [(row.env, _shown(row.value), row.source, row.meaning) for row in rows]
    widths = [max(len(line[column]) for line in table) for column in range(3)]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        print("  ".join([*cells, line[3]]))
    return 0


def _shown(value: object) -> str:
    """A knob's value as a person reads it: lists comma-joined, None as `none`."""
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the exit reasons as JSON")


def _demo(args: argparse.Namespace) -> int:
    from yool.userland.demo import run

    return run(as_json=args.json)


def _server_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--stdio", action="store_true", help="MCP over stdin/stdout (the default)")
    mode.add_argument("--http", action="store_true", help="MCP over streamable HTTP on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="HTTP port (default 8765)")


def _server(args: argparse.Namespace) -> int:
    from yool.server.mcp import build

    policy = load_policy()
    server = build(policy)
    if args.http:
        from mcp.server.transport_security import TransportSecuritySettings

        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[f"127.0.0.1:{args.port}", f"localhost:{args.port}"],
            allowed_origins=[f"http://127.0.0.1:{args.port}", f"http://localhost:{args.port}"],
        )
        server.run("streamable-http", host="127.0.0.1", port=args.port, transport_security=security)
    else:
        server.run("stdio")
    return 0


COMMANDS: tuple[Command, ...] = (
    Command(
        "server",
        "serve yool's tools to an MCP client (Claude Code, Codex, VS Code)",
        _server,
        _server_arguments,
    ),
    Command(
        "policy",
        "show the effective runtime policy and where each value came from",
        _policy,
        _policy_arguments,
    ),
    Command(
        "demo",
        "run a small supervised team for a few seconds and show how each process ended",
        _demo,
        _demo_arguments,
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yool",
        description="An agent kernel for coding assistants.",
    )
    parser.add_argument("--version", action="version", version=f"yool {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.configure(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `yool` command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE

    from yool.policy import PolicyError

    try:
        return run(args)
    except BrokenPipeError:
        # The reader left; point stdout at devnull so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except PolicyError as exc:
        problems = str(exc).splitlines()
        if len(problems) == 1:
            print(f"yool: invalid configuration: {problems[0]}", file=sys.stderr)
        else:
            print("yool: invalid configuration:", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
