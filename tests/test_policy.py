"""The runtime policy and the `yool policy` command: defaults, variable names, sources, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import yool
from yool.policy import TOOL_GROUPS, PolicyError, RuntimePolicy

SRC = Path(__file__).resolve().parents[1] / "src"

# The tuple-space reference's DEFAULT_* constants.
REFERENCE_DEFAULTS = {
    "lane_concurrency": 32,
    "max_lane_concurrency": 64,
    "cpu_quota_pct": 95,
    "queue_maxsize": 8192,
    "compression_threshold": 1024,
    "cache_max_entries": 16384,
    "cache_ttl_s": 3600,
    "api_max_retries": 3,
    "api_backoff_base_ms": 100,
    "api_backoff_max_ms": 5000,
    "circuit_failure_threshold": 5,
    "circuit_cooldown_s": 30,
    "batch_small_task_size": 32,
    "context_compression_chars": 6000,
}

# A valid value other than the default for every reference knob, as a string and as read.
REFERENCE_SAMPLES = {
    "lane_concurrency": ("16", 16),
    "max_lane_concurrency": ("128", 128),
    "cpu_quota_pct": ("50", 50),
    "queue_maxsize": ("100", 100),
    "compression_threshold": ("200", 200),
    "cache_max_entries": ("300", 300),
    "cache_ttl_s": ("12.5", 12.5),
    "api_max_retries": ("0", 0),
    "api_backoff_base_ms": ("50", 50),
    "api_backoff_max_ms": ("9000", 9000),
    "circuit_failure_threshold": ("7", 7),
    "circuit_cooldown_s": ("2.5", 2.5),
    "batch_small_task_size": ("8", 8),
    "context_compression_chars": ("100", 100),
}

BUDGETS = ["budget_tokens", "budget_usd", "budget_tool_calls", "budget_wall_s"]


def ours(field: str) -> str:
    return f"YOOL_{field.upper()}"


def alias(field: str) -> str:
    return f"YOOL_TUPLE_{field.upper()}"


def problem(environ: dict[str, str]) -> str:
    with pytest.raises(PolicyError) as caught:
        RuntimePolicy.load(environ)
    return str(caught.value)


def test_defaults_match_the_reference() -> None:
    policy = RuntimePolicy.load({})

    assert {name: getattr(policy, name) for name in REFERENCE_DEFAULTS} == REFERENCE_DEFAULTS


def test_defaults_of_yools_own_knobs() -> None:
    policy = RuntimePolicy.load({})

    assert policy.budget_tokens == 2_000_000
    assert policy.budget_usd == 5.0
    assert policy.budget_tool_calls == 10_000
    assert policy.budget_wall_s is None
    assert policy.provider == "scripted"
    assert policy.model is None
    assert policy.mailbox_limit == 1024
    assert policy.events_ring == 4096
    assert policy.aging_s == 1.0
    assert policy.tools == TOOL_GROUPS


def test_home_defaults_to_dot_yool_in_the_users_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))

    policy = RuntimePolicy.load({})

    assert policy.home == tmp_path / ".yool"
    assert policy.db_path == tmp_path / ".yool" / "yool.db"


def test_home_is_pinned_to_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    policy = RuntimePolicy.load({"YOOL_HOME": "state"})

    assert policy.home == tmp_path / "state"
    assert policy.db_path == tmp_path / "state" / "yool.db"


@pytest.mark.parametrize("field", REFERENCE_SAMPLES)
def test_reference_knob_is_read_from_its_yool_name(field: str) -> None:
    raw, expected = REFERENCE_SAMPLES[field]

    policy = RuntimePolicy.load({ours(field): raw})

    assert getattr(policy, field) == expected
    assert policy.sources()[field] == f"env {ours(field)}"


@pytest.mark.parametrize("field", REFERENCE_SAMPLES)
def test_reference_knob_is_read_from_its_yool_tuple_alias(field: str) -> None:
    raw, expected = REFERENCE_SAMPLES[field]

    policy = RuntimePolicy.load({alias(field): raw})

    assert getattr(policy, field) == expected
    assert policy.sources()[field] == f"env {alias(field)} (alias)"


def test_yools_own_knobs_are_read_from_their_variables(tmp_path: Path) -> None:
    environ = {
        "YOOL_HOME": str(tmp_path),
        "YOOL_BUDGET_TOKENS": "1000",
        "YOOL_BUDGET_USD": "0.25",
        "YOOL_BUDGET_TOOL_CALLS": "0",
        "YOOL_BUDGET_WALL_S": "90",
        "YOOL_PROVIDER": "anthropic",
        "YOOL_MODEL": "claude-test",
        "YOOL_MAILBOX_LIMIT": "8",
        "YOOL_EVENTS_RING": "16",
        "YOOL_AGING_S": "0.5",
        "YOOL_TOOLS": "agents,memory",
    }

    policy = RuntimePolicy.load(environ)

    assert policy.home == tmp_path
    assert (policy.budget_tokens, policy.budget_usd) == (1000, 0.25)
    assert (policy.budget_tool_calls, policy.budget_wall_s) == (0, 90.0)
    assert (policy.provider, policy.model) == ("anthropic", "claude-test")
    assert (policy.mailbox_limit, policy.events_ring, policy.aging_s) == (8, 16, 0.5)
    assert policy.tools == frozenset({"agents", "memory"})
    sources = policy.sources()
    for variable in environ:
        assert sources[variable.removeprefix("YOOL_").lower()] == f"env {variable}"


def test_unset_knobs_report_default_as_their_source() -> None:
    sources = RuntimePolicy.load({"YOOL_QUEUE_MAXSIZE": "9"}).sources()

    assert sources.pop("queue_maxsize") == "env YOOL_QUEUE_MAXSIZE"
    assert set(sources.values()) == {"default"}
    assert set(sources) | {"queue_maxsize"} == set(RuntimePolicy.model_fields)


def test_only_reference_knobs_have_yool_tuple_aliases() -> None:
    policy = RuntimePolicy.load({"YOOL_TUPLE_MAILBOX_LIMIT": "3"})

    assert policy.mailbox_limit == 1024
    assert policy.sources()["mailbox_limit"] == "default"


def test_load_without_a_mapping_reads_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("YOOL_TUPLE_BATCH_SMALL_TASK_SIZE", "5")

    assert RuntimePolicy.load().batch_small_task_size == 5


def test_direct_construction_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOOL_LANE_CONCURRENCY", "7")

    policy = RuntimePolicy(cpu_quota_pct=10)

    assert policy.lane_concurrency == 32
    assert policy.sources()["cpu_quota_pct"] == "argument"
    assert policy.sources()["lane_concurrency"] == "default"


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("YOOL_LANE_CONCURRENCY", "abc", "expected an integer from 1 to 1024"),
        ("YOOL_TUPLE_LANE_CONCURRENCY", "0", "expected an integer from 1 to 1024"),
        ("YOOL_MAX_LANE_CONCURRENCY", "2000", "expected an integer from 1 to 1024"),
        ("YOOL_CPU_QUOTA_PCT", "101", "expected an integer from 1 to 100"),
        ("YOOL_TUPLE_CPU_QUOTA_PCT", "0", "expected an integer from 1 to 100"),
        ("YOOL_API_MAX_RETRIES", "-1", "expected an integer from 0 to 100"),
        ("YOOL_QUEUE_MAXSIZE", "1.5", "expected an integer from 1 to 10000000"),
        ("YOOL_CACHE_TTL_S", "0", "expected a number > 0 and <= 31536000"),
        ("YOOL_CIRCUIT_COOLDOWN_S", "nan", "expected a number > 0 and <= 86400"),
        ("YOOL_CONTEXT_COMPRESSION_CHARS", "10", "expected an integer from 64 to 10000000"),
        ("YOOL_BUDGET_TOKENS", "lots", "expected an integer >= 0, or 'unlimited'"),
        ("YOOL_BUDGET_USD", "-0.5", "expected a number >= 0, or 'unlimited'"),
        ("YOOL_BUDGET_WALL_S", "0", "expected a number > 0, or 'unlimited'"),
        ("YOOL_EVENTS_RING", "8", "expected an integer from 16 to 10000000"),
        ("YOOL_AGING_S", "-1", "expected a number > 0 and <= 86400"),
        ("YOOL_PROVIDER", "gpt", "expected one of: scripted, anthropic, openai, sampling"),
    ],
)
def test_invalid_value_names_the_variable_the_value_and_the_accepted_range(
    variable: str, value: str, accepted: str
) -> None:
    assert problem({variable: value}) == f"{variable}={value!r}: {accepted}"


def test_unknown_tool_group_is_named_with_the_accepted_groups() -> None:
    message = problem({"YOOL_TOOLS": "agents,bogus"})

    assert message.startswith("YOOL_TOOLS='agents,bogus': unknown tool group 'bogus'")
    assert all(group in message for group in TOOL_GROUPS)


def test_unknown_tool_group_is_an_error_even_beside_all() -> None:
    assert "unknown tool group 'bogus'" in problem({"YOOL_TOOLS": "all,bogus"})


def test_tools_all_switches_on_every_group_and_names_are_case_insensitive() -> None:
    assert RuntimePolicy.load({"YOOL_TOOLS": "all"}).tools == TOOL_GROUPS
    assert RuntimePolicy.load({"YOOL_TOOLS": " Memory, CODE "}).tools == {"memory", "code"}


@pytest.mark.parametrize("variable", ["YOOL_QUEUE_MAXSIZE", "YOOL_BUDGET_USD", "YOOL_MODEL"])
def test_empty_value_is_an_error_not_the_default(variable: str) -> None:
    assert problem({variable: ""}).startswith(f"{variable}='': expected")


@pytest.mark.parametrize("variable", ["YOOL_TOOLS", "YOOL_HOME"])
def test_empty_list_or_path_is_an_error_not_the_default(variable: str) -> None:
    assert problem({variable: " "}).startswith(f"{variable}=' ': ")


def test_every_bad_variable_is_reported_together_one_per_line() -> None:
    message = problem(
        {
            "YOOL_TUPLE_QUEUE_MAXSIZE": "many",
            "YOOL_PROVIDER": "nope",
            "YOOL_CPU_QUOTA_PCT": "200",
            "YOOL_LANE_CONCURRENCY": "8",
        }
    )

    assert message.splitlines() == [
        "YOOL_CPU_QUOTA_PCT='200': expected an integer from 1 to 100",
        "YOOL_TUPLE_QUEUE_MAXSIZE='many': expected an integer from 1 to 10000000",
        "YOOL_PROVIDER='nope': expected one of: scripted, anthropic, openai, sampling",
    ]


def test_our_name_and_the_alias_disagreeing_is_an_error_naming_both() -> None:
    message = problem({"YOOL_CACHE_TTL_S": "10", "YOOL_TUPLE_CACHE_TTL_S": "20"})

    assert "YOOL_CACHE_TTL_S='10'" in message
    assert "YOOL_TUPLE_CACHE_TTL_S='20'" in message


def test_alias_conflict_is_reported_with_the_other_errors() -> None:
    message = problem(
        {"YOOL_LANE_CONCURRENCY": "4", "YOOL_TUPLE_LANE_CONCURRENCY": "5", "YOOL_AGING_S": "x"}
    )

    assert len(message.splitlines()) == 2
    assert message.splitlines()[0].startswith("YOOL_LANE_CONCURRENCY='4' and ")
    assert message.splitlines()[1].startswith("YOOL_AGING_S='x'")


def test_our_name_and_the_alias_agreeing_is_fine_and_ours_is_the_source() -> None:
    policy = RuntimePolicy.load({"YOOL_LANE_CONCURRENCY": "4", "YOOL_TUPLE_LANE_CONCURRENCY": "4"})

    assert policy.lane_concurrency == 4
    assert policy.sources()["lane_concurrency"] == "env YOOL_LANE_CONCURRENCY"


def test_lane_concurrency_above_its_ceiling_names_both_variables() -> None:
    message = problem({"YOOL_TUPLE_LANE_CONCURRENCY": "50", "YOOL_MAX_LANE_CONCURRENCY": "40"})

    assert message == (
        "YOOL_TUPLE_LANE_CONCURRENCY='50' is above YOOL_MAX_LANE_CONCURRENCY='40': "
        "YOOL_TUPLE_LANE_CONCURRENCY must not exceed YOOL_MAX_LANE_CONCURRENCY"
    )


def test_lane_concurrency_above_the_default_ceiling_names_the_ceilings_variable() -> None:
    message = problem({"YOOL_LANE_CONCURRENCY": "100"})

    assert "YOOL_LANE_CONCURRENCY='100'" in message
    assert "YOOL_MAX_LANE_CONCURRENCY=64 (default)" in message


def test_both_crossed_limits_are_reported() -> None:
    message = problem({"YOOL_API_BACKOFF_BASE_MS": "6000", "YOOL_MAX_LANE_CONCURRENCY": "8"})

    first, second = message.splitlines()
    assert "YOOL_LANE_CONCURRENCY=32 (default) is above YOOL_MAX_LANE_CONCURRENCY='8'" in first
    assert "YOOL_API_BACKOFF_BASE_MS='6000' is above YOOL_API_BACKOFF_MAX_MS=5000" in second


def test_limits_equal_to_their_ceiling_are_fine() -> None:
    policy = RuntimePolicy.load({"YOOL_LANE_CONCURRENCY": "64", "YOOL_API_BACKOFF_BASE_MS": "5000"})

    assert policy.lane_concurrency == policy.max_lane_concurrency


def test_direct_construction_checks_the_limits_too() -> None:
    with pytest.raises(ValidationError, match="lane_concurrency must not exceed"):
        RuntimePolicy(lane_concurrency=65)


@pytest.mark.parametrize("field", BUDGETS)
@pytest.mark.parametrize("word", ["none", "Unlimited", "OFF"])
def test_budget_can_be_lifted_with_a_word(field: str, word: str) -> None:
    policy = RuntimePolicy.load({ours(field): word})

    assert getattr(policy, field) is None
    assert policy.sources()[field] == f"env {ours(field)}"


def test_provider_name_is_case_insensitive() -> None:
    assert RuntimePolicy.load({"YOOL_PROVIDER": "OpenAI"}).provider == "openai"


def test_policy_is_immutable() -> None:
    policy = RuntimePolicy.load({})

    with pytest.raises(ValidationError):
        policy.lane_concurrency = 1
    assert policy.lane_concurrency == 32
    assert hash(policy) == hash(RuntimePolicy.load({}))


def test_describe_gives_each_knob_its_variable_value_source_and_meaning(tmp_path: Path) -> None:
    rows = RuntimePolicy.load(
        {"YOOL_TUPLE_CACHE_MAX_ENTRIES": "10", "YOOL_HOME": str(tmp_path)}
    ).describe()

    by_field = {row.field: row for row in rows}
    assert list(by_field) == list(RuntimePolicy.model_fields)
    assert all(row.meaning for row in rows)
    cache = by_field["cache_max_entries"]
    assert (cache.env, cache.value) == ("YOOL_TUPLE_CACHE_MAX_ENTRIES", 10)
    assert cache.source == "env YOOL_TUPLE_CACHE_MAX_ENTRIES (alias)"
    assert by_field["lane_concurrency"].env == "YOOL_LANE_CONCURRENCY"
    assert by_field["home"].value == str(tmp_path)
    assert by_field["tools"].value == sorted(TOOL_GROUPS)
    json.dumps([row.value for row in rows])


# The `yool` command, end to end in a real interpreter.


def run_yool(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("YOOL_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.update(environ)
    return subprocess.run(
        [sys.executable, "-m", "yool", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_policy_prints_an_aligned_table_of_every_variable() -> None:
    done = run_yool("policy", YOOL_TUPLE_QUEUE_MAXSIZE="77")

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["VARIABLE", "VALUE", "SOURCE", "MEANING"]
    assert len(lines) == 1 + len(RuntimePolicy.model_fields)
    value_column = lines[0].index("VALUE")
    assert all(line[value_column - 2 : value_column] == "  " for line in lines)
    queue = next(line for line in lines if line.startswith("YOOL_TUPLE_QUEUE_MAXSIZE "))
    variable, value, *source = queue.split()[:5]
    assert (variable, value) == ("YOOL_TUPLE_QUEUE_MAXSIZE", "77")
    assert source == ["env", "YOOL_TUPLE_QUEUE_MAXSIZE", "(alias)"]


def test_cli_policy_json_gives_env_value_and_source_per_field(tmp_path: Path) -> None:
    done = run_yool("policy", "--json", YOOL_HOME=str(tmp_path), YOOL_BUDGET_USD="unlimited")

    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert list(document) == list(RuntimePolicy.model_fields)
    home = {"env": "YOOL_HOME", "value": str(tmp_path), "source": "env YOOL_HOME"}
    assert document["home"] == home
    assert document["budget_usd"]["value"] is None
    assert document["lane_concurrency"] == {
        "env": "YOOL_LANE_CONCURRENCY",
        "value": 32,
        "source": "default",
    }


def test_cli_invalid_configuration_exits_2_naming_the_variable_without_a_traceback() -> None:
    done = run_yool("policy", YOOL_TUPLE_LANE_CONCURRENCY="abc")

    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == (
        "yool: invalid configuration: "
        "YOOL_TUPLE_LANE_CONCURRENCY='abc': expected an integer from 1 to 1024\n"
    )


def test_cli_lists_every_invalid_variable() -> None:
    done = run_yool("policy", "--json", YOOL_PROVIDER="x", YOOL_EVENTS_RING="1")

    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[0] == "yool: invalid configuration:"
    assert [line.split("=")[0].strip() for line in done.stderr.splitlines()[1:]] == [
        "YOOL_PROVIDER",
        "YOOL_EVENTS_RING",
    ]


def test_cli_without_a_command_prints_help_and_exits_2() -> None:
    done = run_yool()

    assert done.returncode == 2
    assert "usage: yool" in done.stderr
    assert "policy" in done.stderr


def test_cli_version() -> None:
    done = run_yool("--version")

    assert done.returncode == 0
    assert done.stdout.strip() == f"yool {yool.__version__}"
