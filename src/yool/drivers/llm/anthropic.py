"""The Anthropic driver: yool's LLMRequest over the Messages API with the official SDK.

The SDK does auth, headers, HTTP and error decoding; we build the wire body as
plain dicts and post it through the SDK's low-level `post`, skipping the
TypedDict transform and pydantic response models that cost milliseconds of CPU
per call on long histories. Retries belong to yool's resilience layer, so the
SDK's own are off (`max_retries=0`).
"""

from __future__ import annotations

import os
from typing import Any

import anthropic

from yool.drivers.llm import _sdk
from yool.drivers.llm.provider import Provider, ProviderError
from yool.drivers.llm.types import LLMRequest, LLMResponse, Msg, StopReason, ToolCall, Usage

_STOPS: dict[str, StopReason] = {
    "end_turn": "end",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "model_context_window_exceeded": "max_tokens",
    "stop_sequence": "stop_sequence",
    "refusal": "refusal",
    "pause_turn": "end",
}


class AnthropicProvider(Provider):
    """Claude through `anthropic.AsyncAnthropic`; key from the argument or ANTHROPIC_API_KEY."""

    name = "anthropic"

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        default_model: str = "claude-sonnet-4-5",
        *,
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        pool_timeout: float | None = 600.0,
        max_connections: int = 256,
        transport: _sdk.Transport | None = None,
    ) -> None:
        key = api_key or os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise ProviderError("anthropic: no API key (pass api_key= or set ANTHROPIC_API_KEY)")
        self.default_model = default_model
        self.transport: _sdk.Transport = transport or _sdk.default_transport()
        self._key = key
        self._timeout = timeout
        limits = _sdk.timeouts(timeout, connect_timeout, pool_timeout)
        self.client = anthropic.AsyncAnthropic(
            api_key=key,
            base_url=base_url or os.environ.get("ANTHROPIC_BASE_URL") or None,
            max_retries=0,
            timeout=limits,
            http_client=_sdk.http_client("anthropic", self.transport, limits, max_connections),
        )

    def __repr__(self) -> str:
        base = str(self.client.base_url)
        return f"AnthropicProvider(base_url={base!r}, transport={self.transport!r})"

    def build_body(self, request: LLMRequest) -> dict[str, Any]:
        """The Messages API body for `request`, as plain JSON-ready dicts."""
        body: dict[str, Any] = {
            "model": request.model or self.default_model,
            "max_tokens": request.max_tokens,
            "messages": to_messages(request.messages),
        }
        if request.system:
            body["system"] = request.system
        if request.tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.schema}
                for t in request.tools
            ]
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return body

    async def complete(self, request: LLMRequest) -> LLMResponse:
        body = self.build_body(request)
        model = body["model"]
        return await _sdk.post(
            self.client,
            "/v1/messages",
            body,
            lambda data: parse_reply(data, model),
            provider=self.name,
            secret=self._key,
            timeout_s=self._timeout,
        )

    async def aclose(self) -> None:
        await self.client.close()


def to_messages(history: tuple[Msg, ...]) -> list[dict[str, Any]]:
    """yool turns as Messages API turns: tool results (and a user turn right after them)
    share one user message, as the API expects."""
    out: list[dict[str, Any]] = []
    for m in history:
        if m.role == "assistant":
            if not m.tool_calls:
                out.append({"role": "assistant", "content": m.content})
                continue
            blocks: list[dict[str, Any]] = []
            if m.content:
                blocks.append({"type": "text", "text": m.content})
            for c in m.tool_calls:
                blocks.append(
                    {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments}
                )
            out.append({"role": "assistant", "content": blocks})
            continue
        if m.role == "tool":
            block: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": m.tool_call_id or "",
                "content": m.content,
            }
            if m.is_error:
                block["is_error"] = True
        else:
            block = {"type": "text", "text": m.content}
        last = out[-1] if out else None
        if last is not None and last["role"] == "user" and isinstance(last["content"], list):
            last["content"].append(block)
        elif m.role == "tool":
            out.append({"role": "user", "content": [block]})
        else:
            out.append({"role": "user", "content": m.content})
    return out


def parse_reply(data: object, model: str) -> LLMResponse:
    """A Messages API reply as an LLMResponse; anything unexpected is a malformed reply."""
    if not isinstance(data, dict):
        raise _sdk.malformed("anthropic", f"expected a JSON object, got {type(data).__name__}")
    content = data.get("content")
    if not isinstance(content, list):
        raise _sdk.malformed("anthropic", "no 'content' list in the message")
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block["text"]))
        elif kind == "tool_use":
            args = block.get("input")
            calls.append(
                ToolCall(
                    str(block["id"]), str(block["name"]), args if isinstance(args, dict) else {}
                )
            )
    raw_usage = data.get("usage")
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    input_tokens = sum(
        int(usage.get(k) or 0)
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )
    stop = _STOPS.get(str(data.get("stop_reason")), "tool_use" if calls else "end")
    return LLMResponse(
        "".join(texts),
        tuple(calls),
        stop,
        Usage(input_tokens, int(usage.get("output_tokens") or 0)),
        str(data.get("model") or model),
    )
