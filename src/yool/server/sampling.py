"""MCP sampling for sub-agents: their LLM calls answered by the host assistant's own model.

The `sampling` provider (`yool.drivers.llm.sampling`) calls one callback per request; this
module is that callback. It translates an `LLMRequest` to `sampling/createMessage` and the
client's reply back to an `LLMResponse`. Tools travel as MCP tools when the client declares
`sampling.tools`; otherwise tool calls and results are folded into plain text turns and the
model is offered no tools, so it answers in words.

The request goes over the client connection of the latest tool call that declared sampling,
as a server-to-client request (the handshake era, 2025-11-25 and before). The stateless era
(2026-07-28) has no server-to-client requests outside a tool call's own input-required
round, so there the sampling provider is not offered and `spawn` says so.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import mcp_types as types

from yool.drivers.llm.provider import ProviderError
from yool.drivers.llm.types import LLMRequest, LLMResponse, Msg, StopReason, ToolCall, Usage
from yool.kernel.context import estimate_tokens

# Sampling is how the handshake era does this; the SDK's warning about the stateless era
# says nothing our callers can act on.
warnings.filterwarnings("ignore", message="The sampling capability is deprecated", module=__name__)

STATELESS_ERA = "2026-07-28"
_STOPS: dict[str, StopReason] = {
    "endTurn": "end",
    "toolUse": "tool_use",
    "maxTokens": "max_tokens",
    "stopSequence": "stop_sequence",
}


def handshake_era(version: str | None) -> bool:
    """True for protocol versions that allow server-to-client requests at any time."""
    return version is not None and version < STATELESS_ERA


class HostSampler:
    """The callback of the sampling provider, bound to one client connection (push mode)."""

    def __init__(self, session: Any, tools: bool) -> None:
        self.session = session  # mcp.server.session.ServerSession
        self.tools = tools  # the client declared sampling.tools

    async def __call__(self, request: LLMRequest) -> LLMResponse:
        params = sample_params(request, self.tools)
        result = await self.session.create_message(
            params.messages,
            max_tokens=params.max_tokens,
            system_prompt=params.system_prompt,
            temperature=params.temperature,
            model_preferences=params.model_preferences,
            tools=params.tools,
        )
        return response_of(result, request)


def sample_params(request: LLMRequest, tools: bool) -> types.CreateMessageRequestParams:
    """`request` as a `sampling/createMessage`; tools only if the client can take them."""
    with_tools = tools and bool(request.tools)
    return types.CreateMessageRequestParams(
        messages=_messages(request.messages, with_tools),
        max_tokens=request.max_tokens,
        system_prompt=request.system or None,
        temperature=request.temperature,
        model_preferences=(
            types.ModelPreferences(hints=[types.ModelHint(name=request.model)])
            if request.model
            else None
        ),
        tools=(
            [
                types.Tool(name=t.name, description=t.description, input_schema=t.schema)
                for t in request.tools
            ]
            if with_tools
            else None
        ),
    )


def _messages(history: tuple[Msg, ...], with_tools: bool) -> list[types.SamplingMessage]:
    out: list[types.SamplingMessage] = []
    for m in history:
        if m.role == "assistant":
            blocks: list[Any] = (
                [types.TextContent(type="text", text=m.content)] if m.content else []
            )
            for c in m.tool_calls:
                if with_tools:
                    blocks.append(
                        types.ToolUseContent(
                            type="tool_use", id=c.id, name=c.name, input=c.arguments
                        )
                    )
                else:
                    args = json.dumps(c.arguments, ensure_ascii=False)
                    blocks.append(types.TextContent(type="text", text=f"[called {c.name} {args}]"))
            if blocks:
                out.append(types.SamplingMessage(role="assistant", content=blocks))
        elif m.role == "tool":
            if with_tools and m.tool_call_id:
                block: Any = types.ToolResultContent(
                    type="tool_result",
                    tool_use_id=m.tool_call_id,
                    content=[types.TextContent(type="text", text=m.content)],
                    is_error=m.is_error or None,
                )
            else:
                block = types.TextContent(type="text", text=f"[tool result] {m.content}")
            out.append(types.SamplingMessage(role="user", content=[block]))
        elif m.content:
            out.append(
                types.SamplingMessage(
                    role="user", content=types.TextContent(type="text", text=m.content)
                )
            )
    return out


def response_of(result: Any, request: LLMRequest) -> LLMResponse:
    """The client's sampling result as the agent's `LLMResponse`."""
    content = result.content if isinstance(result.content, list) else [result.content]
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        kind = getattr(block, "type", None)
        if kind == "text":
            texts.append(block.text)
        elif kind == "tool_use":
            calls.append(ToolCall(block.id, block.name, dict(block.input or {})))
        else:
            raise ProviderError(f"sampling: the client answered with {kind!r} content, not text")
    stop = _STOPS.get(str(result.stop_reason), "tool_use" if calls else "end")
    text = "".join(texts)
    # The host does not report usage: estimate it, so token budgets still bind.
    prompt = estimate_tokens(request.system) + sum(
        estimate_tokens(m.content) + 4 for m in request.messages
    )
    usage = Usage(prompt, estimate_tokens(text) + 8 * len(calls))
    return LLMResponse(text, tuple(calls), stop, usage, model=result.model or "host")
