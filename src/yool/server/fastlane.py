"""The fast lane: read-only tool calls on stdio, answered without the SDK's request machinery.

Through the SDK a `ps` costs about a millisecond of server CPU (JSON-RPC dispatch, the era
runner, middleware, a request context, a task group, memory streams, and re-validating and
re-serialising the result) for 0.15 ms of work, and the stateless era adds almost as much
again. Clients poll `ps`, `trace` and `inspect` all the time, so calls to the read-only,
non-blocking operations take a shorter way: the line is parsed once, the arguments are
validated by the operation's own model, the result is serialised once, and the answer is
written straight to stdout in exactly the shape the SDK writes (the tests compare the two,
in both protocol eras).

The lane only ever takes the plain case. Anything else goes on to the SDK, which answers it
as always: another method or tool, arguments the operation's model refuses (the SDK words
the error), a request before the handshake has finished, a malformed or foreign-era
envelope, extra request fields, a stateless-era retry, or a server still starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    PROTOCOL_VERSION_META_KEY,
    SERVER_INFO_META_KEY,
)
from mcp_types.methods import validate_client_request
from mcp_types.version import (
    HANDSHAKE_PROTOCOL_VERSIONS,
    LATEST_HANDSHAKE_VERSION,
    MODERN_PROTOCOL_VERSIONS,
)
from pydantic import BaseModel, ValidationError

from yool.tools import Call, Operation, Session

log = logging.getLogger("yool.server")

Write = Callable[[bytes], Awaitable[None]]
# Fields a plain `tools/call` carries; a request with any other is the SDK's to judge.
DRAIN_S = 5.0  # at the end of input, how long the calls in flight may take to finish
_PLAIN_PARAMS = frozenset({"name", "arguments", "_meta"})
_ERROR_TEXT = '{"content":[{"type":"text","text":%s}],"isError":true%s}'
_RESULT_TEXT = '{"content":[{"type":"text","text":%s}],"isError":false,"structuredContent":%s%s}'


def fast_operations(ops: Iterable[Operation[Any, Any]]) -> dict[str, Operation[Any, Any]]:
    """The operations the lane serves: those that change nothing and answer at once."""
    return {op.name: op for op in ops if op.read_only and not op.blocking}


class FastLane:
    """Sees every line the client sends; answers the plain read-only `tools/call`s itself.

    `offer(line, write)` is called for each line before the SDK gets it: True means the
    lane took it and will write the answer with `write`. It follows the protocol era the
    way the SDK decides it (the first request: the 2026-07-28 envelope opens a stateless
    connection, anything else the handshake era) and, in the handshake era, takes nothing
    until the client has said `notifications/initialized`.
    """

    def __init__(
        self,
        ops: Mapping[str, Operation[Any, Any]],
        session: Callable[[], Session | None],
        server_info: Mapping[str, Any],
        failure: Callable[[Exception], str | None],
    ) -> None:
        self._ops = ops
        self._session = session
        self._failure = failure
        self._modern_tail = ',"resultType":"complete","_meta":' + json.dumps(
            {SERVER_INFO_META_KEY: dict(server_info)}, separators=(",", ":")
        )
        self._era: str | None = None  # "legacy" | "modern", once the first request came
        self._version: str | None = None  # handshake era: the version `initialize` settles on
        self._ready = False  # handshake era: the client said it is initialized
        self._inflight: dict[Any, asyncio.Task[None]] = {}

    # -- the line --------------------------------------------------------------------

    def offer(self, line: str, write: Write) -> bool:
        try:
            data = json.loads(line)
        except (ValueError, RecursionError):
            return False  # the transport answers it
        if not isinstance(data, dict) or data.get("jsonrpc") != "2.0":
            return False
        method = data.get("method")
        if "id" not in data:
            self._notified(method, data.get("params"))
            return False
        if self._era is None and isinstance(method, str):
            modern = method != "initialize" and _envelope(data.get("params")) is not None
            self._era = "modern" if modern else "legacy"
        if method == "initialize" and self._era == "legacy" and self._version is None:
            self._version = _negotiated(data.get("params"))
        if method != "tools/call":
            return False
        rid = data["id"]
        if isinstance(rid, bool) or not isinstance(rid, int | str) or rid in self._inflight:
            return False
        plan = self._plan(data.get("params"))
        if plan is None:
            return False
        op, args, tail = plan
        session = self._session()
        if session is None:
            return False
        task = asyncio.ensure_future(self._answer(session, op, args, rid, tail, write))
        self._inflight[rid] = task
        task.add_done_callback(lambda _t: self._inflight.pop(rid, None))
        return True

    def _plan(self, params: Any) -> tuple[Operation[Any, Any], BaseModel, str] | None:
        if not isinstance(params, dict) or not _PLAIN_PARAMS.issuperset(params):
            return None
        op = self._ops.get(params.get("name"))  # type: ignore[arg-type]
        arguments = params.get("arguments")
        if op is None or not isinstance(arguments, dict | None):
            return None
        envelope = _envelope(params)
        if self._era == "modern":
            if envelope is None or CLIENT_CAPABILITIES_META_KEY not in envelope:
                return None
            version = envelope.get(PROTOCOL_VERSION_META_KEY)
            if version not in MODERN_PROTOCOL_VERSIONS:
                return None
            tail = self._modern_tail
        elif self._era == "legacy" and self._ready and self._version and envelope is None:
            version, tail = self._version, ""
        else:
            return None
        try:
            validate_client_request("tools/call", version, params)  # the SDK's own check
            args = op.input.model_validate(arguments or {})
        except (ValidationError, KeyError):
            return None  # the SDK answers with its own wording of the error
        return op, args, tail

    def _notified(self, method: Any, params: Any) -> None:
        if method == "notifications/initialized" and self._era == "legacy":
            self._ready = True
        elif method == "notifications/cancelled" and isinstance(params, dict):
            task = self._inflight.get(params.get("requestId"))
            if task is not None:
                task.cancel()  # a cancelled request is never answered

    # -- the answer ------------------------------------------------------------------

    async def _answer(
        self,
        session: Session,
        op: Operation[Any, Any],
        args: BaseModel,
        rid: Any,
        tail: str,
        write: Write,
    ) -> None:
        try:
            result = await op.run(Call(session, client="mcp"), args)
            text = result.model_dump_json(exclude_none=True)
            body = _RESULT_TEXT % (json.dumps(text), text, tail)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            message = self._failure(e)
            if message is None:
                log.exception("tool %r raised an unexpected exception", op.name)
                message = f"Error executing tool {op.name}"
            else:
                log.info("tool %r failed: %r", op.name, message)
                message = f"Error executing tool {op.name}: {message}"
            body = _ERROR_TEXT % (json.dumps(message), tail)
        line = b'{"jsonrpc":"2.0","id":%s,"result":%s}\n' % (_id(rid), body.encode())
        with contextlib.suppress(ConnectionError):  # the client has gone: nobody to tell
            await write(line)

    async def aclose(self) -> None:
        """Let the calls in flight finish (then cancel the stragglers) before the end."""
        tasks = list(self._inflight.values())
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=DRAIN_S)
        for task in pending:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*pending, return_exceptions=True)


def _envelope(params: Any) -> dict[str, Any] | None:
    """The 2026-07-28 per-request envelope (`_meta` naming a protocol version), if any."""
    meta = params.get("_meta") if isinstance(params, dict) else None
    if isinstance(meta, dict) and PROTOCOL_VERSION_META_KEY in meta:
        return meta
    return None


def _negotiated(params: Any) -> str | None:
    """The version the SDK settles a handshake on: the client's if served, else the latest."""
    requested = params.get("protocolVersion") if isinstance(params, dict) else None
    if not isinstance(requested, str):
        return None  # the SDK refuses this initialize; the lane stays out
    return requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION


def _id(rid: int | str) -> bytes:
    return str(rid).encode() if isinstance(rid, int) else json.dumps(rid).encode()
