"""Checkers: does one agent's answer pass one eval item?

Prompt evolution scores a candidate prompt by the answers it gets; each eval item names how
its answer is judged. A checker is built once per item, before any agent runs, so a bad
pattern or schema is refused up front (naming the item) instead of failing mid-evolution
after money was spent, and a regex or schema is compiled once, not once per answer.

Kinds:
- `exact`: the trimmed answer equals the trimmed expected text (`ignore_case`: casefolded);
- `contains`: the expected text occurs in the answer;
- `regex`: the pattern is found anywhere in the answer (a search; anchor it for a full
  match). Patterns come from the caller, so they run on the `regex` module with a time
  limit: a catastrophic pattern fails its check instead of hanging the judge;
- `json_schema`: the answer is JSON (the whole trimmed answer, or the first fenced block,
  e.g. a ```json fence, that parses) and is valid against the schema (`jsonschema`, the
  schema's own `$schema` dialect, else the latest).

- `python`: the caller's code defines `check(answer) -> bool`; it runs in the sandbox
  (`yool.sandbox`, every layer the policy requires), never in yool's own process, and the
  answer passes when `check` returns true. The code is only compiled here, to refuse a
  syntax error up front; `sandbox_program` is what the sandbox runs.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import regex
from jsonschema import SchemaError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

CheckKind = Literal["exact", "contains", "regex", "json_schema", "python"]
KINDS: tuple[str, ...] = get_args(CheckKind)
MAX_WANT_CHARS = 10_000
REGEX_TIMEOUT_S = 0.5  # per answer; past it the answer does not pass
_SHOWN = 200  # chars of the expected text in `describe`

# A fenced block: ``` with an optional info string (json, JSON, ...), its body, and ```.
_FENCE = re.compile(r"```[ \t]*[A-Za-z0-9_+-]*[ \t]*\r?\n(.*?)```", re.DOTALL)


class CheckerError(ValueError):
    """An eval item's check cannot be built; the message names the field and the fix."""


@dataclass(frozen=True, slots=True)
class Checker:
    """One built check: call it with an answer for pass/fail; `describe()` for people."""

    kind: CheckKind
    want: str | dict[str, Any]
    ignore_case: bool = False
    _test: Callable[[str], bool] = field(repr=False, compare=False, default=lambda _a: False)

    def __call__(self, answer: str) -> bool:
        if self.sandboxed:
            raise TypeError("a python check runs in the sandbox: see sandbox_program")
        return self._test(answer)

    @property
    def sandboxed(self) -> bool:
        return self.kind == "python"

    def describe(self) -> str:
        """What a passing answer looks like, short: shown to the prompt mutator and in logs."""
        if isinstance(self.want, dict):
            text = json.dumps(self.want, separators=(",", ":"))
        else:
            text = self.want
        if len(text) > _SHOWN:
            text = text[:_SHOWN] + "…"
        nocase = " (any case)" if self.ignore_case else ""
        if self.kind == "exact":
            return f"exactly {text!r}{nocase}"
        if self.kind == "contains":
            return f"contains {text!r}{nocase}"
        if self.kind == "regex":
            return f"matches /{text}/{'i' if self.ignore_case else ''}"
        if self.kind == "python":
            return f"passes the Python check {text!r}"
        return f"JSON valid against the schema {text}"


def make_checker(kind: str, want: str | Mapping[str, Any], *, ignore_case: bool = False) -> Checker:
    """Build one check; `CheckerError` (without a field prefix) if it cannot be built."""
    if kind not in KINDS:
        raise CheckerError(f"unknown check {kind!r}; use one of {', '.join(KINDS)}")
    if kind == "json_schema":
        schema = _schema(want)
        validator = _validator(schema)
        return Checker("json_schema", schema, False, lambda a: _valid_json(validator, a))
    if not isinstance(want, str):
        raise CheckerError(f"a {kind} check expects text, got {type(want).__name__}")
    if len(want) > MAX_WANT_CHARS:
        raise CheckerError(f"{len(want)} chars; at most {MAX_WANT_CHARS}")
    if not want.strip():
        raise CheckerError(f"empty; {kind} needs the text it looks for")
    if kind == "python":
        _python_check(want)
        return Checker("python", want)
    if kind == "regex":
        try:
            pattern = regex.compile(want, regex.IGNORECASE if ignore_case else 0)
        except regex.error as e:
            raise CheckerError(f"bad regular expression {want!r}: {e}") from None
        return Checker("regex", want, ignore_case, lambda a: _search(pattern, a))
    if kind == "exact":
        expected = _fold(want.strip(), ignore_case)
        return Checker(
            "exact", want, ignore_case, lambda a: _fold(a.strip(), ignore_case) == expected
        )
    needle = _fold(want, ignore_case)
    return Checker("contains", want, ignore_case, lambda a: needle in _fold(a, ignore_case))


def make_checkers(
    items: Iterable[tuple[str, str | Mapping[str, Any], bool]], *, prefix: str = "evals"
) -> list[Checker]:
    """One checker per `(kind, want, ignore_case)`; the first bad one is refused as
    `CheckerError("evals[3].want: ...")`, so nothing runs on a half-valid eval set."""
    out: list[Checker] = []
    for i, (kind, want, ignore_case) in enumerate(items):
        try:
            out.append(make_checker(kind, want, ignore_case=ignore_case))
        except CheckerError as e:
            part = "check" if kind not in KINDS else "want"
            raise CheckerError(f"{prefix}[{i}].{part}: {e}") from None
    return out


def answer_json(answer: str) -> tuple[bool, Any]:
    """(parsed?, value): the whole trimmed answer as JSON, else the first fenced block that
    parses. Models often wrap JSON in a ```json fence, with or without prose around it."""
    text = answer.strip()
    if text:
        try:
            return True, json.loads(text)
        except ValueError:
            pass
    for match in _FENCE.finditer(answer):
        try:
            return True, json.loads(match.group(1))
        except ValueError:
            continue
    return False, None


def _python_check(code: str) -> None:
    try:
        tree = ast.parse(code, "<check>")
    except SyntaxError as e:
        raise CheckerError(f"the Python check does not parse: {e.msg} (line {e.lineno})") from None
    if not any(isinstance(n, ast.FunctionDef) and n.name == "check" for n in tree.body):
        raise CheckerError("the Python check must define check(answer) -> bool at top level")


def sandbox_program(checker: Checker) -> str:
    """What the sandbox runs for a python check: the answer is `answer.txt` in its workdir;
    exit status 0 means it passed."""
    assert checker.sandboxed and isinstance(checker.want, str)
    return (
        'answer = open("answer.txt", encoding="utf-8").read()\n'
        + checker.want
        + "\nraise SystemExit(0 if check(answer) is True else 1)\n"
    )


def _search(pattern: regex.Pattern[str], answer: str) -> bool:
    try:
        return pattern.search(answer, timeout=REGEX_TIMEOUT_S) is not None
    except TimeoutError:
        return False


def _fold(text: str, ignore_case: bool) -> str:
    return text.casefold() if ignore_case else text


def _schema(want: str | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(want, str):
        try:
            want = json.loads(want)
        except ValueError as e:
            raise CheckerError(f"the schema is not JSON: {e}") from None
    if not isinstance(want, Mapping):
        raise CheckerError(f"a JSON schema must be an object, got {type(want).__name__}")
    schema = dict(want)
    if len(json.dumps(schema)) > MAX_WANT_CHARS:
        raise CheckerError(f"the schema is longer than {MAX_WANT_CHARS} chars")
    return schema


def _validator(schema: dict[str, Any]) -> Validator:
    try:
        cls = validator_for(schema)
        cls.check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.path) or "(top)"
        raise CheckerError(f"bad JSON schema at {where}: {e.message}") from None
    validator: Validator = cls(schema)
    return validator


def _valid_json(validator: Validator, answer: str) -> bool:
    parsed, value = answer_json(answer)
    if not parsed:
        return False
    try:
        return bool(validator.is_valid(value))
    except Exception:  # a pathological value (e.g. recursion) fails the check, never the run
        return False
