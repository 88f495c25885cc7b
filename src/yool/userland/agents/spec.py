"""What an agent is told (`AgentSpec`) and what it reports back (`AgentResult`).

Both are plain frozen dataclasses so they travel in messages and spawn
arguments unchanged. Device capabilities are found by the driver name they
target (`llm`, `files`, `kv`, `tools`, `sandbox` by default), so a parent hands a child a
device simply by moving (a derived copy of) the capability.
"""

from __future__ import annotations

from dataclasses import dataclass

from yool.drivers.llm.types import ToolSpec

DEFAULT_SYSTEM = (
    "You are a capable autonomous agent. Break the task into steps and keep going — "
    "investigate with tools, then act — until it is fully done; never stop at a plan or a "
    "partial result. Verify before answering, then reply concisely."
)
HARD_MAX_STEPS = 384

# AgentResult.reason values. Only "completed" means the agent finished on its own terms.
COMPLETED = "completed"  # a final answer, no tool calls
STALLED = "stalled"  # no progress for `stall_limit` steps: forced to answer without tools
STEP_LIMIT = "step_limit"  # the hard ceiling was reached: forced to answer without tools


@dataclass(frozen=True, slots=True)
class AgentSpec:
    """How an agent runs. Limits are in model steps (one LLM request each)."""

    system: str = DEFAULT_SYSTEM
    reply_to: str | None = None  # a process capability (send right) for the AgentResult
    model: str | None = None
    max_tokens: int = 1024  # per LLM reply
    # step limit: starts at base_steps, grows by base_steps while progressing, up to max_steps
    base_steps: int = 16
    max_steps: int = 64
    stall_limit: int = 3  # steps in a row without progress before a forced answer
    max_tool_chars: int = 8000  # a tool result longer than this is cut, with a marker
    reuse_results: bool = True  # an identical call in a later step reuses the earlier result
    reflect: bool = False  # one more LLM pass reviews the final answer and may send it back
    max_revisions: int = 1
    delegate_after: int | None = 6  # read/search calls in a row before steering to `delegate`
    child_share: float = 0.5  # at most this share of the remaining budget goes to one child
    depth: int = 0  # how deep in a delegation chain this agent is
    max_depth: int = 2  # a child at this depth gets no spawn capability
    recall_k: int = 3  # swapped-out segments recalled per step once memory has paged
    note: str = ""  # a user turn added before step `note_at` (a fork's changed instruction)
    note_at: int = 0
    tools: tuple[ToolSpec, ...] = ()  # the tools device's tools this agent may call
    # driver names of the devices the agent looks for among its capabilities
    llm_device: str = "llm"
    files_device: str = "files"
    kv_device: str = "kv"
    tools_device: str = "tools"
    sandbox_device: str = "sandbox"


@dataclass(frozen=True, slots=True)
class AgentResult:
    """Sent to the parent when an agent ends; `reason` is never "completed" on failure."""

    answer: str
    steps: int
    tokens: int
    usd: float
    reason: str
    pid: int = 0
