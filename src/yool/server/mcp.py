"""The MCP front end: the operations table as MCP tools, over stdio or streamable HTTP.

Nothing here decides anything: each tool is generated from an `Operation` (flat parameters
from its input model, structured output from its result model, its docstring's first line
as the description) and only translates. An `OpError` or a kernel refusal becomes a tool
result with `isError` and the operation's own message; an unexpected failure is logged here
and reported without internals. One `Session` lives as long as the server (the lifespan),
so every client call acts on the same kernel, budget and store.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field
from pydantic.fields import FieldInfo

from yool import __version__
from yool.kernel import KernelError
from yool.policy import RuntimePolicy
from yool.server.sampling import HostSampler, handshake_era
from yool.tools import Call, Operation, OpError, Session, enabled

log = logging.getLogger("yool.server")

INSTRUCTIONS = (
    "yool runs sub-agents as supervised processes with budgets. spawn returns a pid at once; "
    "wait blocks with progress; ps lists agents; signal kills or stops them."
)
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "emergency": logging.CRITICAL,
}


class Holder:
    """Where the lifespan puts the session the tools act on."""

    session: Session | None = None

    def get(self) -> Session:
        if self.session is None:
            raise ToolError("the yool session is not running (the server is starting or stopping)")
        return self.session


def _parameter(name: str, info: FieldInfo) -> inspect.Parameter:
    """A keyword parameter carrying the field's type, constraints and description."""
    extra = Field(description=info.description) if info.description else None
    annotation: Any = info.annotation
    metadata = [*info.metadata, *([extra] if extra is not None else [])]
    if metadata:
        annotation = Annotated[(annotation, *metadata)]
    if info.is_required():
        default: Any = inspect.Parameter.empty
    elif info.default_factory is not None:
        default = info.default_factory()  # type: ignore[call-arg]
    else:
        default = info.default
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def tool_function(op: Operation[Any, Any], holder: Holder) -> Callable[..., Awaitable[Any]]:
    """The MCP tool for `op`: flat keyword parameters in, the result model out."""

    async def tool(ctx: Context, **kwargs: Any) -> Any:
        session = holder.get()
        note_client(ctx, session)

        async def progress(done: float, total: float | None, message: str) -> None:
            await ctx.report_progress(done, total, message)

        call = Call(session, progress, "mcp", {"context": ctx})
        try:
            return await op(call, kwargs)
        except OpError as e:
            raise ToolError(str(e)) from None
        except KernelError as e:
            raise ToolError(f"{type(e).__name__}: {e}") from None
        except ValueError as e:  # a model validator's message names its field
            raise ToolError(str(e)) from None

    params = [_parameter(name, info) for name, info in op.input.model_fields.items()]
    params.append(inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context))
    tool.__signature__ = inspect.Signature(params, return_annotation=op.output)  # type: ignore[attr-defined]
    tool.__annotations__ = {"ctx": Context, "return": op.output}
    tool.__name__ = op.name
    tool.__doc__ = op.description
    return tool


def build(
    policy: RuntimePolicy,
    *,
    workspace: Path | None = None,
    environ: Mapping[str, str] | None = None,
    in_memory: bool = False,
) -> MCPServer[Any]:
    """An MCP server over one session on `policy` (opened when the server starts serving)."""
    holder = Holder()

    @contextlib.asynccontextmanager
    async def lifespan(_server: MCPServer[Any]) -> AsyncIterator[None]:
        async with Session.open(
            policy, workspace=workspace, environ=environ, in_memory=in_memory
        ) as session:
            holder.session = session
            try:
                yield None
            finally:
                holder.session = None

    server: MCPServer[Any] = MCPServer(
        "yool",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level="WARNING",
    )
    for op in enabled(policy.tools):
        server.add_tool(
            tool_function(op, holder),
            name=op.name,
            description=op.description,
            annotations=types.ToolAnnotations(
                read_only_hint=op.read_only, destructive_hint=False if op.read_only else None
            ),
            structured_output=True,
        )
    _add_logging(server)
    server.holder = holder  # type: ignore[attr-defined]
    return server


def note_client(ctx: Context, session: Session) -> None:
    """Offer the sampling provider while the latest caller is a client that can sample."""
    caps = ctx.client_capabilities
    sampling = caps.sampling if caps is not None else None
    if sampling is None or not handshake_era(ctx.protocol_version):
        session.sampling.callback = None
        return
    current = session.sampling.callback
    if not isinstance(current, HostSampler) or current.session is not ctx.session:
        session.sampling.callback = HostSampler(ctx.session, tools=sampling.tools is not None)


def _add_logging(server: MCPServer[Any]) -> None:
    """`logging/setLevel`: the client picks how chatty yool's log is."""

    async def set_level(ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
        level = _LEVELS.get(str(params.level).lower(), logging.INFO)
        logging.getLogger("yool").setLevel(level)
        return types.EmptyResult()

    server._lowlevel_server.add_request_handler(
        "logging/setLevel", types.SetLevelRequestParams, set_level
    )
