"""The runtime policy: every tunable knob of yool, read once from `YOOL_*` environment variables.

The knobs shared with the tuple-space reference keep its defaults and also answer to its
`YOOL_TUPLE_*` names, so a setup written for the reference works unchanged.

Unlike the reference, a bad value is never silently replaced by a default or clamped into range:
`RuntimePolicy.load` raises `PolicyError` naming every offending variable, its value and what
would have been accepted. An empty value is a value like any other: no knob accepts it, so
`YOOL_X=` is an error rather than a quiet way of saying "default" (unset the variable instead).
"""

import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal, NamedTuple, get_args

import annotated_types
from pydantic import (
    AliasChoices,
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

__all__ = ["PROVIDERS", "TOOL_GROUPS", "PolicyError", "PolicyRow", "Provider", "RuntimePolicy"]

# Defaults of the knobs shared with the tuple-space reference (its DEFAULT_* constants).
DEFAULT_LANE_CONCURRENCY = 32
DEFAULT_MAX_LANE_CONCURRENCY = 64
DEFAULT_CPU_QUOTA_PCT = 95
DEFAULT_QUEUE_MAXSIZE = 8192
DEFAULT_COMPRESSION_THRESHOLD = 1024
DEFAULT_CACHE_MAX_ENTRIES = 16384
DEFAULT_CACHE_TTL_S = 3600.0
DEFAULT_API_MAX_RETRIES = 3
DEFAULT_API_BACKOFF_BASE_MS = 100
DEFAULT_API_BACKOFF_MAX_MS = 5000
DEFAULT_CIRCUIT_FAILURE_THRESHOLD = 5
DEFAULT_CIRCUIT_COOLDOWN_S = 30.0
DEFAULT_BATCH_SMALL_TASK_SIZE = 32
DEFAULT_CONTEXT_COMPRESSION_CHARS = 6000

Provider = Literal["scripted", "anthropic", "openai", "sampling"]
PROVIDERS: tuple[str, ...] = get_args(Provider)
TOOL_GROUPS: frozenset[str] = frozenset(
    {"agents", "personas", "memory", "prompts", "code", "tuples", "system"}
)
_UNLIMITED = frozenset({"none", "unlimited", "off"})
_BIG = 10_000_000


class PolicyError(ValueError):
    """The environment asks for a policy yool cannot run with; the message says what to fix."""


class PolicyRow(NamedTuple):
    """One knob as `yool policy` shows it."""

    field: str
    env: str
    value: Any
    """JSON-ready: a str, int, float, None or sorted list of str."""
    source: str
    meaning: str


def _knob(
    default: Any,
    name: str,
    meaning: str,
    *,
    reference: bool = False,
    **constraints: Any,
) -> Any:
    """A field read from `YOOL_<name>` and, for reference knobs, from `YOOL_TUPLE_<name>` too."""
    names = (f"YOOL_{name}", f"YOOL_TUPLE_{name}") if reference else (f"YOOL_{name}",)
    return Field(default, validation_alias=AliasChoices(*names), description=meaning, **constraints)


def _unlimited_as_none(value: object) -> object:
    """Let budgets be lifted with a word, since an unset variable means the default budget."""
    if isinstance(value, str) and value.strip().lower() in _UNLIMITED:
        return None
    return value


_Budget = BeforeValidator(_unlimited_as_none)


class _EnvironSource(EnvSettingsSource):
    """pydantic-settings' own environment source, reading a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return self._environ


class RuntimePolicy(BaseSettings):
    """Immutable runtime policy; build it with `RuntimePolicy.load()` to read the environment.

    Constructing it directly (`RuntimePolicy(lane_concurrency=4)`) never reads the environment,
    so code and tests get exactly the knobs they pass.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=True,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
    )

    # Knobs of the tuple-space reference.
    lane_concurrency: int = _knob(
        DEFAULT_LANE_CONCURRENCY,
        "LANE_CONCURRENCY",
        "driver slots per lane before adaptation",
        reference=True,
        ge=1,
        le=1024,
    )
    max_lane_concurrency: int = _knob(
        DEFAULT_MAX_LANE_CONCURRENCY,
        "MAX_LANE_CONCURRENCY",
        "ceiling adaptive lane concurrency may grow to",
        reference=True,
        ge=1,
        le=1024,
    )
    cpu_quota_pct: int = _knob(
        DEFAULT_CPU_QUOTA_PCT,
        "CPU_QUOTA_PCT",
        "share of host CPU yool may use, in percent",
        reference=True,
        ge=1,
        le=100,
    )
    queue_maxsize: int = _knob(
        DEFAULT_QUEUE_MAXSIZE,
        "QUEUE_MAXSIZE",
        "most tuples queued per lane",
        reference=True,
        ge=1,
        le=_BIG,
    )
    compression_threshold: int = _knob(
        DEFAULT_COMPRESSION_THRESHOLD,
        "COMPRESSION_THRESHOLD",
        "materialised agents kept before idle ones are compressed",
        reference=True,
        ge=1,
        le=_BIG,
    )
    cache_max_entries: int = _knob(
        DEFAULT_CACHE_MAX_ENTRIES,
        "CACHE_MAX_ENTRIES",
        "entries in the receipt cache (LRU)",
        reference=True,
        ge=1,
        le=_BIG,
    )
    cache_ttl_s: float = _knob(
        DEFAULT_CACHE_TTL_S,
        "CACHE_TTL_S",
        "seconds a cached receipt stays valid",
        reference=True,
        gt=0,
        le=365 * 86400,
        allow_inf_nan=False,
    )
    api_max_retries: int = _knob(
        DEFAULT_API_MAX_RETRIES,
        "API_MAX_RETRIES",
        "retries of a failed provider call (0 = none)",
        reference=True,
        ge=0,
        le=100,
    )
    api_backoff_base_ms: int = _knob(
        DEFAULT_API_BACKOFF_BASE_MS,
        "API_BACKOFF_BASE_MS",
        "first retry delay in ms, doubled per attempt, jittered",
        reference=True,
        ge=1,
        le=3_600_000,
    )
    api_backoff_max_ms: int = _knob(
        DEFAULT_API_BACKOFF_MAX_MS,
        "API_BACKOFF_MAX_MS",
        "longest retry delay in ms",
        reference=True,
        ge=1,
        le=3_600_000,
    )
    circuit_failure_threshold: int = _knob(
        DEFAULT_CIRCUIT_FAILURE_THRESHOLD,
        "CIRCUIT_FAILURE_THRESHOLD",
        "consecutive failures that open a provider's circuit",
        reference=True,
        ge=1,
        le=1_000_000,
    )
    circuit_cooldown_s: float = _knob(
        DEFAULT_CIRCUIT_COOLDOWN_S,
        "CIRCUIT_COOLDOWN_S",
        "seconds an open circuit waits before a trial call",
        reference=True,
        gt=0,
        le=86400,
        allow_inf_nan=False,
    )
    batch_small_task_size: int = _knob(
        DEFAULT_BATCH_SMALL_TASK_SIZE,
        "BATCH_SMALL_TASK_SIZE",
        "small tasks run together in one batch",
        reference=True,
        ge=1,
        le=1_000_000,
    )
    context_compression_chars: int = _knob(
        DEFAULT_CONTEXT_COMPRESSION_CHARS,
        "CONTEXT_COMPRESSION_CHARS",
        "context size in chars above which it is compressed",
        reference=True,
        ge=64,
        le=_BIG,
    )

    # yool's own knobs.
    home: Path = _knob(
        Path("~/.yool"),
        "HOME",
        "directory holding yool.db",
    )
    budget_tokens: Annotated[int | None, _Budget] = _knob(
        2_000_000, "BUDGET_TOKENS", "root session token budget (none = unlimited)", ge=0
    )
    budget_usd: Annotated[float | None, _Budget] = _knob(
        5.0,
        "BUDGET_USD",
        "root session spend budget in USD (none = unlimited)",
        ge=0,
        allow_inf_nan=False,
    )
    budget_tool_calls: Annotated[int | None, _Budget] = _knob(
        10_000, "BUDGET_TOOL_CALLS", "root session tool-call budget (none = unlimited)", ge=0
    )
    budget_wall_s: Annotated[float | None, _Budget] = _knob(
        None,
        "BUDGET_WALL_S",
        "root session wall-time budget in s (none = unlimited)",
        gt=0,
        allow_inf_nan=False,
    )
    provider: Provider = _knob("scripted", "PROVIDER", "LLM provider for sub-agents")
    model: str | None = _knob(
        None, "MODEL", "model name (none = the provider's default)", min_length=1
    )
    mailbox_limit: int = _knob(
        1024, "MAILBOX_LIMIT", "messages a mailbox holds before send waits", ge=1, le=_BIG
    )
    events_ring: int = _knob(4096, "EVENTS_RING", "events kept in memory", ge=16, le=_BIG)
    aging_s: float = _knob(
        1.0,
        "AGING_S",
        "seconds of waiting worth one priority level",
        gt=0,
        le=86400,
        allow_inf_nan=False,
    )
    heartbeat_s: float = _knob(
        5.0,
        "HEARTBEAT_S",
        "seconds between progress notifications while a call waits",
        ge=0.01,
        le=10,
        allow_inf_nan=False,
    )
    tools: Annotated[frozenset[str], NoDecode] = _knob(
        TOOL_GROUPS, "TOOLS", "tool groups switched on"
    )
    fast_lane: bool = _knob(
        True, "FAST_LANE", "answer read-only MCP calls on stdio without the SDK's dispatch"
    )
    sandbox_level: int = _knob(
        6,
        "SANDBOX_LEVEL",
        "lowest sandbox isolation level accepted: layers 0..N must all work (yool sandbox probe)",
        ge=0,
        le=6,
    )
    sandbox_zygotes: int = _knob(2, "SANDBOX_ZYGOTES", "warm sandbox zygote processes", ge=1, le=64)
    sandbox_timeout_s: float = _knob(
        10.0,
        "SANDBOX_TIMEOUT_S",
        "default wall-clock limit of one code run, s",
        gt=0,
        le=600,
        allow_inf_nan=False,
    )
    sandbox_memory_mb: int = _knob(
        512,
        "SANDBOX_MEMORY_MB",
        "address space (and cgroup memory) per code run, MiB",
        ge=64,
        le=65536,
    )
    sandbox_output_kb: int = _knob(
        1024,
        "SANDBOX_OUTPUT_KB",
        "stdout+stderr kept per code run before it is killed, KiB",
        ge=1,
        le=65536,
    )
    sandbox_disk_mb: int = _knob(
        64, "SANDBOX_DISK_MB", "workdir size (and largest file) per code run, MiB", ge=1, le=65536
    )
    sandbox_procs: int = _knob(
        32, "SANDBOX_PROCS", "processes and threads per code run", ge=1, le=4096
    )
    sandbox_uid: int = _knob(
        65534,
        "SANDBOX_UID",
        "uid (and its group) sandboxed code drops to when yool runs as root",
        ge=1,
        le=2**31 - 1,
    )

    # Multi-node (issue 9): off by default; nothing of yool.cluster loads unless it is on.
    cluster: Literal["off", "tcp", "ray"] = _knob(
        "off", "CLUSTER", "run with other yool nodes: off (one machine), tcp or ray"
    )
    node_id: str | None = _knob(None, "NODE_ID", "this node's id in a cluster (default: hostname)")
    cluster_listen: str = _knob(
        "127.0.0.1:0", "CLUSTER_LISTEN", "tcp cluster: host:port this node listens on"
    )
    cluster_peers: str = _knob(
        "", "CLUSTER_PEERS", "peer nodes: name=host:port,... (tcp) or names (ray)"
    )
    cluster_key: SecretStr | None = _knob(
        None, "CLUSTER_KEY", "shared HMAC key of the cluster (secret: shown redacted)"
    )
    cluster_key_file: Path | None = _knob(
        None, "CLUSTER_KEY_FILE", "file holding the shared HMAC key (instead of CLUSTER_KEY)"
    )
    cluster_window_s: float = _knob(
        30.0,
        "CLUSTER_WINDOW_S",
        "envelope freshness window and tolerated clock skew, s",
        gt=0,
        le=3600,
        allow_inf_nan=False,
    )
    cluster_max_pending: int = _knob(
        1024, "CLUSTER_MAX_PENDING", "envelopes queued per peer before sends are refused", ge=1
    )
    cluster_down_after_s: float = _knob(
        3.0,
        "CLUSTER_DOWN_AFTER_S",
        "a peer unreachable this long is down: its monitors get noconnection, s",
        gt=0,
        le=3600,
        allow_inf_nan=False,
    )
    ray_address: str | None = _knob(
        None, "RAY_ADDRESS", "ray cluster: address for ray.init (default: local)"
    )

    _env_used: Mapping[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only constructor arguments: `load` is the one door the environment comes in by."""
        return (init_settings,)

    @field_validator("home", mode="before")
    @classmethod
    def _home_not_empty(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise ValueError("empty path")
        return value

    @field_validator("home", mode="after")
    @classmethod
    def _home_absolute(cls, value: Path) -> Path:
        """Pin the directory now, so a later chdir cannot move the database."""
        return value.expanduser().absolute()

    @field_validator("provider", mode="before")
    @classmethod
    def _provider_lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("tools", mode="before")
    @classmethod
    def _tool_groups(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, Iterable):
            return value  # pydantic reports the type error
        names = {str(name).strip().lower() for name in value} - {""}
        if not names:
            raise ValueError("no tool group named")
        unknown = sorted(names - TOOL_GROUPS - {"all"})
        if unknown:
            raise ValueError(f"unknown tool group {', '.join(map(repr, unknown))}")
        return TOOL_GROUPS if "all" in names else frozenset(names)

    @model_validator(mode="after")
    def _limits_ordered(self) -> "RuntimePolicy":
        crossed = [
            (low, high)
            for low, high in (
                ("lane_concurrency", "max_lane_concurrency"),
                ("api_backoff_base_ms", "api_backoff_max_ms"),
            )
            if getattr(self, low) > getattr(self, high)
        ]
        if crossed:
            raise PydanticCustomError(
                "limits_ordered",
                "{detail}",
                {
                    "detail": "; ".join(f"{low} must not exceed {high}" for low, high in crossed),
                    "pairs": crossed,
                },
            )
        return self

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> "RuntimePolicy":
        """Build the policy from `environ` (default: os.environ); raise `PolicyError` if invalid."""
        env = os.environ if environ is None else environ
        used: dict[str, str] = {}
        problems: dict[str, str] = {}
        for name in cls.model_fields:
            present = [var for var in _env_names(name) if var in env]
            if present:
                used[name] = present[0]
            if len({env[var] for var in present}) > 1:
                shown = " and ".join(f"{var}={env[var]!r}" for var in present)
                problems[name] = f"{shown} disagree: set only one of them"

        values = _EnvironSource(cls, env)()
        for name in problems:
            for var in _env_names(name):
                values.pop(var, None)
        policy: RuntimePolicy | None = None
        try:
            policy = cls(**values)
        except ValidationError as exc:
            problems.update(_explain(exc, env, used) or {"": str(exc)})
        if problems or policy is None:
            order = ["", *cls.model_fields]
            raise PolicyError("\n".join(problems[key] for key in sorted(problems, key=order.index)))
        policy._env_used = MappingProxyType(used)
        return policy

    @property
    def db_path(self) -> Path:
        return self.home / "yool.db"

    def sources(self) -> dict[str, str]:
        """Where each knob's value came from: `env YOOL_X`, `env YOOL_TUPLE_X (alias)`, ..."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            var = self._env_used.get(name)
            if var is not None:
                alias = var != _env_names(name)[0]
                out[name] = f"env {var} (alias)" if alias else f"env {var}"
            elif name in self.model_fields_set:
                out[name] = "argument"
            else:
                out[name] = "default"
        return out

    def describe(self) -> list[PolicyRow]:
        """Every knob with its variable, value, source and meaning, in declaration order."""
        sources = self.sources()
        rows = []
        for name, info in type(self).model_fields.items():
            rows.append(
                PolicyRow(
                    field=name,
                    env=self._env_used.get(name, _env_names(name)[0]),
                    value=_plain(getattr(self, name)),
                    source=sources[name],
                    meaning=info.description or "",
                )
            )
        return rows


def _env_names(field: str) -> tuple[str, ...]:
    """The variables a field is read from, ours first."""
    alias = RuntimePolicy.model_fields[field].validation_alias
    assert isinstance(alias, AliasChoices)
    return tuple(str(choice) for choice in alias.choices)


def _plain(value: object) -> Any:
    """A JSON-ready form of a knob's value."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, SecretStr):
        return "(set, redacted)"  # a secret is never shown, only whether it is set
    return value


def _explain(
    exc: ValidationError, env: Mapping[str, str], used: Mapping[str, str]
) -> dict[str, str]:
    """One line per field, in the user's terms: the variable they set, not our field name."""
    fields = RuntimePolicy.model_fields
    by_key = {var: name for name in fields for var in _env_names(name)} | {n: n for n in fields}
    lines: dict[str, str] = {}
    for error in exc.errors():
        ctx = error.get("ctx", {})
        if error["type"] == "limits_ordered":
            for low, high in ctx["pairs"]:
                lines[low] = (
                    f"{_setting(low, env, used)} is above {_setting(high, env, used)}: "
                    f"{_var(low, used)} must not exceed {_var(high, used)}"
                )
            continue
        name = by_key.get(str(error["loc"][0])) if error["loc"] else None
        if name is None or name in lines:
            continue
        detail = f"{ctx['error']}; " if error["type"] == "value_error" else ""
        lines[name] = f"{_setting(name, env, used)}: {detail}expected {_accepted(fields[name])}"
    return lines


def _var(name: str, used: Mapping[str, str]) -> str:
    return used.get(name, _env_names(name)[0])


def _setting(name: str, env: Mapping[str, str], used: Mapping[str, str]) -> str:
    """`YOOL_X='raw'` as the user set it, or `YOOL_X=default (default)`."""
    var = used.get(name)
    if var is not None:
        return f"{var}={env[var]!r}"
    default = RuntimePolicy.model_fields[name].get_default(call_default_factory=True)
    return f"{_env_names(name)[0]}={_plain(default)} (default)"


def _accepted(info: FieldInfo) -> str:
    """What a field accepts, in words, from its declared type and bounds."""
    annotation = info.annotation
    nullable = type(None) in get_args(annotation)
    if nullable:
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    if annotation is bool:
        return "true or false (also 1/0, yes/no, on/off)"
    if annotation is int or annotation is float:
        text = "an integer" if annotation is int else "a number"
        text += _bounds(info)
        return f"{text}, or 'unlimited'" if nullable else text
    if get_args(annotation) and all(isinstance(arg, str) for arg in get_args(annotation)):
        return "one of: " + ", ".join(get_args(annotation))
    if annotation is Path:
        return "a directory path"
    if annotation == frozenset[str]:
        return "'all' or a comma list of: " + ", ".join(sorted(TOOL_GROUPS))
    return "a non-empty name, or leave it unset" if nullable else "a non-empty value"


def _bounds(info: FieldInfo) -> str:
    limits = {
        kind: _number(bound)
        for kind in ("ge", "gt", "le", "lt")
        for item in info.metadata
        if isinstance(item, annotated_types.BaseMetadata)
        and (bound := getattr(item, kind, None)) is not None
    }
    if "ge" in limits and "le" in limits:
        return f" from {limits['ge']} to {limits['le']}"
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    parts = [f"{signs[kind]} {word}" for kind, word in limits.items()]
    return " " + " and ".join(parts) if parts else ""


def _number(value: float) -> str:
    return str(int(value)) if math.isfinite(value) and value == int(value) else str(value)
