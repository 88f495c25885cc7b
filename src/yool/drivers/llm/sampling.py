"""MCP sampling as a provider: sub-agents think with the host assistant's own model.

When the MCP client (Claude Code, VS Code...) offers `sampling/createMessage`, yool can run a
sub-agent's calls on the model the user already pays for, with no API key of its own. The MCP
layer owns the protocol and hands us one async callback, `(LLMRequest) -> LLMResponse`, that
translates and calls `create_message`; this provider only calls it and checks what comes back,
so a confused client becomes a clear `ProviderError` (and then an honest `fault`) instead of a
crash deep in the agent loop.

If the client did not offer sampling there is no callback: the provider still exists (the
policy named it) but every call fails with a message naming the providers that *are*
configured, so the user knows what to switch `YOOL_PROVIDER` to.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, get_args

from yool.drivers.llm.provider import Provider, ProviderError
from yool.drivers.llm.types import LLMRequest, LLMResponse, StopReason, ToolCall, Usage

__all__ = ["SamplingCallback", "SamplingProvider", "UnavailableSampling"]

SamplingCallback = Callable[[LLMRequest], Awaitable[LLMResponse]]

_STOPS = frozenset(get_args(StopReason))


class SamplingProvider(Provider):
    """Calls `callback` (supplied by the MCP layer) for each request; validates the result.

    `callback` may be None, or assigned later once the client's capabilities are known; until
    then every call fails naming `configured` as the alternatives.
    """

    name = "sampling"
    default_model = "host"  # the client picks its model; a request's model is only a hint

    def __init__(
        self, callback: SamplingCallback | None = None, *, configured: Sequence[str] = ()
    ) -> None:
        self.callback = callback
        self.configured = tuple(configured)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        callback = self.callback
        if callback is None:
            others = ", ".join(self.configured) or "none"
            raise ProviderError(
                f"the MCP client did not offer sampling; configured providers: {others} "
                "(choose one with YOOL_PROVIDER)"
            )
        try:
            result: Any = await callback(request)
        except ProviderError:
            raise
        except Exception as e:
            # The client's own words may help; sampling involves no key of ours to leak.
            raise ProviderError(
                f"sampling: the MCP client failed ({type(e).__name__}: {str(e)[:300]})"
            ) from None
        return check_response(result)


class UnavailableSampling(SamplingProvider):
    """Sampling the client did not offer: every call fails with the configured alternatives."""

    def __init__(self, configured: Sequence[str] = ()) -> None:
        super().__init__(None, configured=configured)


def check_response(result: object) -> LLMResponse:
    """`result` if it is a well-formed LLMResponse; else a ProviderError saying what is wrong."""

    def bad(detail: str) -> ProviderError:
        return ProviderError(f"malformed reply from sampling: {detail}"[:500])

    if not isinstance(result, LLMResponse):
        raise bad(f"the callback returned {type(result).__name__}, not LLMResponse")
    if not isinstance(result.text, str):
        raise bad(f"text is {type(result.text).__name__}, not str")
    if not isinstance(result.model, str):
        raise bad(f"model is {type(result.model).__name__}, not str")
    if result.stop not in _STOPS:
        raise bad(f"stop is {result.stop!r}, not one of {sorted(_STOPS)}")
    if not isinstance(result.tool_calls, tuple) or not all(
        isinstance(c, ToolCall)
        and isinstance(c.id, str)
        and isinstance(c.name, str)
        and c.name
        and isinstance(c.arguments, dict)
        for c in result.tool_calls
    ):
        raise bad("tool_calls must be a tuple of ToolCall(id: str, name: str, arguments: dict)")
    usage = result.usage
    if not isinstance(usage, Usage):
        raise bad(f"usage is {type(usage).__name__}, not Usage")
    for side, n in (("input_tokens", usage.input_tokens), ("output_tokens", usage.output_tokens)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise bad(f"usage.{side} is {n!r}, not a count")
    usd = result.usd
    if isinstance(usd, bool) or not isinstance(usd, int | float) or not usd >= 0:
        raise bad(f"usd is {usd!r}, not a non-negative number")
    return result
