"""Exit reasons: every process ends with exactly one, and it is true.

The vocabulary is Erlang/OTP's: `normal`, `fault(error)`, `quota(resource)`,
`killed(by)`, `deadline`, `shutdown`; plus `interrupted` for a process whose
kernel stopped underneath it (found after a restart), `noproc` in a `Down`
about a pid this kernel no longer remembers, and `noconnection` in a `Down` about a
process on another node that became unreachable (Erlang's word).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal[
    "normal",
    "fault",
    "quota",
    "killed",
    "deadline",
    "shutdown",
    "interrupted",
    "noproc",
    "noconnection",
]


@dataclass(frozen=True, slots=True)
class ExitReason:
    kind: Kind
    detail: str | None = None  # fault: the error; quota: the resource
    by: int | None = None  # killed: the pid that sent the kill (0 = the kernel)

    @property
    def normal(self) -> bool:
        return self.kind == "normal"

    def __str__(self) -> str:
        if self.kind == "killed":
            return f"killed(by={self.by})"
        if self.detail is not None:
            return f"{self.kind}({self.detail})"
        return self.kind

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.detail is not None:
            out["detail"] = self.detail
        if self.by is not None:
            out["by"] = self.by
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExitReason:
        return cls(data["kind"], data.get("detail"), data.get("by"))


NORMAL = ExitReason("normal")
DEADLINE = ExitReason("deadline")
SHUTDOWN = ExitReason("shutdown")
INTERRUPTED = ExitReason("interrupted")
NOPROC = ExitReason("noproc")
NOCONNECTION = ExitReason("noconnection")


def fault(error: BaseException | str) -> ExitReason:
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    else:
        text = error
    return ExitReason("fault", text)


def quota(resource: str) -> ExitReason:
    return ExitReason("quota", resource)


def killed(by: int) -> ExitReason:
    return ExitReason("killed", by=by)
