"""Templates: which tuples an `in`, `rd` or `scan` wants, and the keys the index files them by.

A tuple is a sequence of JSON values. A template has one field per tuple field (so it also
fixes the arity); each field is

- `None`: anything (a wildcard);
- a plain value (string, number, bool, list): equal to it (`1` equals `1.0`; `true` is not `1`);
- an object of constraints, all of which must hold: `{"type": "str"}` (str, int, float,
  number, bool, null, list, object), `{"gte": 3, "lt": 9}` (`gt`, `gte`, `lt`, `lte`; numbers
  or strings, never mixed), `{"prefix": "src/"}`, `{"eq": value}` (to match an object).

Equality fields are what the index looks tuples up by (`key`), so a template with one is
answered from the bucket of tuples that hold that value, never from the whole lane. The other
constraints are kept in planner form too (`types`, `ranges`: a prefix is the string range
`[prefix, successor)`), so the space can answer them from its type and sorted indexes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any, Final

__all__ = [
    "TYPE_COVERS",
    "Range",
    "Template",
    "TemplateError",
    "TupleError",
    "check_tuple",
    "key",
    "type_name",
]

MAX_ARITY: Final = 64

_BOOL_KEYS: Final = {True: ("\x00bool", True), False: ("\x00bool", False)}
_TYPES: Final[dict[str, Callable[[Any], bool]]] = {
    "str": lambda v: type(v) is str,
    "int": lambda v: type(v) is int,
    "float": lambda v: type(v) is float,
    "number": lambda v: type(v) in (int, float),
    "bool": lambda v: type(v) is bool,
    "null": lambda v: v is None,
    "list": lambda v: type(v) is list,
    "object": lambda v: type(v) is dict,
}
_TYPE_NAMES: Final[dict[type, str]] = {
    str: "str",
    int: "int",
    float: "float",
    bool: "bool",
    type(None): "null",
    list: "list",
    dict: "object",
}
# what a type constraint covers, as the per-value type names the type index files tuples by
TYPE_COVERS: Final[dict[str, tuple[str, ...]]] = {
    **{n: (n,) for n in _TYPE_NAMES.values()},
    "number": ("int", "float"),
}
_SCALARS: Final = frozenset({str, int, bool, type(None)})
_RANGE: Final = {"gt", "gte", "lt", "lte"}
_CONSTRAINTS: Final = _RANGE | {"type", "prefix", "eq"}


class TemplateError(ValueError):
    """A template that cannot be understood; the message says which field and why."""


class TupleError(ValueError):
    """A tuple that cannot be stored (not JSON, empty, too long)."""


def key(value: Any) -> Any:
    """The hashable index key of one field value: equal values, and only they, share a key."""
    t = type(value)
    if t is str or t is int or t is float or value is None:
        return value
    if t is bool:
        return _BOOL_KEYS[value]
    return ("\x00json", json.dumps(_canon(value), sort_keys=True, separators=(",", ":")))


def type_name(value: Any) -> str:
    """The type index's name for a stored value (`str`, `int`, ..., `object`)."""
    return _TYPE_NAMES[type(value)]


# (position, kind "num" or "str", low, low inclusive, high, high inclusive); None: unbounded
Range = tuple[int, str, Any, bool, Any, bool]


def _successor(prefix: str) -> str | None:
    """The least string above every string starting with `prefix` (None: there is none)."""
    stem = prefix.rstrip("\U0010ffff")
    return stem[:-1] + chr(ord(stem[-1]) + 1) if stem else None


def _canon(value: Any) -> Any:
    """Integral floats as ints inside lists and objects, so `[1]` and `[1.0]` share a key."""
    t = type(value)
    if t is float and value.is_integer():
        return int(value)
    if t is list:
        return [_canon(v) for v in value]
    if t is dict:
        return {k: _canon(v) for k, v in value.items()}
    return value


def check_tuple(values: Sequence[Any]) -> tuple[Any, ...]:
    """`values` as a stored tuple, or TupleError: 1..64 JSON fields, finite numbers."""
    tv = type(values)
    if (tv is not list and tv is not tuple) and (  # the common cases: no ABC check
        isinstance(values, str | bytes | dict) or not isinstance(values, Sequence)
    ):
        raise TupleError(f"tuple: expected a list of JSON values, got {tv.__name__}")
    if not 1 <= len(values) <= MAX_ARITY:
        raise TupleError(f"tuple: needs 1 to {MAX_ARITY} fields, got {len(values)}")
    out = tuple(values)  # the same object when it is one already
    for i, v in enumerate(out):
        t = type(v)
        if t in _SCALARS:
            continue
        if t is float:
            if not math.isfinite(v):
                raise TupleError(f"tuple[{i}]: {v!r} is not a finite number")
            continue
        if t is list or t is dict:
            try:
                json.dumps(v, allow_nan=False)
            except (TypeError, ValueError) as e:
                raise TupleError(f"tuple[{i}]: not JSON ({e})") from None
            continue
        raise TupleError(f"tuple[{i}]: {t.__name__} is not a JSON value")
    return out


def _prefix_pred(prefix: str) -> Callable[[Any], bool]:
    def pred(v: Any) -> bool:
        return type(v) is str and v.startswith(prefix)

    return pred


def _range_pred(spec: dict[str, Any], pos: int) -> tuple[Callable[[Any], bool], Range]:
    bounds = {k: spec[k] for k in _RANGE if k in spec}
    kinds = {"str" if type(b) is str else "num" for b in bounds.values()}
    for k, b in bounds.items():
        if type(b) not in (int, float, str) or (type(b) is float and not math.isfinite(b)):
            raise TemplateError(f"template[{pos}].{k}: a bound is a finite number or a string")
    if len(kinds) > 1:
        raise TemplateError(f"template[{pos}]: range bounds mix numbers and strings")
    is_str = kinds == {"str"}
    gt, gte, lt, lte = (bounds.get(k) for k in ("gt", "gte", "lt", "lte"))

    def pred(v: Any) -> bool:
        if is_str:
            if type(v) is not str:
                return False
        elif type(v) not in (int, float):
            return False
        return (
            (gt is None or v > gt)
            and (gte is None or v >= gte)
            and (lt is None or v < lt)
            and (lte is None or v <= lte)
        )

    lo, lo_incl = (gte, True) if gt is None or (gte is not None and gte > gt) else (gt, False)
    hi, hi_incl = (lte, True) if lt is None or (lte is not None and lte < lt) else (lt, False)
    return pred, (pos, "str" if is_str else "num", lo, lo_incl, hi, hi_incl)


class Template:
    """A compiled template: its arity, its equality keys and its other predicates."""

    __slots__ = ("arity", "eq", "fields", "preds", "ranges", "types")

    def __init__(self, fields: Sequence[Any]) -> None:
        tf = type(fields)
        if (tf is not list and tf is not tuple) and (  # the common cases: no ABC check
            isinstance(fields, str | bytes | dict) or not isinstance(fields, Sequence)
        ):
            raise TemplateError(
                f"template: expected a list (null = any field), got {type(fields).__name__}"
            )
        if not 1 <= len(fields) <= MAX_ARITY:
            raise TemplateError(f"template: needs 1 to {MAX_ARITY} fields, got {len(fields)}")
        self.fields = list(fields)
        self.arity = len(fields)
        eq: list[tuple[int, Any]] = []
        preds: list[tuple[int, Callable[[Any], bool]]] = []
        types: list[tuple[int, str]] = []
        ranges: list[Range] = []
        for pos, f in enumerate(fields):
            if f is None:
                continue
            tf = type(f)
            if tf is str or tf is int:  # the common equality fields: nothing to check
                eq.append((pos, f))
                continue
            if tf is not dict:
                try:
                    check_tuple([f])
                except TupleError as e:
                    raise TemplateError(f"template[{pos}]: {e}".replace("tuple[0]: ", "")) from None
                eq.append((pos, key(f)))
                continue
            unknown = sorted(set(f) - _CONSTRAINTS)
            if unknown or not f:
                raise TemplateError(
                    f"template[{pos}]: unknown constraint {', '.join(unknown) or '(empty)'}; "
                    "use type, gt/gte/lt/lte, prefix or eq"
                )
            if "eq" in f:
                try:
                    check_tuple([f["eq"]])
                except TupleError as e:
                    raise TemplateError(f"template[{pos}].eq: {e}") from None
                eq.append((pos, key(f["eq"])))
            if "type" in f:
                test = _TYPES.get(f["type"])
                if test is None:
                    raise TemplateError(
                        f"template[{pos}].type: {f['type']!r} is not one of {', '.join(_TYPES)}"
                    )
                preds.append((pos, test))
                types.append((pos, f["type"]))
            if "prefix" in f:
                prefix = f["prefix"]
                if type(prefix) is not str:
                    raise TemplateError(f"template[{pos}].prefix: must be a string")
                preds.append((pos, _prefix_pred(prefix)))
                ranges.append((pos, "str", prefix, True, _successor(prefix), False))
            if _RANGE & f.keys():
                pred, span = _range_pred(f, pos)
                preds.append((pos, pred))
                ranges.append(span)
        self.eq = tuple(eq)
        self.preds = tuple(preds)
        self.types = tuple(types)
        self.ranges = tuple(ranges)

    def matches(self, values: Sequence[Any]) -> bool:
        """Whether a tuple fits every field of this template."""
        if len(values) != self.arity:
            return False
        for pos, k in self.eq:
            v = values[pos]
            tv = type(v)
            if (v if tv is str or tv is int else key(v)) != k:
                return False
        preds = self.preds
        return not preds or all(test(values[pos]) for pos, test in preds)

    def __repr__(self) -> str:
        return f"Template({self.fields!r})"
