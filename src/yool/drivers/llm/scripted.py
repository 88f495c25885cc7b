"""A scripted provider: deterministic turns for `yool demo`, tests and offline use.

A script is a list of turns; each turn is the model's reply (text and/or tool
calls). A function may stand in for a turn and compute the reply from the
request, so a script can react to what the agent sent. Usage is estimated
from the text, so budgets and accounting behave as they would against a real
model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import count

from yool.drivers.llm.provider import Provider, ProviderError
from yool.drivers.llm.types import LLMRequest, LLMResponse, ToolCall, Usage
from yool.kernel.context import estimate_tokens

Turn = LLMResponse | str | Callable[[LLMRequest], LLMResponse | str]


def reply(text: str = "", *calls: tuple[str, dict[str, object]]) -> LLMResponse:
    """A scripted turn: some text and any number of (tool name, arguments) calls."""
    tool_calls = tuple(ToolCall(f"call_{next(_ids)}", name, dict(args)) for name, args in calls)
    return LLMResponse(
        text, tool_calls, "tool_use" if tool_calls else "end", Usage(), model="scripted"
    )


_ids = count(1)


class ScriptedProvider(Provider):
    """Plays `turns` in order for every conversation; the last turn repeats if `loop`."""

    name = "scripted"
    default_model = "scripted-1"

    def __init__(self, turns: Iterable[Turn] = (), *, loop: bool = False) -> None:
        self._turns = list(turns)
        self._loop = loop
        self.calls: list[LLMRequest] = []

    async def complete(self, request: LLMRequest) -> LLMResponse:
        index = _assistant_turns(request)
        self.calls.append(request)
        if index >= len(self._turns):
            if not self._turns:
                text = "Done." if not request.messages else "Done: " + _last_user(request)[:200]
                return self._usage(request, reply(text))
            if not self._loop:
                raise ProviderError(
                    f"scripted provider has {len(self._turns)} turn(s); step {index + 1} "
                    "was asked for"
                )
            index = len(self._turns) - 1
        turn = self._turns[index]
        out = turn(request) if callable(turn) else turn
        if isinstance(out, str):
            out = reply(out)
        return self._usage(request, out)

    def _usage(self, request: LLMRequest, out: LLMResponse) -> LLMResponse:
        if out.usage.total:
            return out
        prompt = estimate_tokens(request.system) + sum(
            estimate_tokens(m.content) + 4 for m in request.messages
        )
        answer = estimate_tokens(out.text) + 8 * len(out.tool_calls)
        return LLMResponse(
            out.text,
            out.tool_calls,
            out.stop,
            Usage(prompt, answer),
            request.model or self.default_model,
            out.usd,
        )


def _assistant_turns(request: LLMRequest) -> int:
    return sum(1 for m in request.messages if m.role == "assistant")


def _last_user(request: LLMRequest) -> str:
    for m in reversed(request.messages):
        if m.role == "user":
            return m.content
    return ""
