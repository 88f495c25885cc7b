"""Tuple-space operations: `tuple_out`, `tuple_in`, `tuple_rd`, `tuple_scan` and `batch_spawn`.

They act as the session process on `session.tuples` through the session's lane capability, so
what they may do is what that capability grants. Templates are JSON arrays: `null` matches
anything; `{"type": ...}`, `{"gte": ...}` (gt, lt, lte), `{"prefix": ...}` constrain a field
(see `yool.tuplespace.templates`). Schemas are kept tiny: every byte sits in the client's context.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import WithJsonSchema

from yool.kernel import CapError
from yool.tools.table import Args, Call, OpError, Result, operation
from yool.tuplespace import SpaceError, TemplateError, TupleError

MAX_WAIT_S = 300.0
MAX_SCAN = 1000

# Bounds are checked in code, not published: a schema costs context on every turn.
JSONList = Annotated[list[Any], WithJsonSchema({"type": "array"})]


class OutArgs(Args):
    lane: str
    tuple: JSONList
    durable: bool = False


class OutResult(Result):
    id: int


class InArgs(Args):
    lane: str
    template: JSONList
    wait_s: float = 0


class Got(Result):
    tuple: Annotated[list[Any] | None, WithJsonSchema({"type": "array"})] = None


class ScanArgs(Args):
    lane: str
    template: JSONList
    limit: int = 100


class Scanned(Result):
    tuples: Annotated[list[list[Any]], WithJsonSchema({"type": "array"})]


def _allowed(call: Call, lane: str, right: str) -> None:
    s = call.session
    try:
        s.tuples.require(s.kernel.caps, s.pid, s.lane_cap, right, lane)
    except CapError as e:
        raise OpError(f"lane: {e}") from None


def _bad(e: Exception) -> OpError:
    text = str(e)
    field = "tuple" if isinstance(e, TupleError) else "lane" if isinstance(e, SpaceError) else ""
    return OpError(text if text.startswith(("template", "tuple", "lane")) else f"{field}: {text}")


@operation("tuples")
async def tuple_out(call: Call, args: OutArgs) -> OutResult:
    """Put a tuple (JSON array) on a lane."""
    _allowed(call, args.lane, "write")
    space = call.session.tuples
    try:
        if args.durable:
            space.declare(args.lane, durable=True)
        return OutResult(id=await space.out(args.lane, args.tuple))
    except (SpaceError, TupleError) as e:
        raise _bad(e) from None


async def _wait(call: Call, args: InArgs, take: bool) -> Got:
    if not 0 <= args.wait_s <= MAX_WAIT_S:
        raise OpError(f"wait_s: must be 0 to {MAX_WAIT_S:g} seconds")
    _allowed(call, args.lane, "take" if take else "read")
    space = call.session.tuples
    try:
        fn = space.in_ if take else space.rd
        got = await fn(args.lane, args.template, args.wait_s)
    except (SpaceError, TemplateError) as e:
        raise _bad(e) from None
    return Got(tuple=None if got is None else list(got))


@operation("tuples", blocking=True)
async def tuple_in(call: Call, args: InArgs) -> Got:
    """Take a tuple matching template: null=any, {type|gte|lt|prefix:x}."""
    return await _wait(call, args, True)


@operation("tuples", read_only=True, blocking=True)
async def tuple_rd(call: Call, args: InArgs) -> Got:
    """tuple_in, but leave it."""
    return await _wait(call, args, False)


@operation("tuples", read_only=True)
async def tuple_scan(call: Call, args: ScanArgs) -> Scanned:
    """Tuples matching template (read only)."""
    if not 1 <= args.limit <= MAX_SCAN:
        raise OpError(f"limit: must be 1 to {MAX_SCAN}")
    _allowed(call, args.lane, "read")
    try:
        found = call.session.tuples.scan(args.lane, args.template, args.limit)
    except (SpaceError, TemplateError) as e:
        raise _bad(e) from None
    return Scanned(tuples=[list(t) for t in found])
