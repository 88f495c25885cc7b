"""The LSP front end: the operations table as LSP requests and commands, on stdio.

`yool server --lsp` serves an editor what `yool server --stdio` serves an MCP client: every
enabled operation is the custom request `yool/<op>` and the command `yool.<op>`, taking the
MCP tool's arguments and answering its structured result. One `Session` lives from
`initialize` to `shutdown`/`exit` (or the client going away). Changes to the agents, and
the kernel's events once the client asks for them, are pushed as `yool/agentsChanged` and
`yool/trace` notifications, coalesced so a burst never floods the editor; `yool/others`
reads the agents other yool servers run on the same store (VS Code's agent mode starts one),
and while watched pushes `yool/othersChanged`; a blocking
operation reports `$/progress`. Nothing here decides anything: a handler validates the
arguments against the operation's input model, calls it, and translates its result or its
failure (in the MCP server's wording, `failure_message`) into JSON-RPC. The protocol is
docs/lsp.md; this module must not import the MCP SDK (it would slow the editor's start).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import stat
import sys
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import cattrs
from lsprotocol import converters
from lsprotocol import types as lsp
from pydantic import BaseModel, ConfigDict, ValidationError
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInternalError,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcMethodNotFound,
    JsonRpcServerNotInitialized,
)
from pygls.io_ import StdinAsyncReader, StdoutWriter, run_async
from pygls.lsp.server import LanguageServer
from pygls.protocol import (
    JsonRPCNotification,
    JsonRPCRequestMessage,
    JsonRPCResponseMessage,
    LanguageServerProtocol,
    lsp_method,
)
from pygls.protocol.json_rpc import RPCRequest
from pygls.uris import to_fs_path

from yool import __version__
from yool.kernel.events import Event
from yool.policy import RuntimePolicy
from yool.server.elsewhere import Elsewhere
from yool.server.failures import failure_message
from yool.tools import Call, Operation, Session, enabled
from yool.tools.introspection import event_json
from yool.userland.agents.react import TURN

log = logging.getLogger("yool.server.lsp")

METHOD = "yool/"  # custom requests: yool/<op>
COMMAND = "yool."  # workspace/executeCommand commands: yool.<op>
AGENTS_CHANGED = "yool/agentsChanged"
OTHERS = "yool/others"  # other yool servers' agents on this YOOL_HOME (server/elsewhere.py)
OTHERS_CHANGED = "yool/othersChanged"
TRACE = "yool/trace"
TRACE_FOLLOW = "yool/traceFollow"
OP_REFUSED = -32001  # an OpError, a kernel refusal, a validator's ValueError
COALESCE_S = 0.25  # at most one notification of a kind per this many seconds
TRACE_BUFFER = 10_000  # events held for the next yool/trace; older ones are dropped
# Kernel events after which `ps` may read differently (an agent's step is a `log` TURN).
AGENT_EVENTS = frozenset({"spawn", "exit", "signal", "restore", "quota"})
# Failures the caller is told of and that need no traceback in the server's log.
_EXPECTED_CODES = frozenset({OP_REFUSED, -32602, -32601, -32002, -32800})


def raw_converter() -> cattrs.Converter:
    """lsprotocol's converter, leaving custom messages' params and results as plain JSON.

    pygls's default turns the params of a method it has no type for into namedtuples; ours
    are validated by the operation's pydantic model, which wants the dict as sent.
    """
    converter = converters.get_converter()

    def as_sent(obj: dict[str, Any], cls: type[Any]) -> Any:
        return cls(**obj)

    for cls in (JsonRPCRequestMessage, JsonRPCResponseMessage, JsonRPCNotification):
        converter.register_structure_hook(cls, as_sent)
    return converter


class _Answered:
    """A message refused while decoding, already answered with an error."""


class _Protocol(LanguageServerProtocol):
    """pygls's LSP protocol with yool's initialize result, executeCommand and exit."""

    _server: YoolLanguageServer

    @lsp_method(lsp.INITIALIZE)
    def lsp_initialize(self, params: lsp.InitializeParams) -> Any:
        result = yield from super().lsp_initialize(params)
        self._server.advertise(result.capabilities)
        return result

    @lsp_method(lsp.WORKSPACE_EXECUTE_COMMAND)
    async def lsp_workspace__execute_command(  # type: ignore[override]
        self, params: lsp.ExecuteCommandParams
    ) -> Any:
        # A coroutine (pygls's is a generator), so $/cancelRequest reaches the operation.
        return await self._server.execute_command(params)

    @lsp_method(lsp.SHUTDOWN)
    async def lsp_shutdown(self, *args: Any) -> None:  # type: ignore[override]
        # Every call cancelled and the session closed before the answer; then nothing more
        # is served (pygls refuses all but `exit`). pygls's own iterates a dict that
        # cancelling changes.
        self._shutdown = True  # from now on every request but this one is refused
        self._server.shutdown_task = asyncio.current_task()
        await self._server.close()
        current = self.msg_id
        for msg_id, future in list(self._request_futures.items()):
            if msg_id != current and not future.done():
                future.cancel()

    @lsp_method(lsp.EXIT)
    def lsp_exit(self, *args: Any) -> None:  # type: ignore[override]
        # pygls would sys.exit() from a callback; the serving loop ends and cleans up instead.
        self._server.request_exit()

    def structure_message(self, data: dict[str, Any]) -> Any:
        try:
            return super().structure_message(data)
        except JsonRpcException as e:
            # pygls logs a request it cannot decode and never answers it: answer it.
            if isinstance(data.get("id"), str | int) and "method" in data:
                self._send_response(data["id"], error=e.to_response_error())
                return _Answered()
            raise

    def _send_response(
        self, msg_id: Any, result: Any = None, error: lsp.ResponseError | None = None
    ) -> None:
        if error is None and isinstance(result, dict):
            # An operation's JSON result: written as is (cattrs would walk every value).
            self._result_types.pop(msg_id, None)
            self._send_data({"jsonrpc": "2.0", "id": msg_id, "result": result})
        else:
            super()._send_response(msg_id, result, error)

    def notify_json(self, method: str, params: dict[str, Any]) -> None:
        """A notification whose params are plain JSON already."""
        self._send_data({"jsonrpc": "2.0", "method": method, "params": params})

    def handle_message(self, message: Any) -> None:
        if isinstance(message, _Answered):
            return
        if self._shutdown and isinstance(message, RPCRequest) and message.method != lsp.EXIT:
            # pygls drops it unanswered; LSP says: refuse it
            error = JsonRpcInvalidRequest("the server is shut down; only exit is accepted")
            self._send_response(message.id, error=error.to_response_error())
            return
        super().handle_message(message)


class _Coalesced:
    """`send` at most once per `interval`: on the next loop turn after the first poke,
    then once more at the end of the window if anything was poked meanwhile."""

    def __init__(self, interval: float, send: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._interval = interval
        self._send = send
        self._timer: asyncio.Handle | None = None
        self._pending = False
        self._closed = False

    def poke(self) -> None:
        if self._closed:
            return
        if self._timer is None:
            self._timer = self._loop.call_soon(self._fire)
        else:
            self._pending = True

    def _fire(self) -> None:
        self._pending = False
        self._timer = self._loop.call_later(self._interval, self._quiet)
        try:
            self._send()
        except Exception:  # a notification that failed must not stop the next ones
            log.exception("could not send a notification")

    def _quiet(self) -> None:
        self._timer = None
        if self._pending and not self._closed:
            self._fire()

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Progress:
    """`$/progress` for one blocking call: on the caller's token, or one the server made."""

    def __init__(self, server: YoolLanguageServer, title: str, token: lsp.ProgressToken | None):
        self._server = server
        self._title = title
        self._token = token
        self._begun = False
        self._ended = False
        if token is not None:
            self._begin()
        elif server.client_shows_progress:
            self._token = f"yool-{uuid.uuid4().hex}"
            created = server.protocol.send_request(
                lsp.WINDOW_WORK_DONE_PROGRESS_CREATE,
                lsp.WorkDoneProgressCreateParams(token=self._token),
            )
            created.add_done_callback(self._created)

    def _created(self, future: Future[Any]) -> None:
        if not future.cancelled() and future.exception() is None and not self._ended:
            self._begin()

    def _begin(self) -> None:
        assert self._token is not None
        self._begun = True
        value = lsp.WorkDoneProgressBegin(title=self._title, cancellable=False)
        self._server.work_done_progress.begin(self._token, value)

    async def report(self, done: float, total: float | None, message: str) -> None:
        if not self._begun or self._ended or self._token is None:
            return
        percentage = None
        if total:
            percentage = max(0, min(100, int(done * 100 / total)))
        value = lsp.WorkDoneProgressReport(message=message or None, percentage=percentage)
        self._server.work_done_progress.report(self._token, value)

    def end(self) -> None:
        self._ended = True
        if self._begun and self._token is not None:
            self._server.work_done_progress.end(self._token, lsp.WorkDoneProgressEnd())
            self._server.work_done_progress.tokens.pop(self._token, None)


async def _no_progress(done: float, total: float | None, message: str) -> None:
    return None


class _FollowArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    follow: bool = True


class _OthersArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    watch: bool | None = None  # True: push yool/othersChanged until False


def _handler(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def handle(*args: Any) -> Any:
        return await method(*args)

    return handle


class YoolLanguageServer(LanguageServer):
    """The LSP server over one session on `policy` (opened on `initialize`)."""

    protocol: _Protocol

    def __init__(self, policy: RuntimePolicy, *, environ: Mapping[str, str] | None = None):
        super().__init__(
            "yool",
            __version__,
            text_document_sync_kind=lsp.TextDocumentSyncKind.None_,
            protocol_cls=_Protocol,
            converter_factory=raw_converter,
        )
        self.policy = policy
        self.environ = environ
        self.operations: dict[str, Operation[Any, Any]] = {
            op.name: op for op in enabled(policy.tools)
        }
        self.session: Session | None = None
        self._opened: asyncio.Future[None] | None = None  # done once initialize has opened it
        self._stack: contextlib.AsyncExitStack | None = None
        self._closing: asyncio.Future[None] | None = None
        self._calls: set[asyncio.Task[Any]] = set()
        self._exit: asyncio.Future[None] | None = None
        self.shutdown_task: asyncio.Task[Any] | None = None  # the `shutdown` request's
        self._agents: _Coalesced | None = None
        self._trace: _Coalesced | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._following = False
        self._events: deque[Event] = deque(maxlen=TRACE_BUFFER)
        self._dropped = 0
        self._elsewhere: Elsewhere | None = None
        for name in self.operations:
            self.feature(METHOD + name)(self._request(name))
        # pygls tags each handler with attributes, which a bound method cannot take.
        self.feature(TRACE_FOLLOW)(_handler(self._trace_follow))
        self.feature(OTHERS)(_handler(self._others))
        self.feature(lsp.INITIALIZE)(_handler(self._on_initialize))

    # -- lifecycle ---------------------------------------------------------------------

    async def _on_initialize(self, params: lsp.InitializeParams) -> None:
        if self._opened is not None or self._closing is not None:
            raise JsonRpcInvalidRequest("initialize: the server is already initialized")
        self._opened = asyncio.get_running_loop().create_future()
        try:
            await self._open(_workspace(params))
        finally:
            self._opened.set_result(None)

    async def _open(self, workspace: Path | None) -> None:
        stack = contextlib.AsyncExitStack()
        try:
            session = await stack.enter_async_context(
                Session.open(self.policy, workspace=workspace, environ=self.environ)
            )
        except Exception as e:
            log.exception("could not open the yool session")
            why = str(e) if isinstance(e, OSError) else type(e).__name__
            raise JsonRpcInternalError(f"yool could not start its session: {why}") from None
        self._stack, self.session = stack, session
        self._agents = _Coalesced(COALESCE_S, self._send_agents)
        self._trace = _Coalesced(COALESCE_S, self._send_trace)
        session.kernel.events.sinks.append(self._on_event)
        self._elsewhere = Elsewhere(session.policy.db_path, self._mine, self._send_others)

    def _mine(self, pid: int) -> bool:
        """A store row the session's own `ps` already shows (not one it only saw running
        under another server when it opened: the store knows better how that one is)."""
        session = self.session
        if session is None:
            return False
        record = session.agents.get(pid)
        return pid == session.pid or (record is not None and record.status != "elsewhere")

    def request_exit(self) -> None:
        """The client sent `exit` (or a signal came): stop serving."""
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(None)

    async def close(self) -> None:
        """Cancel every call in flight, stop notifying, and close the session (once)."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self._opened is not None:
            await asyncio.shield(self._opened)  # an initialize still opening the session
        session, self.session = self.session, None
        for coalesced in (self._agents, self._trace):
            if coalesced is not None:
                coalesced.close()
        if self._elsewhere is not None:
            elsewhere, self._elsewhere = self._elsewhere, None
            await elsewhere.close()
        if session is not None:
            with contextlib.suppress(ValueError):
                session.kernel.events.sinks.remove(self._on_event)
        calls = [task for task in self._calls if not task.done()]
        for task in calls:
            task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*calls, *list(self._tasks), return_exceptions=True)
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()  # Session.close: agents ended, records persisted, store flushed

    async def serve(self, reader: Any) -> int:
        """Handle messages from `reader` until `exit`, end of input or SIGTERM; the status."""
        loop = asyncio.get_running_loop()
        self._exit = loop.create_future()
        self._stop_event = stop = threading.Event()
        reading = asyncio.create_task(
            run_async(
                stop_event=stop,
                reader=reader,
                protocol=self.protocol,
                logger=logging.getLogger("pygls.io_"),
                error_handler=self.report_server_error,
            )
        )
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        for sig in signals:
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.add_signal_handler(sig, self.request_exit)
        try:
            await asyncio.wait({reading, self._exit}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.set()
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading
            await self.close()
            if self.shutdown_task is not None:  # its answer goes out before we end
                await asyncio.wait({self.shutdown_task})
            for sig in signals:
                with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                    loop.remove_signal_handler(sig)
        return 0 if self.protocol._shutdown else 1

    def advertise(self, capabilities: lsp.ServerCapabilities) -> None:
        """The initialize result's capabilities: yool's commands and its operations table."""
        capabilities.execute_command_provider = lsp.ExecuteCommandOptions(
            commands=[COMMAND + name for name in self.operations], work_done_progress=True
        )
        capabilities.text_document_sync = lsp.TextDocumentSyncKind.None_
        capabilities.experimental = {
            "yool": {
                "version": 1,
                "operations": [
                    {
                        "name": op.name,
                        "group": op.group,
                        "readOnly": op.read_only,
                        "blocking": op.blocking,
                        "description": op.description,
                    }
                    for op in self.operations.values()
                ],
            }
        }

    @property
    def client_shows_progress(self) -> bool:
        """The client announced `window.workDoneProgress` (it accepts server-made tokens)."""
        caps = getattr(self.protocol, "client_capabilities", None)
        window = caps.window if caps is not None else None
        return bool(window is not None and window.work_done_progress)

    # -- calls -------------------------------------------------------------------------

    def _request(self, name: str) -> Callable[[Any], Awaitable[Any]]:
        async def request(params: Any) -> Any:
            token = None
            if isinstance(params, dict) and "workDoneToken" in params:
                params = dict(params)
                token = params.pop("workDoneToken")
            return await self.call(name, params, token)

        return request

    async def execute_command(self, params: lsp.ExecuteCommandParams) -> Any:
        """`workspace/executeCommand` of `yool.<op>`; a failure is also shown to the user."""
        command = params.command
        name = command[len(COMMAND) :] if command.startswith(COMMAND) else None
        try:
            if name is None or name not in self.operations:
                raise JsonRpcMethodNotFound(f"no yool command {command!r}")
            arguments = list(params.arguments or [])
            if len(arguments) > 1:
                raise JsonRpcInvalidParams(
                    "arguments: pass one object of the operation's arguments (or none)"
                )
            return await self.call(name, arguments[0] if arguments else {}, params.work_done_token)
        except JsonRpcException as e:
            self.window_show_message(
                lsp.ShowMessageParams(
                    type=lsp.MessageType.Error, message=f"yool {name or command}: {e.message}"
                )
            )
            raise

    async def call(self, name: str, params: Any, token: lsp.ProgressToken | None = None) -> Any:
        """Run operation `name` on `params`: its result as JSON, or a JSON-RPC error."""
        op = self.operations[name]
        if self.session is None and self._opened is not None and self._closing is None:
            await asyncio.shield(self._opened)  # a call sent before initialize's answer
        session = self.session
        if session is None:
            raise JsonRpcServerNotInitialized(
                "the yool session is not running (send initialize first; the server may be "
                "shutting down)"
            )
        args = _validated(op, params)
        progress = _Progress(self, f"yool {name}", token) if op.blocking else None
        task = asyncio.current_task()
        if task is not None:
            self._calls.add(task)
        try:
            reporter = progress.report if progress is not None else _no_progress
            result = await op(Call(session, reporter, "lsp"), args)
        except Exception as e:
            message = failure_message(e)
            if message is None:
                log.exception("internal error in %s", name)
                raise JsonRpcInternalError(f"internal error in {name}") from None
            raise JsonRpcException(message, code=OP_REFUSED) from None
        finally:
            if task is not None:
                self._calls.discard(task)
            if progress is not None:
                progress.end()
        return result.model_dump(mode="json", exclude_none=True)

    async def _trace_follow(self, params: Any) -> dict[str, Any]:
        try:
            args = _FollowArgs.model_validate({} if params is None else params)
        except ValidationError as e:
            raise _invalid(e) from None
        self._following = args.follow
        if not args.follow:
            self._events.clear()
            self._dropped = 0
        return {}

    async def _others(self, params: Any) -> dict[str, Any]:
        try:
            args = _OthersArgs.model_validate({} if params is None else params)
        except ValidationError as e:
            raise _invalid(e) from None
        elsewhere = self._elsewhere
        if elsewhere is None:
            raise JsonRpcServerNotInitialized("the server is not initialized")
        if args.watch is not None:
            elsewhere.watch(args.watch)
        return {"agents": await elsewhere.read(), "watching": elsewhere.watching}

    # -- notifications ------------------------------------------------------------------

    def _send_others(self, rows: list[dict[str, Any]]) -> None:
        self.protocol.notify_json(OTHERS_CHANGED, {"agents": rows})

    def _on_event(self, ev: Event) -> None:
        """Kernel event sink: note what to notify; never blocks, never raises."""
        try:
            if self._following and self._trace is not None:
                if len(self._events) == self._events.maxlen:
                    self._dropped += 1
                self._events.append(ev)
                self._trace.poke()
            if self._agents is None:
                return
            kind = ev.kind
            if kind == "exit" and self.session is not None:
                record = self.session.agents.get(ev.pid or 0)
                if record is not None and record.done is not None and not record.done.done():
                    # the session records the exit when its Down notice arrives: notify then
                    agents = self._agents
                    record.done.add_done_callback(lambda _: agents.poke())
                    return
            if kind in AGENT_EVENTS or (
                kind == "log"
                and ev.data is not None
                and ev.data.get("message") == TURN
                and ev.data.get("role") == "assistant"
            ):
                self._agents.poke()
        except Exception:
            log.exception("event sink failed")

    def _send_agents(self) -> None:
        ps = self.operations.get("ps")
        session = self.session
        if ps is None or session is None:
            return

        async def send() -> None:
            result = await ps(Call(session, _no_progress, "lsp"), {})
            self.protocol.notify_json(
                AGENTS_CHANGED, result.model_dump(mode="json", exclude_none=True)
            )

        task = asyncio.ensure_future(send())
        self._tasks.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("could not send %s: %r", AGENTS_CHANGED, task.exception())

    def _send_trace(self) -> None:
        if not self._events:
            return
        events = [event_json(*ev) for ev in self._events]
        self._events.clear()
        params: dict[str, Any] = {"events": events}
        if self._dropped:
            params["dropped"] = self._dropped
            self._dropped = 0
        self.protocol.notify_json(TRACE, params)


def _validated(op: Operation[Any, Any], params: Any) -> BaseModel:
    try:
        model: BaseModel = op.input.model_validate({} if params is None else params)
    except ValidationError as e:
        raise _invalid(e) from None
    return model


def _invalid(e: ValidationError) -> JsonRpcInvalidParams:
    """-32602 naming the first bad field (pydantic's message), every error in `data`."""
    errors = e.errors(include_url=False, include_input=False, include_context=False)
    listed = [{"loc": list(err["loc"]), "msg": err["msg"]} for err in errors]
    first = listed[0] if listed else {"loc": [], "msg": "invalid"}
    field = ".".join(str(part) for part in first["loc"]) or "params"
    return JsonRpcInvalidParams(f"{field}: {first['msg']}", data={"errors": listed})


def _workspace(params: lsp.InitializeParams) -> Path | None:
    """The client's first workspace folder (or root), if it is a directory; else the cwd."""
    uri = None
    if params.workspace_folders:
        uri = params.workspace_folders[0].uri
    elif params.root_uri:
        uri = params.root_uri
    path = to_fs_path(uri) if uri else params.root_path
    if not path:
        return None
    if not Path(path).is_dir():
        log.warning("workspace %s is not a directory; working in %s", path, Path.cwd())
        return None
    return Path(path)


# -- stdio ------------------------------------------------------------------------------


class _PipeWriter:
    """pygls's writer over a non-blocking pipe: a write never blocks the event loop."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    def close(self) -> None:
        return None  # closed by `_stdio` once the last message is out


def _pollable(fd: int) -> bool:
    """A pipe, socket or terminal: epoll can watch it (not a regular file or /dev/null)."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


@contextlib.asynccontextmanager
async def _stdio() -> AsyncIterator[tuple[Any, Any]]:
    """(reader, writer) on private copies of fds 0 and 1, with fd 0 then reading /dev/null
    and fd 1 writing to stderr, so a stray print or a child process cannot corrupt the
    protocol. Anything else than a pipe, socket or terminal (a regular file, /dev/null) is
    read on a thread."""
    loop = asyncio.get_running_loop()
    wire_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    wire_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    in_file = os.fdopen(wire_in, "rb", buffering=0)
    out_file = os.fdopen(wire_out, "wb", buffering=0)
    transports: list[asyncio.BaseTransport] = []
    stream: asyncio.StreamWriter | None = None
    reader: Any
    writer: Any
    if _pollable(wire_in):
        piped = asyncio.StreamReader()
        read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(piped), in_file
        )
        transports.append(read_transport)
        reader = piped
    else:
        reader = StdinAsyncReader(in_file)
    if _pollable(wire_out):
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, out_file
        )
        transports.append(transport)
        stream = asyncio.StreamWriter(transport, protocol, None, loop)
        writer = _PipeWriter(stream)
    else:
        writer = StdoutWriter(out_file)
    saved = (os.dup(0), os.dup(1))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    try:
        yield reader, writer
    finally:
        if stream is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stream.drain(), 5.0)
        for made in transports:
            made.close()
        for file in (in_file, out_file):
            with contextlib.suppress(OSError):
                file.close()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        for fd, original in enumerate(saved):
            with contextlib.suppress(OSError):
                os.dup2(original, fd)
            os.close(original)


class _ClientLog(logging.Handler):
    """yool's warnings to the client as `window/logMessage` (message only, no traceback)."""

    def __init__(self, server: YoolLanguageServer, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.WARNING)
        self._server = server
        self._loop = loop

    def emit(self, record: logging.LogRecord) -> None:
        kind = lsp.MessageType.Error if record.levelno >= logging.ERROR else lsp.MessageType.Warning
        params = lsp.LogMessageParams(type=kind, message=f"{record.name}: {record.getMessage()}")
        with contextlib.suppress(RuntimeError):  # the loop has closed
            self._loop.call_soon_threadsafe(self._server.window_log_message, params)


def _quiet_expected(record: logging.LogRecord) -> bool:
    """pygls logs a traceback for every error response; not for the caller's own mistakes."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (isinstance(exc, JsonRpcException) and exc.code in _EXPECTED_CODES)


async def _serve(policy: RuntimePolicy) -> int:
    server = YoolLanguageServer(policy)
    handler = _ClientLog(server, asyncio.get_running_loop())
    yool_log = logging.getLogger("yool")
    yool_log.addHandler(handler)
    try:
        async with _stdio() as (reader, writer):
            server.protocol.set_writer(writer)
            return await server.serve(reader)
    finally:
        yool_log.removeHandler(handler)


def serve(policy: RuntimePolicy) -> int:
    """Serve LSP on stdin/stdout until `exit`; the exit status (0 after a `shutdown`)."""
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="yool-lsp %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pygls.protocol.json_rpc").addFilter(_quiet_expected)
    return asyncio.run(_serve(policy))
