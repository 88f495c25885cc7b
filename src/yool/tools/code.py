"""The `code_run` operation: a snippet run in the sandbox device, as the session process.

The run goes through the session's sandbox capability (`yool.drivers.sandbox`), so it is
journaled, charged one tool call against the session budget, and its callbacks act with the
session's capabilities. A machine below `YOOL_SANDBOX_LEVEL` refuses it (fail closed) with the
missing layers named.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from yool.kernel import KernelError
from yool.tools.table import Args, Call, OpError, Result, operation


class CodeRunArgs(Args):
    code: str = Field(min_length=1, max_length=100_000)
    lang: Literal["python", "sh"] = "python"
    files: dict[str, str] | None = Field(None, description="input files: relative path -> text")
    timeout_s: float | None = Field(None, gt=0, le=600)
    subprocess: bool = Field(False, description="allow fork/exec")


class CodeRunResult(Result):
    reason: str
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    files: dict[str, str] = Field(default_factory=dict)
    layers: list[str] = Field(default_factory=list)
    wall_ms: float = 0.0
    cpu_ms: float = 0.0
    max_rss_kb: int = 0
    error: str | None = None


@operation("code")
async def code_run(call: Call, args: CodeRunArgs) -> CodeRunResult:
    """Run Python (or sh) in the sandbox; returns output, exit status and active layers."""
    request: dict[str, Any] = {"code": args.code, "lang": args.lang, "subprocess": args.subprocess}
    if args.files:
        request["files"] = args.files
    if args.timeout_s is not None:
        request["timeout_s"] = args.timeout_s
    session = call.session
    try:
        value = await session.sys.read(await session.sandbox_handle(), request)
    except KernelError as e:
        raise OpError(str(e).removeprefix("sandbox: ")) from None
    fields = set(CodeRunResult.model_fields)
    return CodeRunResult(**{k: v for k, v in value.items() if k in fields})
