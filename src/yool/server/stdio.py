"""MCP over stdio, without threads.

The SDK's stdio transport reads and writes through `anyio.wrap_file`: three worker-thread
hand-offs per request (readline, write, flush), and it drops a line it cannot parse
without a word, so a client that sent a malformed request with an id waits forever.
`stdio_streams` serves the same SDK framing over asyncio pipes on private copies of fds
0 and 1 (fd 0 then reads /dev/null and fd 1 writes to stderr, as the SDK arranges, so a
stray print or a child process cannot corrupt the protocol), and answers every line that
is not a JSON-RPC message with a JSON-RPC error. Where stdin or stdout is not a pipe,
socket or terminal (a regular file), it falls back to the SDK's transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import mcp_types as types
from mcp.server.stdio import stdio_server
from pydantic import ValidationError

from yool.server.fastlane import FastLane

MAX_LINE = 32 * 1024 * 1024  # bytes in one JSON-RPC line; a longer one is refused
PARSE_ERROR, INVALID_REQUEST = -32700, -32600


@contextlib.asynccontextmanager
async def stdio_streams(lane: FastLane | None = None) -> AsyncIterator[tuple[Any, Any]]:
    """The SDK's stdio read/write streams, served over asyncio pipes (see above); `lane`
    sees every line first and answers those it takes (`yool.server.fastlane`)."""
    loop = asyncio.get_running_loop()
    wire_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    wire_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    reader = asyncio.StreamReader(limit=MAX_LINE)
    in_file = os.fdopen(wire_in, "rb", buffering=0)
    out_file = os.fdopen(wire_out, "wb", buffering=0)
    read_transport: asyncio.BaseTransport | None = None
    try:
        read_transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), in_file
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, out_file
        )
    except ValueError:  # a regular file: the SDK's threaded transport reads it fine
        if read_transport is not None:
            read_transport.close()
        for file in (in_file, out_file):
            with contextlib.suppress(OSError):
                file.close()
        async with stdio_server() as streams:
            yield streams
        return
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    saved = _divert_std_fds()
    try:
        lines = _LineReader(reader, writer, lane)
        async with stdio_server(lines, _LineWriter(writer)) as streams:  # type: ignore[arg-type]
            yield streams
    finally:
        _restore_std_fds(saved)
        transport.close()
        read_transport.close()


def _divert_std_fds() -> tuple[int, int]:
    """Point fd 0 at /dev/null and fd 1 at stderr; the originals, to restore."""
    saved = (os.dup(0), os.dup(1))
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    return saved


def _restore_std_fds(saved: tuple[int, int]) -> None:
    with contextlib.suppress(Exception):  # what a handler printed goes to stderr, not the wire
        sys.stdout.flush()
    for fd, original in enumerate(saved):
        with contextlib.suppress(OSError):
            os.dup2(original, fd)
        with contextlib.suppress(OSError):
            os.close(original)


class _LineWriter:
    """The write half `stdio_server` wants: `write` a whole line, then `flush`."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> int:
        self._writer.write(text.encode("utf-8"))
        return len(text)

    async def flush(self) -> None:
        await self._writer.drain()


class _LineReader:
    """The read half: yields JSON-RPC message lines, answers every other line itself."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        lane: FastLane | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._lane = lane

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        while True:
            try:
                raw = await self._reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:
                raw = e.partial  # the last line, without its newline
                if not raw:
                    if self._lane is not None:
                        await self._lane.aclose()  # answer what it took before the end
                    return
            except asyncio.LimitOverrunError as e:
                await self._skip_line(e.consumed)
                self._refuse(None, INVALID_REQUEST, f"line longer than {MAX_LINE} bytes")
                continue
            line = raw.decode("utf-8", "replace")
            if not line.strip():
                continue
            if self._lane is not None and self._lane.offer(line, self._send):
                continue
            problem = _invalid(line)
            if problem is None:
                yield line
            else:
                self._refuse(*problem)

    async def _send(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def _skip_line(self, consumed: int) -> None:
        """Drop the rest of an over-long line."""
        while True:
            try:
                await self._reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as e:
                await self._reader.readexactly(e.consumed)
            except asyncio.IncompleteReadError:
                return

    def _refuse(self, rid: Any, code: int, message: str) -> None:
        error = {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}
        self._writer.write(json.dumps(error).encode() + b"\n")


def _invalid(line: str) -> tuple[Any, int, str] | None:
    """None for a valid JSON-RPC message, else (id to answer, error code, why)."""
    try:
        types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        return None
    except ValidationError as e:
        errors = e.errors(include_input=False, include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        return None, PARSE_ERROR, f"Parse error: {errors[0]['msg']}"
    try:
        data = json.loads(line)
    except (ValueError, RecursionError):
        return None, PARSE_ERROR, "Parse error: not JSON"
    rid = data.get("id") if isinstance(data, dict) else None
    if not isinstance(rid, str | int) or isinstance(rid, bool):
        rid = None
    if not isinstance(data, dict):
        return None, INVALID_REQUEST, "Invalid Request: a message is one JSON object"
    if data.get("jsonrpc") != "2.0":
        return rid, INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"'
    if "method" not in data and "result" not in data and "error" not in data:
        return rid, INVALID_REQUEST, 'Invalid Request: no "method"'
    where = ".".join(str(part) for part in errors[0]["loc"]) if errors else ""
    return rid, INVALID_REQUEST, f"Invalid Request: {where} {errors[0]['msg'] if errors else ''}"
