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
from mcp.server.mcpserver import Context

from yool.drivers.llm.provider import ProviderError
from yool.drivers.llm.types import LLMRequest, LLMResponse, Msg, StopReason, ToolCall, Usage
from yool.kernel.context import estimate_tokens
from yool.tools import Session

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


# -- offering it to the session, per call ----------------------------------------------


def note_client(ctx: Context, session: Session) -> bool:
    """Offer the sampling provider while the latest caller is a client that can sample.

    In the handshake era yool asks the client directly (push); in the stateless era the
    requests wait in `session.host` for the client's next blocking call (pull). True in
    pull mode.
    """
    caps = ctx.client_capabilities
    sampling = caps.sampling if caps is not None else None
    if sampling is None:
        session.sampling.callback = None
        return False
    if not handshake_era(ctx.protocol_version):
        session.sampling.callback = session.host.ask
        session.host.with_tools = sampling.tools is not None
        return True
    current = session.sampling.callback
    if not isinstance(current, HostSampler) or current.session is not ctx.session:
        session.sampling.callback = HostSampler(ctx.session, tools=sampling.tools is not None)
    return False


MAX_INPUT_ROUNDS = 8  # the SDK client gives up after 10; stay under and return status instead


def take_answers(ctx: Context, session: Session) -> None:
    """Deliver the client's sampling answers carried by this retry."""
    answers = ctx.input_responses or {}
    for rid, answer in answers.items():
        entry = session.host.pending.get(rid)
        if entry is None:
            continue
        try:
            session.host.answer(rid, response_of(answer, entry[0]))
        except Exception as e:  # a malformed answer fails that agent's call, not the server
            session.host.answer(rid, f"{type(e).__name__}: {str(e)[:200]}")


def ask_host(ctx: Context, session: Session, result: Any) -> Any:
    """The operation's result, or "input required" carrying the pending sampling requests."""
    state = ctx.request_state or ""
    rounds = int(state) if state.isdigit() else 0
    pending = {rid: entry for rid, entry in session.host.pending.items() if not entry[1].done()}
    if not pending or rounds >= MAX_INPUT_ROUNDS:
        return result
    tools = session.host.with_tools
    return types.InputRequiredResult(
        input_requests={
            rid: types.CreateMessageRequest(params=sample_params(request, tools))
            for rid, (request, _) in pending.items()
        },
        request_state=str(rounds + 1),
    )
