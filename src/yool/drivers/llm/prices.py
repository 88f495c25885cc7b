"""USD prices of LLM models, so the kernel can charge and refuse calls in dollars.

Prices are USD per million input and output tokens, list prices of the providers' current
models (no batch, cache or long-context tiers). A model id is matched exactly, else by the
longest known id it starts with followed by `-` or `@` (dated ids such as
`claude-sonnet-4-5-20250929` or `gpt-4o-mini-2024-07-18`). An unknown model costs zero and is
flagged (`Price.known` is False), so callers can warn that USD budgets do not bind it.

Users override or extend the table with a JSON file named by `YOOL_PRICES`:

    {"my-model": {"input": 0.5, "output": 1.5}, "gpt-4o": {"input": 2.0, "output": 8.0}}

The file is read by `load_prices`, never at import; a bad file raises `PriceError` naming the
file and the offending field.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from yool.drivers.llm.types import Usage

__all__ = ["DEFAULT_PRICES", "Price", "PriceError", "PriceTable", "cost", "load_prices"]

PRICES_ENV = "YOOL_PRICES"
_SEPARATORS = ("-", "@")


class PriceError(ValueError):
    """A price override file is missing or malformed; the message names file and field."""


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens; `known` is False for the zero price of an unknown model."""

    input_per_mtok: float
    output_per_mtok: float
    known: bool = True

    def cost(self, usage: Usage) -> float:
        return (
            usage.input_tokens * self.input_per_mtok + usage.output_tokens * self.output_per_mtok
        ) / 1_000_000


UNKNOWN = Price(0.0, 0.0, known=False)

DEFAULT_PRICES: Mapping[str, Price] = MappingProxyType(
    {
        # Anthropic
        "claude-opus-4-5": Price(5.0, 25.0),
        "claude-opus-4-1": Price(15.0, 75.0),
        "claude-opus-4": Price(15.0, 75.0),
        "claude-sonnet-4-5": Price(3.0, 15.0),
        "claude-sonnet-4": Price(3.0, 15.0),
        "claude-haiku-4-5": Price(1.0, 5.0),
        "claude-3-7-sonnet": Price(3.0, 15.0),
        "claude-3-5-sonnet": Price(3.0, 15.0),
        "claude-3-5-haiku": Price(0.8, 4.0),
        "claude-3-opus": Price(15.0, 75.0),
        "claude-3-haiku": Price(0.25, 1.25),
        # OpenAI
        "gpt-5.1": Price(1.25, 10.0),
        "gpt-5": Price(1.25, 10.0),
        "gpt-5-mini": Price(0.25, 2.0),
        "gpt-5-nano": Price(0.05, 0.4),
        "gpt-4.1": Price(2.0, 8.0),
        "gpt-4.1-mini": Price(0.4, 1.6),
        "gpt-4.1-nano": Price(0.1, 0.4),
        "gpt-4o": Price(2.5, 10.0),
        "gpt-4o-mini": Price(0.15, 0.6),
        "o1": Price(15.0, 60.0),
        "o1-pro": Price(150.0, 600.0),
        "o3": Price(2.0, 8.0),
        "o3-pro": Price(20.0, 80.0),
        "o3-mini": Price(1.1, 4.4),
        "o4-mini": Price(1.1, 4.4),
        # Offline
        "scripted": Price(0.0, 0.0),
    }
)


class PriceTable:
    """Model id -> Price, with exact then longest-dated-prefix matching."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)
        self._by_length = sorted(self._prices, key=len, reverse=True)

    def price(self, model: str) -> Price:
        exact = self._prices.get(model)
        if exact is not None:
            return exact
        for known in self._by_length:
            if model.startswith(known) and model[len(known)] in _SEPARATORS:
                return self._prices[known]
        return UNKNOWN

    def cost(self, model: str, usage: Usage) -> float:
        """USD of `usage` on `model`; 0.0 for an unknown model (see `price(model).known`)."""
        return self.price(model).cost(usage)

    def models(self) -> list[str]:
        return sorted(self._prices)


def load_prices(environ: Mapping[str, str] | None = None) -> PriceTable:
    """The built-in table, overridden by the JSON file `YOOL_PRICES` names (if set)."""
    env = os.environ if environ is None else environ
    prices = dict(DEFAULT_PRICES)
    name = env.get(PRICES_ENV)
    if name is not None:
        prices.update(read_price_file(Path(name)))
    return PriceTable(prices)


def read_price_file(path: Path) -> dict[str, Price]:
    """Parse an override file: {"model": {"input": usd_per_mtok, "output": usd_per_mtok}}."""
    where = f"{PRICES_ENV} file {str(path)!r}"
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PriceError(f"{where}: cannot read it ({e.strerror or e})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PriceError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise PriceError(f"{where}: expected an object of model -> {{input, output}} prices")
    out: dict[str, Price] = {}
    for model, entry in data.items():
        if not model.strip():
            raise PriceError(f"{where}: a model id is empty")
        if not isinstance(entry, dict):
            raise PriceError(f"{where}: {model!r} must be an object with input and output")
        extra = sorted(set(entry) - {"input", "output"})
        if extra:
            raise PriceError(f"{where}: {model}.{extra[0]} is not a price field (input, output)")
        values = []
        for side in ("input", "output"):
            value = entry.get(side)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise PriceError(
                    f"{where}: {model}.{side} must be a number >= 0 (USD per million tokens),"
                    f" got {value!r}"
                )
            values.append(float(value))
        out[model] = Price(values[0], values[1])
    return out


_default_table: PriceTable | None = None


def cost(model: str, usage: Usage, table: PriceTable | None = None) -> float:
    """USD of `usage` on `model` by `table` (default: built-ins plus `YOOL_PRICES`, read once)."""
    global _default_table
    if table is None:
        if _default_table is None:
            _default_table = load_prices()
        table = _default_table
    return table.cost(model, usage)
