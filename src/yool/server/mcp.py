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
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import FuncMetadata
from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from yool import __version__
from yool.policy import RuntimePolicy
from yool.server.failures import failure_message
from yool.server.fastlane import FastLane, fast_operations
from yool.server.prompts import add_prompts
from yool.server.resources import add_resources
from yool.server.sampling import ask_host, note_client, take_answers
from yool.server.schema import (
    compact_schema,
    nulls_optional,
    published_input,
    published_output,
    shallow,
)
from yool.server.stdio import stdio_streams
from yool.tools import Call, Operation, Session, enabled

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
        pull = note_client(ctx, session) and op.blocking
        if pull:
            take_answers(ctx, session)

        async def progress(done: float, total: float | None, message: str) -> None:
            await ctx.report_progress(done, total, message)

        call = Call(session, progress, "mcp", pull=pull, extra={"context": ctx})
        try:
            result = await op(call, kwargs)
        except Exception as e:
            message = failure_message(e)
            if message is None:
                raise  # a crash: the SDK logs it and tells the client only the tool's name
            raise ToolError(message) from None
        return ask_host(ctx, session, result) if pull else result

    params = [_parameter(name, info) for name, info in op.input.model_fields.items()]
    params.append(inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=Context))
    # A blocking operation may instead answer "input required" (sampling, stateless era).
    returns: Any = op.output | types.InputRequiredResult if op.blocking else op.output
    tool.__signature__ = inspect.Signature(params, return_annotation=returns)  # type: ignore[attr-defined]
    tool.__annotations__ = {"ctx": Context, "return": returns}
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

    operations = enabled(policy.tools)
    server = YoolMCPServer(
        "yool",
        version=__version__,
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level="WARNING",
        tools=[make_tool(op, holder) for op in operations],
    )
    server.fast = fast_operations(operations) if policy.fast_lane else {}
    _add_logging(server)
    add_resources(server, holder)
    add_prompts(server, holder)
    server.holder = holder
    return server


def _add_logging(server: MCPServer[Any]) -> None:
    """`logging/setLevel`: the client picks how chatty yool's log is."""

    async def set_level(ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
        level = _LEVELS.get(str(params.level).lower(), logging.INFO)
        logging.getLogger("yool").setLevel(level)
        return types.EmptyResult()

    server._lowlevel_server.add_request_handler(
        "logging/setLevel", types.SetLevelRequestParams, set_level
    )


# -- the generated tools, tuned -----------------------------------------------------------
#
# `Tool.from_function` is right but slow and loose for us: its argument model ignores unknown
# fields, and its output schema (with `$ref`s, titles and `anyOf: [X, null]`) costs a client
# that re-validates every result (the SDK client does, with jsonschema) more than the whole
# server side of a call. `make_tool` keeps the SDK's tool and tightens three things.


def make_tool(op: Operation[Any, Any], holder: Holder) -> Tool:
    """The MCP tool for `op`: unknown fields refused, compact schemas, one serialisation."""
    tool = Tool.from_function(
        tool_function(op, holder),
        name=op.name,
        description=op.description,
        # Only what differs from the spec's defaults (not read-only): every byte of tools/list
        # sits in the model's context.
        annotations=types.ToolAnnotations(read_only_hint=True) if op.read_only else None,
        structured_output=True,
    )
    meta = tool.fn_metadata
    # Refuse unknown fields by name (pydantic: "<field>: Extra inputs are not permitted").
    strict = type(
        op.name,
        (meta.arg_model,),
        {
            "model_config": ConfigDict(extra="forbid", arbitrary_types_allowed=True),
            "__module__": __name__,
        },
    )
    parameters = published_input(compact_schema(tool.parameters, keep_defaults=True))
    # A read-only tool's result is why one calls it (clients and scripts parse it), so its
    # shape is published; an action answers with an acknowledgement (a pid, a status) that
    # its description names, and every result still comes as structured content.
    output_schema = (
        published_output(
            shallow(nulls_optional(compact_schema(meta.output_schema or {}, keep_defaults=False)))
        )
        if op.read_only
        else None
    )
    # The result is our own validated model: publish its schema, skip re-validating it, and
    # serialise it once (compact JSON for the text block, not the SDK's indent=2).
    tool.fn_metadata = FuncMetadata(arg_model=strict, output_schema=output_schema)
    tool.parameters = parameters
    tool.fn = _structured(tool.fn, op.output)
    return tool


def _structured(
    fn: Callable[..., Awaitable[Any]], output: type[BaseModel]
) -> Callable[..., Awaitable[Any]]:
    async def call(**kwargs: Any) -> Any:
        result = await fn(**kwargs)
        if isinstance(result, output):
            data = result.model_dump(mode="json", exclude_none=True)
            text = result.model_dump_json(exclude_none=True)
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=text)], structured_content=data
            )
        return result  # an InputRequiredResult, or anything the SDK already knows

    return call


class YoolMCPServer(MCPServer[Any]):
    """`MCPServer` whose stdio transport is `stdio_streams`, with the fast lane in front."""

    fast: dict[str, Operation[Any, Any]] = {}  # noqa: RUF012 (set per server by `build`)
    holder: Holder = Holder()

    async def run_stdio_async(self) -> None:
        low = self._lowlevel_server
        holder = self.holder
        lane = None
        if self.fast:
            stamp = low.server_info_stamp
            lane = FastLane(self.fast, lambda: holder.session, stamp, failure_message)
        async with stdio_streams(lane) as (read_stream, write_stream):
            await low.run(read_stream, write_stream, low.create_initialization_options())
