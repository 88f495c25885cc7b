"""The eval checkers prompt evolution judges answers with: exact, contains, regex, JSON schema.

Bad checks are refused when built, naming the eval item; properties (hypothesis) pin down
what each kind accepts, and that a checker is a total function of the answer text.
"""

from __future__ import annotations

import json
import re
import string
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from yool.personas.checkers import (
    KINDS,
    REGEX_TIMEOUT_S,
    CheckerError,
    answer_json,
    make_checker,
    make_checkers,
    sandbox_program,
)

ASCII = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " ")
SPACE = st.text(alphabet=" \t\n\r", max_size=5)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


# -- exact ----------------------------------------------------------------------------------


@given(want=ASCII.filter(lambda s: s.strip()), left=SPACE, right=SPACE)
def test_exact_accepts_the_expected_text_with_any_surrounding_whitespace(
    want: str, left: str, right: str
) -> None:
    check = make_checker("exact", want)
    assert check(left + want.strip() + right)


@given(want=ASCII.filter(lambda s: s.strip()), extra=ASCII.filter(lambda s: s.strip()))
def test_exact_refuses_anything_more_than_the_expected_text(want: str, extra: str) -> None:
    check = make_checker("exact", want)
    assert not check(want.strip() + " " + extra)


@given(want=st.text(alphabet=string.ascii_letters, min_size=1))
def test_exact_ignoring_case_accepts_any_casing_and_otherwise_does_not(want: str) -> None:
    assert make_checker("exact", want, ignore_case=True)(want.swapcase())
    assert make_checker("exact", want, ignore_case=True)(want.upper())
    if want.swapcase() != want:
        assert not make_checker("exact", want)(want.swapcase())


# -- contains -------------------------------------------------------------------------------


@given(want=st.text(min_size=1).filter(str.strip), before=st.text(), after=st.text())
def test_contains_accepts_the_needle_anywhere(want: str, before: str, after: str) -> None:
    assert make_checker("contains", want)(before + want + after)


@given(want=st.text(alphabet="xyz", min_size=1), hay=st.text(alphabet="abc"))
def test_contains_refuses_an_answer_without_the_needle(want: str, hay: str) -> None:
    assert not make_checker("contains", want)(hay)


def test_contains_ignoring_case_folds_both_sides() -> None:
    check = make_checker("contains", "Paris", ignore_case=True)
    assert check("the capital is PARIS.")
    assert not make_checker("contains", "Paris")("the capital is PARIS.")


# -- regex ----------------------------------------------------------------------------------


@given(needle=st.text(min_size=1).filter(str.strip), before=st.text(), after=st.text())
def test_an_escaped_pattern_matches_any_answer_that_contains_it(
    needle: str, before: str, after: str
) -> None:
    assert make_checker("regex", re.escape(needle))(before + needle + after)


def test_regex_searches_anywhere_unless_anchored_and_honours_ignore_case() -> None:
    assert make_checker("regex", r"\b\d{2}\b")("the answer is 42, clearly")
    assert not make_checker("regex", r"^\d+$")("the answer is 42")
    assert make_checker("regex", r"^\s*42\s*$")(" 42\n")
    assert make_checker("regex", "yes", ignore_case=True)("YES")
    assert not make_checker("regex", "yes")("YES")


def test_a_catastrophic_pattern_fails_its_check_in_bounded_time() -> None:
    check = make_checker("regex", r"^(a+)+$")  # exponential backtracking on "aaa…b"
    started = time.monotonic()
    assert not check("a" * 64 + "b")
    assert time.monotonic() - started < REGEX_TIMEOUT_S + 1.0
    assert check("a" * 64)


def test_a_bad_pattern_is_refused_up_front_naming_the_eval_item() -> None:
    items: list[tuple[str, Any, bool]] = [("exact", "42", False), ("regex", "(unclosed", False)]
    with pytest.raises(CheckerError, match=r"evals\[1\]\.want: bad regular expression"):
        make_checkers(items)


# -- json_schema ----------------------------------------------------------------------------


@given(value=JSON_VALUES)
def test_the_empty_schema_accepts_any_json_bare_or_fenced(value: Any) -> None:
    check = make_checker("json_schema", {})
    text = json.dumps(value)
    assert check(text)
    assert check(f"Here it is:\n```json\n{text}\n```\nAnything else?")


@given(n=st.integers(), s=st.text(max_size=10))
def test_a_typed_schema_accepts_its_type_and_refuses_others(n: int, s: str) -> None:
    check = make_checker("json_schema", {"type": "integer"})
    assert check(json.dumps(n))
    assert not check(json.dumps(s))


def test_json_answers_need_valid_json_and_the_schemas_required_fields() -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "pop": {"type": "integer"}},
        "required": ["city", "pop"],
    }
    check = make_checker("json_schema", schema)
    assert check('{"city": "Paris", "pop": 2100000}')
    assert check('```\n{"city": "Paris", "pop": 1}\n```')
    assert check('Sure.\n```JSON\n{"city": "Oslo", "pop": 7}\n```')
    assert not check('{"city": "Paris"}')  # pop missing
    assert not check("city: Paris, pop: 1")  # not JSON
    assert not check('```json\n{"city": "Paris", pop: 1}\n```')  # a fence around bad JSON
    assert not check("")


def test_a_schema_given_as_json_text_works_like_the_object() -> None:
    assert make_checker("json_schema", '{"type": "array"}')("[1, 2]")


def test_answer_json_takes_the_first_fence_that_parses() -> None:
    text = "```python\nprint(1)\n```\nthen\n```json\n[1]\n```"
    assert answer_json(text) == (True, [1])
    assert answer_json("no json here") == (False, None)


@pytest.mark.parametrize(
    ("want", "message"),
    [
        ({"type": "nonsense"}, r"evals\[0\]\.want: bad JSON schema at type"),
        ({"properties": {"a": {"minimum": "one"}}}, r"evals\[0\]\.want: bad JSON schema"),
        ("{not json", r"evals\[0\]\.want: the schema is not JSON"),
        ("[1]", r"evals\[0\]\.want: a JSON schema must be an object"),
    ],
)
def test_a_bad_schema_is_refused_up_front_naming_the_eval_item(want: Any, message: str) -> None:
    with pytest.raises(CheckerError, match=message):
        make_checkers([("json_schema", want, False)])


# -- every kind -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "want", "message"),
    [
        ("exact", "  ", "empty; exact needs the text"),
        ("contains", "", "empty; contains needs the text"),
        ("regex", {"a": 1}, "a regex check expects text, got dict"),
        ("python", "assert x", "must define check(answer)"),
        ("shell", "true", "unknown check 'shell'"),
    ],
)
def test_empty_mistyped_or_unknown_checks_are_refused(kind: str, want: Any, message: str) -> None:
    with pytest.raises(CheckerError, match=re.escape(message)):
        make_checker(kind, want)
    field = "check" if kind == "shell" else "want"
    with pytest.raises(CheckerError, match=re.escape(f"evals[0].{field}: ")):
        make_checkers([(kind, want, False)])


@given(kind=st.sampled_from([k for k in KINDS if k != "python"]), answer=st.text())
def test_every_in_process_checker_is_a_total_function_of_the_answer(kind: str, answer: str) -> None:
    want: Any = {"type": "object"} if kind == "json_schema" else "x"
    assert make_checker(kind, want)(answer) in (True, False)


def test_describe_says_what_a_passing_answer_looks_like() -> None:
    assert make_checker("exact", "42").describe() == "exactly '42'"
    assert make_checker("contains", "Paris", ignore_case=True).describe() == (
        "contains 'Paris' (any case)"
    )
    assert make_checker("regex", r"\d+").describe() == r"matches /\d+/"
    assert make_checker("json_schema", {"type": "object"}).describe() == (
        'JSON valid against the schema {"type":"object"}'
    )
    assert make_checker("contains", "y" * 500).describe().endswith("…'")


def test_a_python_check_is_compiled_up_front_and_never_run_in_process() -> None:
    check = make_checker("python", "def check(answer):\n    return answer.strip() == '42'\n")
    assert check.sandboxed
    with pytest.raises(TypeError, match="sandbox"):
        check("42")
    program = sandbox_program(check)
    assert "answer.txt" in program and "check(answer)" in program
    with pytest.raises(CheckerError, match="does not parse"):
        make_checker("python", "def check(answer) return True")
    with pytest.raises(CheckerError, match="define check"):
        make_checker("python", "def judge(answer):\n    return True\n")
