"""The operations table: every yool operation, once, for every front end.

An operation is a typed async function `(call, args) -> result` where `args` is a pydantic
model and the result is one too; its docstring's first line is its description. The MCP
server and the LSP server are generated from this table, so adding an operation is one
decorated function in a `yool.tools` module. Operations only call the session and the
kernel; they never know which front end asked.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, get_type_hints

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from yool.tools.session import Session

Group = Literal["agents", "personas", "memory", "prompts", "code", "tuples", "system"]
GROUPS: tuple[Group, ...] = ("agents", "personas", "memory", "prompts", "code", "tuples", "system")

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


class OpError(Exception):
    """A failure the caller can fix: the message names the field or pid and the fix."""


class Args(BaseModel):
    """Base of every operation's input: unknown fields are refused, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class Result(BaseModel):
    """Base of every operation's output."""


async def _no_progress(done: float, total: float | None, message: str) -> None:
    return None


Reporter = Callable[[float, float | None, str], Awaitable[None]]


@dataclass(slots=True)
class Call:
    """One invocation: the session it acts on, and how to tell the caller how far it got."""

    session: Session
    progress: Reporter = _no_progress
    client: str = ""  # who asked, for the trace: "mcp", "lsp", "cli"
    # The caller answers host requests (session.host) only between calls: a blocking
    # operation returns early when one is pending, so the front end can hand it over.
    pull: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Operation(Generic[In, Out]):
    name: str
    group: Group
    description: str
    input: type[In]
    output: type[Out]
    run: Callable[[Call, In], Awaitable[Out]]
    read_only: bool = False  # changes nothing: a client may call it without asking the user
    blocking: bool = False  # may take long; reports progress while it does

    async def __call__(self, call: Call, args: In | dict[str, Any]) -> Out:
        model = args if isinstance(args, self.input) else self.input.model_validate(args)
        return await self.run(call, model)


OPERATIONS: dict[str, Operation[Any, Any]] = {}


def operation(
    group: Group, *, read_only: bool = False, blocking: bool = False, name: str | None = None
) -> Callable[[Callable[[Call, In], Awaitable[Out]]], Operation[In, Out]]:
    """Register `fn(call, args: SomeArgs) -> SomeResult` in `OPERATIONS`."""

    def register(fn: Callable[[Call, In], Awaitable[Out]]) -> Operation[In, Out]:
        hints = get_type_hints(fn)
        params = list(inspect.signature(fn).parameters)
        if len(params) != 2:
            raise TypeError(f"operation {fn.__name__} must take (call, args)")
        input_type, output_type = hints[params[1]], hints["return"]
        doc = inspect.getdoc(fn) or ""
        if not doc:
            raise TypeError(f"operation {fn.__name__} needs a one-line docstring")
        op_name = name or fn.__name__.rstrip("_")
        if op_name in OPERATIONS:
            raise TypeError(f"operation {op_name!r} is defined twice")
        op = Operation(
            op_name,
            group,
            doc.splitlines()[0],
            input_type,
            output_type,
            fn,
            read_only=read_only,
            blocking=blocking,
        )
        OPERATIONS[op_name] = op
        return op

    return register


def enabled(groups: frozenset[str] | set[str]) -> list[Operation[Any, Any]]:
    """The operations of the switched-on groups, in table order (importing every module)."""
    load_all()
    return [op for op in OPERATIONS.values() if op.group in groups]


def load_all() -> None:
    """Import every operations module, so the table is complete."""
    from yool.tools import (  # noqa: F401
        agents,
        code,
        durable,
        evolve,
        introspection,
        memory,
        personas,
        prompts,
        system,
        teams,
        tuples,
    )
