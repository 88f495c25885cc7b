"""A device for plain Python tool callables.

`ToolsDriver({"grep": grep, "fetch": fetch})` offers named functions (sync or
async). A read is one call: `{"tool": name, "args": {...}}`; it costs one tool
call, reserved before the call so a process out of tool calls is refused
before anything runs. A handle may be opened on a subset (`tools=[...]`), so a
parent can hand a child fewer tools than it has. Sync functions run in a
worker thread so a slow tool never blocks the event loop. Results must be
JSON, because they are journaled.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Iterable
from typing import Any

from yool.kernel.accounts import Cost
from yool.kernel.devices import Driver, Handle, Reply
from yool.kernel.errors import DriverError

ONE_CALL = Cost(tool_calls=1)


class ToolsDriver(Driver):
    lane = "tools"

    def __init__(self, tools: dict[str, Callable[..., Any]], name: str = "tools") -> None:
        for tool, fn in tools.items():
            if not callable(fn):
                raise DriverError(f"tool {tool!r} is not callable")
        self.name = name
        self._tools = dict(tools)

    def names(self) -> list[str]:
        return sorted(self._tools)

    async def open(self, pid: int, params: dict[str, Any]) -> Handle:
        """A handle on the tools asked for (`tools=[...]`, default all), within every caveat.

        A capability derived with the caveat `{"tools": [...]}` can only ever open
        those tools, however its holder asks.
        """
        allowed: Iterable[str] | None = params.get("tools")
        wanted = set(self._tools) if allowed is None else set(allowed)
        unknown = sorted(wanted - self._tools.keys())
        if unknown:
            raise DriverError(
                f"{self.name}: unknown tool(s) {', '.join(unknown)} "
                f"(offered: {', '.join(self.names()) or 'none'})"
            )
        for caveat in params.get("caveats") or ():
            limit = caveat.get("tools")
            if limit is None:
                continue
            refused = sorted(wanted - set(limit))
            if refused and allowed is not None:
                raise DriverError(
                    f"{self.name}: this capability does not allow tool(s) {', '.join(refused)}"
                )
            wanted &= set(limit)
        return _ToolsHandle({t: self._tools[t] for t in sorted(wanted)})


class _ToolsHandle(Handle):
    __slots__ = ("_tools",)

    def __init__(self, tools: dict[str, Callable[..., Any]]) -> None:
        self._tools = tools

    def estimate(self, request: Any) -> Cost:
        return ONE_CALL

    async def read(self, request: Any) -> Reply:
        if not isinstance(request, dict) or not isinstance(request.get("tool"), str):
            raise DriverError('a tool call is {"tool": name, "args": {...}}')
        name = request["tool"]
        fn = self._tools.get(name)
        if fn is None:
            offered = ", ".join(sorted(self._tools)) or "none"
            raise DriverError(f"no tool {name!r} on this handle (offered: {offered})")
        args = request.get("args") or {}
        if not isinstance(args, dict):
            raise DriverError(f"tool {name!r}: args must be an object, got {type(args).__name__}")
        try:
            inspect.signature(fn).bind(**args)
        except TypeError as e:
            raise DriverError(f"tool {name!r}: bad arguments ({e})") from None
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(**args)
            else:
                result = await asyncio.to_thread(fn, **args)
        except Exception as e:
            raise DriverError(f"tool {name!r} failed: {type(e).__name__}: {e}", ONE_CALL) from e
        try:
            json.dumps(result)
        except (TypeError, ValueError) as e:
            raise DriverError(
                f"tool {name!r} returned a value that is not JSON ({e})", ONE_CALL
            ) from None
        return Reply(result, ONE_CALL)
