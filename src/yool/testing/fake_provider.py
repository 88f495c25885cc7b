"""A fake LLM provider: an HTTP/1.1 server on 127.0.0.1 speaking the vendors' wire formats.

Tests and benchmarks point the real `anthropic` and `openai` SDKs at it, so the
code under test is exercised end to end over real sockets. It speaks the
Anthropic Messages API, OpenAI Chat Completions and the OpenAI Responses API
(plain JSON and SSE streams), plays a `Script` of turns per conversation, and
injects faults on demand: latency, 429/529/5xx, hung requests, malformed
bodies, and rate limiting above a concurrency level.

It is built on asyncio streams directly (no framework) so that a thousand
concurrent requests measure the client, not the server. Every request is
recorded without its credentials: `x-api-key` and `authorization` headers are
dropped before anything is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from yool.drivers.llm.types import LLMResponse

ANTHROPIC_PATH = "/v1/messages"
CHAT_PATH = "/v1/chat/completions"
RESPONSES_PATH = "/v1/responses"
_SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "api-key"})
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    529: "Overloaded",
}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass(frozen=True, slots=True)
class Turn:
    """One scripted model reply: text, tool calls as (name, arguments), optional usage."""

    text: str = ""
    tool_calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    usage: tuple[int, int] | None = None  # (input_tokens, output_tokens); None: estimated

    @classmethod
    def say(
        cls,
        text: str = "",
        *calls: tuple[str, dict[str, Any]],
        usage: tuple[int, int] | None = None,
    ) -> Turn:
        return cls(text, tuple((n, dict(a)) for n, a in calls), usage)


@dataclass(slots=True)
class Recorded:
    """One request as the fake saw it, minus credentials."""

    n: int  # 1-based arrival number across all paths
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None if the body was not JSON
    position: int = 0  # assistant turns already in the conversation


TurnLike = Turn | LLMResponse | str
Responder = Callable[[Recorded], TurnLike]


def _as_turn(value: TurnLike) -> Turn:
    if isinstance(value, Turn):
        return value
    if isinstance(value, str):
        return Turn(value)
    usage = (value.usage.input_tokens, value.usage.output_tokens) if value.usage.total else None
    return Turn(value.text, tuple((c.name, dict(c.arguments)) for c in value.tool_calls), usage)


class Script:
    """Turns played in order per conversation: the reply to a request is the turn at the
    conversation's position (its count of assistant turns), so concurrent agents each
    walk their own copy. A callable turn, or `respond=`, computes the reply from the request.
    """

    def __init__(
        self,
        turns: Iterable[TurnLike | Responder] = (),
        *,
        loop: bool = False,
        respond: Responder | None = None,
    ) -> None:
        self.turns = list(turns)
        self.loop = loop
        self.respond = respond

    def turn_for(self, request: Recorded) -> Turn | None:
        """The reply, or None when the script has run out (the fake answers 400)."""
        if self.respond is not None:
            return _as_turn(self.respond(request))
        if not self.turns:
            return Turn("Done.")
        index = request.position
        if index >= len(self.turns):
            if not self.loop:
                return None
            index = len(self.turns) - 1
        turn = self.turns[index]
        return _as_turn(turn(request) if callable(turn) else turn)


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do instead of (or before) answering normally."""

    status: int | None = None  # answer with this error status
    retry_after: str | float | None = None  # Retry-After header value (seconds or HTTP date)
    message: str = "injected fault"
    hang: bool = False  # hold the connection open and never answer
    malformed: Literal["json", "fields"] | None = None  # invalid JSON, or JSON missing fields
    latency: float = 0.0  # extra seconds before answering

    @classmethod
    def rate_limited(cls, retry_after: str | float | None = 1) -> Fault:
        return cls(status=429, retry_after=retry_after, message="rate limited")

    @classmethod
    def overloaded(cls) -> Fault:
        return cls(status=529, message="Overloaded")

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        return cls(status=status, message="internal error")

    @classmethod
    def timeout(cls) -> Fault:
        return cls(hang=True)

    @classmethod
    def invalid_json(cls) -> Fault:
        return cls(malformed="json")

    @classmethod
    def missing_fields(cls) -> Fault:
        return cls(malformed="fields")

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        return cls(latency=seconds)


@dataclass(slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


class FakeProvider:
    """The fake server. `async with FakeProvider(script) as fake:` then point a client at
    `fake.url` (no `/v1` suffix for Anthropic; `fake.openai_url` has it for OpenAI).

    Faults: `fault` applies to every request, `faults[n]` to the n-th (1-based), and
    `fault_for(recorded)` may decide per request; `latency` is seconds or a function of n;
    `rate_limit_above=N` answers 429 whenever more than N requests are in flight.
    """

    def __init__(
        self,
        script: Script | Iterable[TurnLike | Responder] | None = None,
        *,
        fault: Fault | None = None,
        faults: Mapping[int, Fault] | None = None,
        fault_for: Callable[[Recorded], Fault | None] | None = None,
        latency: float | Callable[[int], float] = 0.0,
        rate_limit_above: int | None = None,
        retry_after: float = 1.0,
        record: bool = True,
    ) -> None:
        self.script = script if isinstance(script, Script) else Script(script or ())
        self.fault = fault
        self.faults: dict[int, Fault] = dict(faults or {})
        self.fault_for = fault_for
        self.latency = latency
        self.rate_limit_above = rate_limit_above
        self.retry_after = retry_after
        self.record = record
        self.requests: list[Recorded] = []
        self.counts: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.rate_limited = 0
        self.connections = 0  # TCP connections accepted (keep-alive keeps this low)
        self._arrivals = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    async def start(self) -> FakeProvider:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, backlog=4096, limit=2**22
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)

    async def __aenter__(self) -> FakeProvider:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @classmethod
    def start_in_thread(cls, *args: Any, **kwargs: Any) -> ThreadedFakeProvider:
        """Run a fake on its own event loop in a daemon thread (for subprocess users)."""
        return ThreadedFakeProvider(cls(*args, **kwargs))

    # -- introspection ---------------------------------------------------------------------

    def count(self, path: str | None = None) -> int:
        """Requests received, on one path or all."""
        return self.counts[path] if path is not None else sum(self.counts.values())

    def reset(self) -> None:
        self.requests.clear()
        self.counts.clear()
        self.rate_limited = 0
        self.max_in_flight = 0

    # -- HTTP ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, version = lines[0].split(" ", 2)
                except ValueError:
                    return
                headers: dict[str, str] = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                try:
                    if headers.get("transfer-encoding", "").lower() == "chunked":
                        raw = await _read_chunked(reader)
                    else:
                        raw = await reader.readexactly(int(headers.get("content-length") or 0))
                except (asyncio.IncompleteReadError, ValueError, ConnectionError):
                    return
                keep_alive = (
                    version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                )
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    reply = await self._handle(method, target.split("?", 1)[0], headers, raw)
                finally:
                    self.in_flight -= 1
                if reply.hang:
                    while await reader.read(65536):
                        pass
                    return
                extra = "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
                status_line = f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Error')}\r\n"
                writer.write(
                    (
                        f"{status_line}content-type: {reply.content_type}\r\n"
                        f"content-length: {len(reply.body)}\r\n{extra}"
                        f"connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
                    ).encode("latin-1")
                    + reply.body
                )
                await writer.drain()
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> _Reply:
        n = next(self._arrivals)
        self.counts[path] += 1
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        rec = Recorded(
            n,
            method,
            path,
            {k: v for k, v in headers.items() if k not in _SECRET_HEADERS},
            body,
            _position(path, body),
        )
        if self.record:
            self.requests.append(rec)
        anthropic = path == ANTHROPIC_PATH

        fault = self.faults.get(n)
        if fault is None and self.fault_for is not None:
            fault = self.fault_for(rec)
        if fault is None:
            fault = self.fault
        if self.rate_limit_above is not None and self.in_flight > self.rate_limit_above:
            self.rate_limited += 1
            return _error(
                429,
                "too many concurrent requests",
                anthropic,
                {"retry-after": _fmt(self.retry_after)},
            )
        delay = self.latency(n) if callable(self.latency) else self.latency
        if fault is not None:
            delay += fault.latency
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is not None:
            if fault.hang:
                return _Reply(0, b"", hang=True)
            if fault.status is not None:
                extra = (
                    {} if fault.retry_after is None else {"retry-after": _fmt(fault.retry_after)}
                )
                return _error(fault.status, fault.message, anthropic, extra)
        if method != "POST" or path not in (ANTHROPIC_PATH, CHAT_PATH, RESPONSES_PATH):
            return _error(404, f"no route for {method} {path}", anthropic)
        if not isinstance(body, dict):
            return _error(400, "request body is not a JSON object", anthropic)
        if fault is not None and fault.malformed == "json":
            return _Reply(200, b'{"id": "broken", "content": [')
        if fault is not None and fault.malformed == "fields":
            stub = {"id": "msg_broken", "type": "message"} if anthropic else {"id": "broken"}
            return _Reply(200, json.dumps(stub).encode())
        turn = self.script.turn_for(rec)
        if turn is None:
            return _error(
                400,
                f"fake script has {len(self.script.turns)} turn(s); turn {rec.position + 1} "
                "was asked for",
                anthropic,
            )
        model = str(body.get("model") or "fake-model")
        usage = turn.usage or (
            max(1, len(raw) // 4),
            max(1, len(turn.text) // 4 + 8 * len(turn.tool_calls)),
        )
        stream = bool(body.get("stream"))
        if path == ANTHROPIC_PATH:
            return _anthropic(n, model, turn, usage, stream)
        if path == CHAT_PATH:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return _chat(n, model, turn, usage, stream, include_usage)
        return _responses(n, model, turn, usage, stream)


class ThreadedFakeProvider:
    """A FakeProvider on its own loop in a daemon thread; `.url`, `.fake`, `.stop()`."""

    def __init__(self, fake: FakeProvider) -> None:
        self.fake = fake
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(fake.start())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(fake.stop())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="yool-fake-provider", daemon=True)
        self._thread.start()
        ready.wait(10)

    @property
    def url(self) -> str:
        return self.fake.url

    @property
    def openai_url(self) -> str:
        return self.fake.openai_url

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> ThreadedFakeProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- helpers ---------------------------------------------------------------------------------


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _fmt(value: str | float) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


def _position(path: str, body: Any) -> int:
    """Assistant turns already in the conversation: the script index to answer with."""
    if not isinstance(body, dict):
        return 0
    if path == RESPONSES_PATH:
        items = body.get("input")
        if not isinstance(items, list):
            return 0
        turns, inside = 0, False
        for item in items:
            assistant = isinstance(item, dict) and (
                item.get("role") == "assistant" or item.get("type") == "function_call"
            )
            if assistant and not inside:
                turns += 1
            inside = assistant
        return turns
    messages = body.get("messages")
    if not isinstance(messages, list):
        return 0
    return sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _error(
    status: int, message: str, anthropic: bool, headers: dict[str, str] | None = None
) -> _Reply:
    if anthropic:
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    else:
        kind = "rate_limit_exceeded" if status == 429 else "invalid_request_error"
        if status >= 500:
            kind = "server_error"
        body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return _Reply(status, _dumps(body), headers=headers or {})


def _sse(events: Iterable[tuple[str | None, Any]]) -> _Reply:
    out = []
    for name, data in events:
        payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        out.append(f"event: {name}\ndata: {payload}\n\n" if name else f"data: {payload}\n\n")
    return _Reply(200, "".join(out).encode(), "text/event-stream; charset=utf-8")


def _anthropic(n: int, model: str, turn: Turn, usage: tuple[int, int], stream: bool) -> _Reply:
    blocks: list[dict[str, Any]] = []
    if turn.text:
        blocks.append({"type": "text", "text": turn.text})
    for i, (name, args) in enumerate(turn.tool_calls):
        blocks.append({"type": "tool_use", "id": f"toolu_{n}_{i}", "name": name, "input": args})
    stop = "tool_use" if turn.tool_calls else "end_turn"
    message: dict[str, Any] = {
        "id": f"msg_{n}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }
    if not stream:
        return _Reply(200, _dumps(message))
    start = dict(message, content=[], stop_reason=None)
    start["usage"] = {"input_tokens": usage[0], "output_tokens": 1}
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            text = block["text"]
            half = max(1, len(text) // 2)
            deltas = [
                {"type": "text_delta", "text": part} for part in (text[:half], text[half:]) if part
            ]
        else:
            opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            raw = json.dumps(block["input"])
            half = max(1, len(raw) // 2)
            deltas = [
                {"type": "input_json_delta", "partial_json": part}
                for part in (raw[:half], raw[half:])
                if part
            ]
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            )
        )
        for delta in deltas:
            events.append(
                (
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            )
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": usage[1]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    return _sse(events)


def _chat(
    n: int, model: str, turn: Turn, usage: tuple[int, int], stream: bool, include_usage: bool
) -> _Reply:
    created = int(time.time())
    calls: list[dict[str, Any]] = [
        {
            "id": f"call_{n}_{i}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)},
        }
        for i, (name, args) in enumerate(turn.tool_calls)
    ]
    finish = "tool_calls" if calls else "stop"
    usage_json = {
        "prompt_tokens": usage[0],
        "completion_tokens": usage[1],
        "total_tokens": usage[0] + usage[1],
    }
    if not stream:
        message: dict[str, Any] = {"role": "assistant", "content": turn.text or None}
        if calls:
            message["tool_calls"] = calls
        return _Reply(
            200,
            _dumps(
                {
                    "id": f"chatcmpl-{n}",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
                    ],
                    "usage": usage_json,
                }
            ),
        )

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": f"chatcmpl-{n}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    events: list[tuple[str | None, Any]] = [(None, chunk({"role": "assistant", "content": ""}))]
    if turn.text:
        half = max(1, len(turn.text) // 2)
        for part in (turn.text[:half], turn.text[half:]):
            if part:
                events.append((None, chunk({"content": part})))
    for i, call in enumerate(calls):
        fn = call["function"]
        opening: dict[str, Any] = {"index": i, "id": call["id"], "type": "function"}
        opening["function"] = {"name": fn["name"], "arguments": ""}
        events.append((None, chunk({"tool_calls": [opening]})))
        events.append(
            (
                None,
                chunk({"tool_calls": [{"index": i, "function": {"arguments": fn["arguments"]}}]}),
            )
        )
    events.append((None, chunk({}, finish)))
    if include_usage:
        last = chunk({})
        last["choices"] = []
        last["usage"] = usage_json
        events.append((None, last))
    events.append((None, "[DONE]"))
    return _sse(events)


def _responses(n: int, model: str, turn: Turn, usage: tuple[int, int], stream: bool) -> _Reply:
    output: list[dict[str, Any]] = []
    if turn.text:
        output.append(
            {
                "type": "message",
                "id": f"msg_{n}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": turn.text, "annotations": []}],
            }
        )
    for i, (name, args) in enumerate(turn.tool_calls):
        output.append(
            {
                "type": "function_call",
                "id": f"fc_{n}_{i}",
                "call_id": f"call_{n}_{i}",
                "name": name,
                "arguments": json.dumps(args),
                "status": "completed",
            }
        )
    response = {
        "id": f"resp_{n}",
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": usage[0],
            "output_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }
    if not stream:
        return _Reply(200, _dumps(response))
    seq = itertools.count()
    pending = dict(response, status="in_progress", output=[])
    events: list[tuple[str | None, Any]] = [
        (
            "response.created",
            {"type": "response.created", "sequence_number": next(seq), "response": pending},
        )
    ]
    for index, item in enumerate(output):
        is_message = item["type"] == "message"
        opening = dict(item, content=[]) if is_message else dict(item, arguments="")
        opening["status"] = "in_progress"
        events.append(
            (
                "response.output_item.added",
                {
                    "type": "response.output_item.added",
                    "sequence_number": next(seq),
                    "output_index": index,
                    "item": opening,
                },
            )
        )
        where = {"item_id": item["id"], "output_index": index}
        if is_message:
            part = {"type": "output_text", "text": "", "annotations": []}
            events.append(
                (
                    "response.content_part.added",
                    {
                        "type": "response.content_part.added",
                        "sequence_number": next(seq),
                        **where,
                        "content_index": 0,
                        "part": part,
                    },
                )
            )
            events.append(
                (
                    "response.output_text.delta",
                    {
                        "type": "response.output_text.delta",
                        "sequence_number": next(seq),
                        **where,
                        "content_index": 0,
                        "delta": turn.text,
                        "logprobs": [],
                    },
                )
            )
            events.append(
                (
                    "response.output_text.done",
                    {
                        "type": "response.output_text.done",
                        "sequence_number": next(seq),
                        **where,
                        "content_index": 0,
                        "text": turn.text,
                        "logprobs": [],
                    },
                )
            )
        else:
            events.append(
                (
                    "response.function_call_arguments.delta",
                    {
                        "type": "response.function_call_arguments.delta",
                        "sequence_number": next(seq),
                        **where,
                        "delta": item["arguments"],
                    },
                )
            )
        events.append(
            (
                "response.output_item.done",
                {
                    "type": "response.output_item.done",
                    "sequence_number": next(seq),
                    "output_index": index,
                    "item": item,
                },
            )
        )
    events.append(
        (
            "response.completed",
            {"type": "response.completed", "sequence_number": next(seq), "response": response},
        )
    )
    return _sse(events)


async def _serve_forever(latency: float, rate_limit_above: int | None, retry_after: float) -> None:
    async with FakeProvider(
        latency=latency, rate_limit_above=rate_limit_above, retry_after=retry_after, record=False
    ) as fake:
        print(fake.url, flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    """`python -m yool.testing`: serve on loopback until killed; prints the URL."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument(
        "--rate-limit-above", type=int, default=None, help="answer 429 above N in flight"
    )
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After of a 429")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args.latency, args.rate_limit_above, args.retry_after))


class FakeProcess:
    """The fake provider in a child process, so benchmarks measure the client alone.

    Its CPU time is readable (`cpu()`) for figures about the fake itself.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        rate_limit_above: int | None = None,
        retry_after: float = 1.0,
    ) -> None:
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "yool.testing", "--latency", str(latency)]
        cmd += ["--retry-after", str(retry_after)]
        if rate_limit_above is not None:
            cmd += ["--rate-limit-above", str(rate_limit_above)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url:
            self.proc.kill()
            raise RuntimeError("the fake provider did not start (see its stderr above)")
        self.openai_url = self.url + "/v1"

    def cpu(self) -> float:
        """Seconds of CPU the fake has used (user + system)."""
        import os

        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)

    def __enter__(self) -> FakeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    main()
