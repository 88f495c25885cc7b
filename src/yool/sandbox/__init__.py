"""Sandboxed code execution: layered isolation, a warm zygote pool, callbacks to the kernel.

`Pool(Config(...)).run(Task(code))` runs a Python (or shell) snippet in a child forked from a
warm zygote, under every isolation layer this machine offers (see `probe`): the supervisor
(env allowlist, fresh workdir, wall clock, output cap), rlimits, a uid drop when root,
Landlock, seccomp, bubblewrap and cgroups. The pool fails closed below the policy's level.
The kernel reaches it through `yool.drivers.sandbox` and MCP clients through `code_run`.
"""

from yool.sandbox.pool import CallbackRefused, Config, Pool
from yool.sandbox.probe import Probe, SandboxUnavailable, probe
from yool.sandbox.spec import Limits, RunResult, Task

__all__ = [
    "CallbackRefused",
    "Config",
    "Limits",
    "Pool",
    "Probe",
    "RunResult",
    "SandboxUnavailable",
    "Task",
    "probe",
]
