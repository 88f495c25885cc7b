"""The tuple-space device: a process's door to the lanes its lane capabilities cover.

Requests are dicts naming an `op` and a `lane`. Reads: `{"op": "rd" | "scan", "template": [...]}`
need the `read` right, `{"op": "in", "template": [...]}` the `take` right (both may wait up to
`wait_s` seconds, at most `MAX_WAIT_S`). The write `{"op": "out", "tuple": [...]}` needs the
`write` right. The right is checked against the caller's own capabilities of kind `lane` on
every request (a `cap` field picks one, else any that covers the lane), so a capability
revoked after the device was opened stops working at once. Replies are JSON (tuples as
lists; `null` when nothing matched in time), so every operation is journaled like any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from yool.kernel.devices import Driver, Handle, Reply
from yool.kernel.errors import CapError, DriverError
from yool.tuplespace import SpaceError, TemplateError, TupleError, TupleSpace, lane_allows

if TYPE_CHECKING:
    from yool.kernel.caps import CapTable

MAX_WAIT_S: Final = 60.0
MAX_SCAN: Final = 1000
_RIGHT: Final = {"out": "write", "in": "take", "rd": "read", "scan": "read"}


class TuplesDriver(Driver):
    name = "tuples"

    def __init__(self, space: TupleSpace, caps: CapTable) -> None:
        self.space = space
        self.caps = caps

    async def open(self, pid: int, params: dict[str, Any]) -> Handle:
        return _TuplesHandle(self, pid)

    def authorise(self, pid: int, lane: str, right: str, ref: object = None) -> None:
        """CapError unless `pid` holds a lane capability with `right` over `lane`."""
        if ref is not None:
            TupleSpace.require(self.caps, pid, ref, right, lane)
            return
        for c in self.caps.held_by(pid):
            if c.kind == "lane" and right in c.rights and lane_allows(str(c.target), lane):
                try:
                    TupleSpace.require(self.caps, pid, c.ref, right, lane)
                except CapError:
                    continue  # a caveat narrows this one elsewhere: try the next
                return
        raise CapError(f"pid {pid} holds no lane capability with {right!r} over {lane!r}")


class _TuplesHandle(Handle):
    __slots__ = ("_driver", "_pid")

    def __init__(self, driver: TuplesDriver, pid: int) -> None:
        self._driver = driver
        self._pid = pid

    async def read(self, request: Any) -> Reply:
        op, lane = _parse(request, ("in", "rd", "scan"))
        return Reply(await self._run(op, lane, request))

    async def write(self, data: Any) -> Reply:
        op, lane = _parse(data, ("out",))
        return Reply(await self._run(op, lane, data))

    async def _run(self, op: str, lane: str, req: dict[str, Any]) -> Any:
        d = self._driver
        d.authorise(self._pid, lane, _RIGHT[op], req.get("cap"))
        space = d.space
        try:
            if op == "out":
                return await space.out(lane, req.get("tuple") or [])
            template = req.get("template")
            if op == "scan":
                limit = req.get("limit", 100)
                if not isinstance(limit, int) or not 1 <= limit <= MAX_SCAN:
                    raise DriverError(f"tuples: limit must be 1..{MAX_SCAN}")
                tpl = await space.prepare(lane, template or [])  # an index being built: wait
                return [list(t) for t in space.scan(lane, tpl, limit)]
            wait = req.get("wait_s", 0)
            if not isinstance(wait, int | float) or not 0 <= wait <= MAX_WAIT_S:
                raise DriverError(f"tuples: wait_s must be 0..{MAX_WAIT_S:g} seconds")
            if op == "in":
                got = await space.in_(lane, template or [], wait)
            else:
                got = await space.rd(lane, template or [], wait)
            return None if got is None else list(got)
        except (SpaceError, TemplateError, TupleError) as e:
            raise DriverError(f"tuples: {e}") from None


def _parse(request: Any, ops: tuple[str, ...]) -> tuple[str, str]:
    if not isinstance(request, dict):
        raise DriverError(f"tuples: a request is a dict with 'op' ({'|'.join(ops)}) and 'lane'")
    op = request.get("op")
    if op not in ops:
        raise DriverError(f"tuples: op must be {' or '.join(ops)}, got {op!r}")
    lane = request.get("lane")
    if not isinstance(lane, str):
        raise DriverError("tuples: lane must be a string")
    return op, lane
