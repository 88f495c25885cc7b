"""What every benchmark script shares: the one-JSON-line output and a realistic history."""

from __future__ import annotations

import json
from typing import Any

from yool.drivers.llm.types import Msg, ToolCall


def emit(bench: str, value: float, unit: str, **extra: Any) -> None:
    """Print one figure as `{"bench": NAME, "value": ..., "unit": ..., **context}`."""
    print(json.dumps({"bench": bench, "value": round(value, 3), "unit": unit, **extra}), flush=True)


def history(n: int) -> tuple[Msg, ...]:
    """n messages: a user turn, then assistant tool calls and tool results in turn."""
    out = [Msg("user", "Refactor the parser module and keep the tests green. " * 3)]
    i = 0
    while len(out) < n:
        call = ToolCall(f"call_{i}", "read", {"path": f"src/mod_{i}.py", "n": i})
        out.append(Msg("assistant", f"Reading module {i} to see what it does.", (call,)))
        if len(out) < n:
            out.append(Msg("tool", "def f(x):\n    return x * 2\n" * 8, tool_call_id=call.id))
        i += 1
    return tuple(out[:n])
