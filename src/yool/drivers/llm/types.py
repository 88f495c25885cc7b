"""One normalised request and response for every LLM provider.

Sub-agents speak this shape; each provider driver translates it to and from
its own wire format (Anthropic Messages, OpenAI Chat Completions or Responses,
MCP sampling, a scripted list of turns). Plain slotted dataclasses, not
pydantic models: an agent builds one per step over a growing history, and
validation of fifty messages on every step is a cost we refuse to pay.
Everything converts to and from JSON, because requests are digested and
results journaled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from yool.kernel.journal import Sealed

Role = Literal["user", "assistant", "tool"]
StopReason = Literal["end", "tool_use", "max_tokens", "stop_sequence", "refusal"]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call; `schema` is a JSON Schema object for its arguments."""

    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "schema": self.schema}


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ToolCall:
        return cls(data["id"], data["name"], data.get("arguments") or {})


@dataclass(frozen=True, slots=True)
class Msg:
    """One turn of the conversation (the system prompt lives on the request).

    A `tool` message answers the call `tool_call_id`; `is_error` marks a failed tool.
    """

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    is_error: bool = False
    # Per-instance caches (a Msg never changes): its sealed JSON and its token estimate.
    _sealed: _MsgJSON | None = field(default=None, init=False, repr=False, compare=False)
    _tokens: int | None = field(default=None, init=False, repr=False, compare=False)

    def sealed(self) -> _MsgJSON:
        """`to_json()` as a read-only dict, built once: what `LLMRequest.payload` sends.

        Its canonical text (for the journal digest) is computed once too, and
        `Msg.from_json` hands back this very Msg for it instead of building a new one.
        """
        out = self._sealed
        if out is None:
            out = _MsgJSON(self)
            object.__setattr__(self, "_sealed", out)
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_json() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.is_error:
            out["is_error"] = True
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Msg:
        if type(data) is _MsgJSON:
            return data.msg  # sealed: it still says exactly what its Msg does
        return cls(
            data["role"],
            data.get("content") or "",
            tuple(ToolCall.from_json(c) for c in data.get("tool_calls") or ()),
            data.get("tool_call_id"),
            bool(data.get("is_error", False)),
        )


class _MsgJSON(Sealed):
    """A Msg's JSON object, read-only, remembering the Msg it came from."""

    __slots__ = ("msg",)

    def __init__(self, msg: Msg) -> None:
        data = msg.to_json()
        if "tool_calls" in data:
            data["tool_calls"] = [Sealed(c) for c in data["tool_calls"]]
        super().__init__(data)
        self.msg = msg if _round_trips(msg) else Msg.from_json(data)


def _round_trips(msg: Msg) -> bool:
    """Whether `Msg.from_json(msg.to_json())` gives back an equal Msg."""
    return (
        isinstance(msg.content, str)
        and isinstance(msg.is_error, bool)
        and isinstance(msg.tool_calls, tuple)
        and all(type(c) is ToolCall and isinstance(c.arguments, dict) for c in msg.tool_calls)
    )


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_json(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}


@dataclass(frozen=True, slots=True)
class LLMRequest:
    messages: tuple[Msg, ...]
    system: str = ""
    tools: tuple[ToolSpec, ...] = ()
    model: str | None = None  # None: the provider's default from the policy
    max_tokens: int = 1024
    temperature: float | None = None  # 0 makes a call deterministic, hence cacheable
    idempotent: bool = False  # safe to send twice at once (hedging)

    def payload(self) -> dict[str, Any]:
        """`to_json()` with each message's sealed JSON: what an agent sends the LLM device.

        Equal to `to_json()`; the messages are built once per Msg rather than per request,
        and the kernel's digest and the driver's parse reuse what they cached.
        """
        out = self.to_json(_messages=[m.sealed() for m in self.messages])
        return out

    def to_json(self, _messages: list[Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "messages": [m.to_json() for m in self.messages] if _messages is None else _messages,
            "max_tokens": self.max_tokens,
        }
        if self.system:
            out["system"] = self.system
        if self.tools:
            out["tools"] = [t.to_json() for t in self.tools]
        if self.model is not None:
            out["model"] = self.model
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.idempotent:
            out["idempotent"] = True
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LLMRequest:
        return cls(
            messages=tuple(Msg.from_json(m) for m in data.get("messages") or ()),
            system=data.get("system") or "",
            tools=tuple(
                ToolSpec(t["name"], t.get("description", ""), t.get("schema") or {})
                for t in data.get("tools") or ()
            ),
            model=data.get("model"),
            max_tokens=int(data.get("max_tokens", 1024)),
            temperature=data.get("temperature"),
            idempotent=bool(data.get("idempotent", False)),
        )


@dataclass(frozen=True, slots=True)
class LLMResponse:
    text: str
    tool_calls: tuple[ToolCall, ...]
    stop: StopReason
    usage: Usage
    model: str
    usd: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "tool_calls": [c.to_json() for c in self.tool_calls],
            "stop": self.stop,
            "usage": self.usage.to_json(),
            "model": self.model,
            "usd": self.usd,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LLMResponse:
        u = data.get("usage") or {}
        return cls(
            data.get("text") or "",
            tuple(ToolCall.from_json(c) for c in data.get("tool_calls") or ()),
            data.get("stop", "end"),
            Usage(int(u.get("input_tokens", 0)), int(u.get("output_tokens", 0))),
            data.get("model", ""),
            float(data.get("usd", 0.0)),
        )

    def as_message(self) -> Msg:
        """The assistant turn to append to the history."""
        return Msg("assistant", self.text, self.tool_calls)
