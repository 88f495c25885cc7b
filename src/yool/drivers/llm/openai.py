"""The OpenAI driver: yool's LLMRequest over Chat Completions or Responses, official SDK.

Works against any OpenAI-compatible `base_url` (Ollama, vLLM, LM Studio...).
As with Anthropic, the wire body is built as plain dicts and posted through the
SDK's low-level `post`: the SDK's TypedDict transform costs ~15 ms of CPU per
call at fifty messages, which an agent pays on every step. The SDK keeps auth,
headers, HTTP and error decoding; its retries are off (yool retries).
"""

from __future__ import annotations

import json
import os
from typing import Any, Literal

import openai

from yool.drivers.llm import _sdk
from yool.drivers.llm.provider import Provider, ProviderError
from yool.drivers.llm.types import LLMRequest, LLMResponse, Msg, StopReason, ToolCall, Usage

Api = Literal["chat", "responses"]

_FINISH: dict[str, StopReason] = {
    "stop": "end",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "length": "max_tokens",
    "content_filter": "refusal",
}


class OpenAIProvider(Provider):
    """GPT (or any compatible server) through `openai.AsyncOpenAI`; key from the argument
    or OPENAI_API_KEY, base URL from the argument or OPENAI_BASE_URL."""

    name = "openai"

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        default_model: str = "gpt-4.1-mini",
        *,
        api: Api = "chat",
        timeout: float = 600.0,
        connect_timeout: float = 10.0,
        pool_timeout: float | None = 600.0,
        max_connections: int = 256,
        transport: _sdk.Transport | None = None,
        max_tokens_param: str | None = None,
    ) -> None:
        base = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if base is None:
                raise ProviderError("openai: no API key (pass api_key= or set OPENAI_API_KEY)")
            key = "none"  # local OpenAI-compatible servers often take no key
        if api not in ("chat", "responses"):
            raise ProviderError(f"openai: api must be 'chat' or 'responses', not {api!r}")
        self.api: Api = api
        self.default_model = default_model
        self.transport: _sdk.Transport = transport or _sdk.default_transport()
        self._key = key
        self._timeout = timeout
        limits = _sdk.timeouts(timeout, connect_timeout, pool_timeout)
        self.client = openai.AsyncOpenAI(
            api_key=key,
            base_url=base,
            max_retries=0,
            timeout=limits,
            http_client=_sdk.http_client("openai", self.transport, limits, max_connections),
        )
        # OpenAI's own API wants max_completion_tokens; compatible servers know max_tokens.
        official = self.client.base_url.host == "api.openai.com"
        self.max_tokens_param = max_tokens_param or (
            "max_completion_tokens" if official else "max_tokens"
        )

    def __repr__(self) -> str:
        return (
            f"OpenAIProvider(base_url={str(self.client.base_url)!r}, api={self.api!r}, "
            f"transport={self.transport!r})"
        )

    def build_body(self, request: LLMRequest) -> dict[str, Any]:
        """The wire body for `request` in the configured API, as plain dicts."""
        model = request.model or self.default_model
        body: dict[str, Any]
        if self.api == "chat":
            body = {"model": model, "messages": chat_messages(request.system, request.messages)}
            body[self.max_tokens_param] = request.max_tokens
            if request.tools:
                body["tools"] = [
                    {
                        "type": "function",
                        "function": {
                            "name": t.name,
                            "description": t.description,
                            "parameters": t.schema,
                        },
                    }
                    for t in request.tools
                ]
        else:
            body = {
                "model": model,
                "input": responses_input(request.messages),
                "max_output_tokens": request.max_tokens,
                "store": False,
            }
            if request.system:
                body["instructions"] = request.system
            if request.tools:
                body["tools"] = [
                    {
                        "type": "function",
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.schema,
                        "strict": False,
                    }
                    for t in request.tools
                ]
        if request.temperature is not None:
            body["temperature"] = request.temperature
        return body

    async def complete(self, request: LLMRequest) -> LLMResponse:
        body = self.build_body(request)
        model = body["model"]
        chat = self.api == "chat"
        return await _sdk.post(
            self.client,
            "/chat/completions" if chat else "/responses",
            body,
            (lambda data: parse_chat(data, model))
            if chat
            else (lambda data: parse_responses(data, model)),
            provider=self.name,
            secret=self._key,
            timeout_s=self._timeout,
        )

    async def aclose(self) -> None:
        await self.client.close()


def chat_messages(system: str, history: tuple[Msg, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    for m in history:
        if m.role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": m.content or None}
            if m.tool_calls:
                msg["tool_calls"] = [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                    }
                    for c in m.tool_calls
                ]
            out.append(msg)
        elif m.role == "tool":
            content = f"[error] {m.content}" if m.is_error else m.content
            out.append({"role": "tool", "tool_call_id": m.tool_call_id or "", "content": content})
        else:
            out.append({"role": "user", "content": m.content})
    return out


def responses_input(history: tuple[Msg, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in history:
        if m.role == "assistant":
            if m.content or not m.tool_calls:
                out.append({"role": "assistant", "content": m.content})
            for c in m.tool_calls:
                out.append(
                    {
                        "type": "function_call",
                        "call_id": c.id,
                        "name": c.name,
                        "arguments": json.dumps(c.arguments),
                    }
                )
        elif m.role == "tool":
            content = f"[error] {m.content}" if m.is_error else m.content
            out.append(
                {"type": "function_call_output", "call_id": m.tool_call_id or "", "output": content}
            )
        else:
            out.append({"role": "user", "content": m.content})
    return out


def _arguments(raw: object) -> dict[str, Any]:
    """Tool arguments; a model's invalid JSON is kept for the agent to see, not raised."""
    if isinstance(raw, dict):
        return raw
    if not raw:
        return {}
    try:
        value = json.loads(str(raw))
    except ValueError:
        return {"_raw_arguments": str(raw)}
    return value if isinstance(value, dict) else {"_raw_arguments": str(raw)}


def _usage(raw: object, prompt: str, completion: str) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    return Usage(int(raw.get(prompt) or 0), int(raw.get(completion) or 0))


def parse_chat(data: object, model: str) -> LLMResponse:
    if not isinstance(data, dict):
        raise _sdk.malformed("openai", f"expected a JSON object, got {type(data).__name__}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _sdk.malformed("openai", "no 'choices' in the completion")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise _sdk.malformed("openai", "no 'message' in the first choice")
    calls = tuple(
        ToolCall(
            str(c["id"]), str(c["function"]["name"]), _arguments(c["function"].get("arguments"))
        )
        for c in message.get("tool_calls") or ()
    )
    finish = str(choices[0].get("finish_reason"))
    stop: StopReason = "tool_use" if calls else _FINISH.get(finish, "end")
    if message.get("refusal") and not message.get("content"):
        return LLMResponse(
            str(message["refusal"]),
            calls,
            "refusal",
            _usage(data.get("usage"), "prompt_tokens", "completion_tokens"),
            model,
        )
    return LLMResponse(
        str(message.get("content") or ""),
        calls,
        stop,
        _usage(data.get("usage"), "prompt_tokens", "completion_tokens"),
        str(data.get("model") or model),
    )


def parse_responses(data: object, model: str) -> LLMResponse:
    if not isinstance(data, dict):
        raise _sdk.malformed("openai", f"expected a JSON object, got {type(data).__name__}")
    output = data.get("output")
    if not isinstance(output, list):
        raise _sdk.malformed("openai", "no 'output' list in the response")
    texts: list[str] = []
    calls: list[ToolCall] = []
    refused = False
    for item in output:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text":
                    texts.append(str(part.get("text") or ""))
                elif part.get("type") == "refusal":
                    texts.append(str(part.get("refusal") or ""))
                    refused = True
        elif kind == "function_call":
            calls.append(
                ToolCall(str(item["call_id"]), str(item["name"]), _arguments(item.get("arguments")))
            )
    details = data.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    stop: StopReason = "end"
    if calls:
        stop = "tool_use"
    elif refused:
        stop = "refusal"
    elif reason == "max_output_tokens":
        stop = "max_tokens"
    elif reason == "content_filter":
        stop = "refusal"
    return LLMResponse(
        "".join(texts),
        tuple(calls),
        stop,
        _usage(data.get("usage"), "input_tokens", "output_tokens"),
        str(data.get("model") or model),
    )
