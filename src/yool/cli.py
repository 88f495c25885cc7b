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

EXIT_FAILED = 1
"""Exit status of `yool run` when the agent ended other than `normal` (quota, killed, ...)."""
EXIT_USAGE = 2
"""Exit status for a bad command line or a bad configuration: the run never started."""
EXIT_NO_STORE = 3
"""Exit status of `yool ps` / `yool trace` when there is no store to read."""
EXIT_INTERRUPTED = 130
"""Exit status of `yool run` stopped by Ctrl-C or SIGTERM (the agent is shut down)."""
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
    mode.add_argument("--lsp", action="store_true", help="LSP over stdin/stdout (for editors)")
    parser.add_argument("--port", type=int, default=8765, help="HTTP port (default 8765)")


def _server(args: argparse.Namespace) -> int:
    if args.lsp:
        from yool.server.lsp import serve  # without the MCP SDK: an editor waits on it

        return serve(load_policy())
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


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value < 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
        return value

    return parse


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", help="what the agent should do")
    parser.add_argument("--persona", help="a persona name")
    parser.add_argument("--provider", help="scripted|anthropic|openai (default: YOOL_PROVIDER)")
    parser.add_argument("--model", help="the model (default: YOOL_MODEL)")
    parser.add_argument("--budget-usd", type=_positive(float), metavar="USD")
    parser.add_argument("--budget-tokens", type=_positive(int), metavar="N")
    parser.add_argument(
        "--timeout", type=_positive(float), metavar="S", help="kill the agent after S seconds"
    )
    parser.add_argument("--json", action="store_true", help="print the agent's status as JSON")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="progress on stderr even when not a TTY"
    )


def _run(args: argparse.Namespace) -> int:
    import json

    from pydantic import ValidationError

    from yool.headless import run_blocking
    from yool.tools import OpError

    policy = load_policy()
    spawn: dict[str, object] = {"task": args.task}
    for field in ("persona", "provider", "model", "budget_usd", "budget_tokens"):
        value = getattr(args, field)
        if value is not None:
            spawn[field] = int(value) if field == "budget_tokens" else value
    verbose = args.verbose or sys.stderr.isatty()
    say = (lambda line: print(f"yool: {line}", file=sys.stderr, flush=True)) if verbose else None
    try:
        outcome = run_blocking(policy, spawn, timeout_s=args.timeout, say=say)
    except OpError as e:
        print(f"yool: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as e:
        for error in e.errors():
            where = ".".join(str(part) for part in error["loc"]) or "arguments"
            flag = {"deadline_s": "timeout"}.get(where, where).replace("_", "-")
            print(f"yool: --{flag}: {error['msg']}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("yool: interrupted; the agent was shut down", file=sys.stderr)
        return EXIT_INTERRUPTED
    status = outcome.status
    if args.json:
        print(json.dumps(outcome.to_json(), indent=2))
    elif status.get("answer"):
        print(status["answer"])
    if not outcome.normal:
        print(
            f"yool: agent {status['pid']} ended: {status.get('reason')}"
            f" (steps={status['steps']} tokens={status['tokens']} usd={status['usd']:.4f})",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if status.get("result") not in (None, "completed") and verbose:
        print(f"yool: the agent stopped with: {status['result']}", file=sys.stderr)
    return 0


def _ps_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--all", action="store_true", help="every agent, not just the recent")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _ps(args: argparse.Namespace) -> int:
    from yool.watch import NoStore, ps

    try:
        ps(load_policy().db_path, everything=args.all, as_json=args.json, out=sys.stdout)
    except NoStore as e:
        print(f"yool: {e}", file=sys.stderr)
        return EXIT_NO_STORE
    return 0


def _trace_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pid", type=int, help="only this process's events")
    parser.add_argument(
        "-n", type=int, default=20, metavar="N", help="show the last N events (default 20)"
    )
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new events until Ctrl-C"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per event")


def _trace(args: argparse.Namespace) -> int:
    from yool.watch import NoStore, trace

    if args.n < 0:
        print("yool: -n: must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    try:
        trace(
            load_policy().db_path,
            pid=args.pid,
            n=args.n,
            follow=args.follow,
            as_json=args.json,
            out=sys.stdout,
            note=lambda line: print(f"yool: {line}", file=sys.stderr, flush=True),
        )
    except NoStore as e:
        print(f"yool: {e}", file=sys.stderr)
        return EXIT_NO_STORE
    return 0


def _sandbox_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("probe",), help="probe: the isolation layers here")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _sandbox(args: argparse.Namespace) -> int:
    """Exit 0 when this machine meets YOOL_SANDBOX_LEVEL, 1 when code runs would be refused."""
    import json

    from yool.sandbox.probe import probe, render

    policy = load_policy()
    found = probe(policy.sandbox_uid)
    if args.json:
        print(json.dumps(found.to_json(policy.sandbox_level), indent=2))
    else:
        print(render(found, policy.sandbox_level))
    return 0 if found.level >= policy.sandbox_level else EXIT_FAILED


def _cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("status",), help="status: node, key, peers reachable")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _cluster(args: argparse.Namespace) -> int:
    """Exit 0 when the cluster is off or configured with every peer reachable, else 1."""
    import json

    from yool.cluster.status import render, status

    found = status(load_policy())
    print(json.dumps(found, indent=2) if args.json else render(found))
    return 0 if found["ok"] else EXIT_FAILED


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("client", choices=("claude", "codex", "vscode"), help="the MCP client")
    parser.add_argument(
        "--write", action="store_true", help="merge it into the client's config file"
    )
    parser.add_argument("--name", default="yool", help="the server's name (default yool)")


def _config(args: argparse.Namespace) -> int:
    from pathlib import Path

    from yool import clients

    try:
        name = clients.check_name(args.name)
        server = clients.launch()
        path = clients.target(args.client, Path.cwd(), os.environ)
        if args.write:
            written = clients.write(args.client, name, server, path)
            print(clients.describe(written, name))
            return 0
    except clients.ConfigError as e:
        print(f"yool: {e}", file=sys.stderr)
        return EXIT_USAGE
    for line in clients.instructions(args.client, name, server, path):
        print(line, file=sys.stderr)
    sys.stdout.write(clients.snippet(args.client, name, server))
    return 0


def _lessons_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("export", "import"), help="which way")
    parser.add_argument(
        "file", nargs="?", help="the JSONL file (export: stdout if left out; import: - is stdin)"
    )


def _lessons(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from yool.kernel.store import Store
    from yool.memory import ImportReport, LessonImportError, Lessons

    path = load_policy().db_path
    if args.action == "export" and not path.exists():
        print(f"yool: no yool store at {path}: nothing to export", file=sys.stderr)
        return EXIT_NO_STORE
    if args.action == "import":
        if args.file is None:
            print("yool: lessons import: give the JSONL file (- for stdin)", file=sys.stderr)
            return EXIT_USAGE
        try:
            lines = (
                sys.stdin.readlines()
                if args.file == "-"
                else Path(args.file).read_text(encoding="utf-8").splitlines()
            )
        except (OSError, UnicodeDecodeError) as e:
            print(f"yool: cannot read {args.file}: {e}", file=sys.stderr)
            return EXIT_USAGE

    async def work(store: Store) -> list[str] | ImportReport:
        memory = Lessons.open(store, Path.cwd().resolve())
        if args.action == "export":
            return await memory.export_jsonl()
        return await memory.import_jsonl(lines)

    try:
        with Store.open(path) as store:
            done = asyncio.run(work(store))
    except LessonImportError as e:
        for number, why in e.problems:
            print(f"yool: {args.file}:{number}: {why}", file=sys.stderr)
        print("yool: nothing was imported", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(done, ImportReport):
        print(f"imported {done.added} lessons ({done.merged} already known, merged)")
    elif args.file is None:
        sys.stdout.write("".join(line + "\n" for line in done))
    else:
        Path(args.file).write_text("".join(line + "\n" for line in done), encoding="utf-8")
    return 0


COMMANDS: tuple[Command, ...] = (
    Command(
        "server",
        "serve yool's tools to an MCP client (Claude Code, Codex, VS Code); --lsp: to an editor",
        _server,
        _server_arguments,
    ),
    Command(
        "run",
        "run one agent on a task and print its answer (exit 0 only if it ended normally)",
        _run,
        _run_arguments,
    ),
    Command("ps", "list agents from the store (works beside a running server)", _ps, _ps_arguments),
    Command(
        "trace",
        "print the event log and agents' transcripts from the store; --follow to watch",
        _trace,
        _trace_arguments,
    ),
    Command(
        "lessons",
        "export the lessons in the store as JSONL, or import such a file (deduplicated)",
        _lessons,
        _lessons_arguments,
    ),
    Command(
        "config",
        "print (or --write) the config Claude Code, Codex or VS Code needs to start yool",
        _config,
        _config_arguments,
    ),
    Command(
        "sandbox",
        "report the code sandbox's isolation layers on this machine (`probe`, --json)",
        _sandbox,
        _sandbox_arguments,
    ),
    Command(
        "cluster",
        "show this node's cluster setup (YOOL_CLUSTER) and which peers answer (`status`)",
        _cluster,
        _cluster_arguments,
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

    try:
        return run(args)
    except BrokenPipeError:
        # The reader left; point stdout at devnull so the interpreter's final flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        # Only a command that loaded the policy can fail on it; `yool config` never imports it.
        policy = sys.modules.get("yool.policy")
        if policy is None or not isinstance(exc, policy.PolicyError):
            raise
        problems = str(exc).splitlines()
        if len(problems) == 1:
            print(f"yool: invalid configuration: {problems[0]}", file=sys.stderr)
        else:
            print("yool: invalid configuration:", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
        return EXIT_USAGE
