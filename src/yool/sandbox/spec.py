"""What one run asks for (`Task`, `Limits`) and what it got (`RunResult`).

The host turns a `Task` into the plain JSON a zygote receives (`ChildSpec`), so nothing but
data crosses into the sandbox: the code, its workdir, its limits and the layers to apply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Lang = Literal["python", "sh"]

# How a run ended.
EXITED = "exited"  # the code ran to its end (exit status in `exit_code`)
SIGNALLED = "signalled"  # a signal ended it (a limit of its own, e.g. SIGXCPU, or SIGSEGV)
TIMEOUT = "timeout"  # the wall clock ran out: SIGTERM, then SIGKILL over the whole tree
OUTPUT_LIMIT = "output_limit"  # stdout+stderr passed the byte cap: killed
DISK_LIMIT = "disk_limit"  # the workdir passed its size cap: killed
CANCELLED = "cancelled"  # the caller went away: killed
SANDBOX_ERROR = "sandbox_error"  # the sandbox could not be set up; the code did not run


@dataclass(frozen=True, slots=True)
class Limits:
    wall_s: float = 10.0
    cpu_s: int = 10
    memory_bytes: int = 512 << 20
    output_bytes: int = 1 << 20
    disk_bytes: int = 64 << 20
    procs: int = 32
    open_files: int = 64


@dataclass(frozen=True, slots=True)
class Task:
    code: str
    lang: Lang = "python"
    files: dict[str, str] = field(default_factory=dict)  # written into the workdir first
    env: dict[str, str] = field(default_factory=dict)  # added to the sandbox's allowlist
    subprocess: bool = False  # allow fork and exec (a shell task implies it)
    limits: Limits = field(default_factory=Limits)


@dataclass(slots=True)
class RunResult:
    reason: str
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    wall_ms: float = 0.0
    cpu_ms: float = 0.0
    max_rss_kb: int = 0
    memory_peak_kb: int | None = None
    layers: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason == EXITED and self.exit_code == 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """The zygote's instructions for one child (JSON on the wire)."""

    id: int
    code: str
    lang: str
    workdir: str
    env: dict[str, str]
    limits: dict[str, Any]
    allow_fork: bool
    allow_exec: bool
    uid: int | None  # drop to this uid/gid (root only)
    gid: int | None
    nproc: int | None  # RLIMIT_NPROC, where it bounds something
    landlock_abi: int
    seccomp: bool
    read_only: list[str]
    read_write_files: list[str]

    def to_json(self) -> dict[str, Any]:
        # Shallow (asdict deep-copies): the pool builds each spec fresh and only encodes it.
        return {name: getattr(self, name) for name in _CHILD_FIELDS}


_CHILD_FIELDS = tuple(f.name for f in fields(ChildSpec))
