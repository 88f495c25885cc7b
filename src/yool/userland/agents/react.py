"""The ReAct agent: think with the LLM device, act with capability-backed tools, repeat.

`react_agent(sys, task, spec)` is an image (registered as "yool.react" by
`register_agents`). Each step sends the system prompt, the history from the
process's working memory and the tool specs to the LLM device; the tool calls
of the reply run (identical calls once, all concurrently), their capped
results go back into memory, and the loop repeats until a reply with no tool
calls. The semantics are the agent-OS reference's:

- the step limit starts at `base_steps` and grows by `base_steps` whenever a
  step near the limit made progress, up to `max_steps`; the last step offers no
  tools, so the model must answer;
- progress is a fresh (not repeated) call that did not fail; `stall_limit`
  steps in a row without progress force a final answer (no tools, a note to
  answer now);
- identical calls (same name, same arguments) run once per turn and every call
  id gets the result; with `reuse_results`, a call identical to one of an
  earlier step is answered from that step's result and is not progress;
- results longer than `max_tool_chars` are cut, with a marker saying how much;
- with `reflect`, a final answer is reviewed by one more LLM pass; a
  correction goes back as a user turn and the loop continues (at most
  `max_revisions` times);
- after `delegate_after` read/search calls in a row, a note steers the agent to
  `delegate`, and the read/search tools are withheld for that step.

Working memory is the kernel context: every turn is remembered; when memory has
paged, the segments that best match the latest turn are recalled before each
request. The parent gets an `AgentResult` at the end; the exit reason is the
kernel's (a budget overrun exits `quota(tokens)` and the result says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from yool.drivers.llm.types import LLMRequest, LLMResponse, Msg, ToolCall
from yool.kernel.errors import KernelError, ProcessExit, QuotaExceeded
from yool.kernel.kernel import Kernel
from yool.kernel.sys import Sys
from yool.userland.agents.spec import (
    COMPLETED,
    HARD_MAX_STEPS,
    STALLED,
    STEP_LIMIT,
    AgentResult,
    AgentSpec,
)
from yool.userland.agents.tools import Toolbox, build_toolbox, result_text

STALL_NOTE = (
    "Stop searching — recent tool calls returned no usable data. Answer now, concisely, "
    "with what you already know, and state any uncertainty."
)
LIMIT_NOTE = "You have reached your step limit. Give your final answer now, without tools."
NO_ANSWER_NOTE = (
    "You did not produce a final answer. Take the next concrete step with a tool, or give "
    "your final answer now."
)
REFLECT_NOTE = (
    "Review your final answer above against the task. If it is correct and complete, reply "
    "exactly APPROVED. Otherwise reply with what is wrong and what to do instead."
)


TURN = "turn"  # the `log` event message of one transcript entry
TRANSCRIPT_CHARS = 4000  # of each turn's text kept in the transcript


def steer_note(n: int) -> str:
    return (
        f"You've made {n} direct file-read/search calls in a row — that floods your context. "
        "For broad investigation, call `delegate` instead: a sub-agent does it and returns a "
        "distilled answer. The read/search tools are withheld this round."
    )


def cap_result(text: str, limit: int) -> str:
    """`text`, cut to `limit` characters with a marker saying how much was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n…[truncated {len(text) - limit} chars]"


@dataclass(slots=True)
class Memory:
    """The agent's view of its kernel working memory: messages in the order they happened."""

    sys: Sys
    order: dict[str, int] = field(default_factory=dict)  # segment id -> sequence
    # segment id -> (the body it was parsed from, its Msg): a turn is parsed once, not per step
    parsed: dict[str, tuple[Any, Msg]] = field(default_factory=dict)

    async def add(self, msg: Msg, *, pin: bool = False) -> None:
        sid = await self.sys.remember(msg.to_json(), pin=pin)
        self.order[sid] = len(self.order)
        # The transcript: one event per turn, durable with the event log.
        self.sys.log(
            TURN,
            role=msg.role,
            text=msg.content[:TRANSCRIPT_CHARS],
            tools=[c.name for c in msg.tool_calls],
        )

    def resume(self) -> bool:
        """A restored agent carries on from the turns its snapshot's memory held, in order."""
        dumped = (self.sys.restored or {}).get("context") or ()
        turns = [
            e["id"]
            for e in dumped
            if isinstance(e, dict) and isinstance(e.get("body"), dict) and "role" in e["body"]
        ]
        for sid in sorted(turns, key=lambda i: int(i[1:]) if i[1:].isdigit() else 0):
            self.order[sid] = len(self.order)
        return bool(self.order)

    async def messages(self, query: str, k: int) -> list[Msg]:
        resident = self.sys.working_set()
        if k and len(resident) < len(self.order) and query.strip():
            await self.sys.recall(query, k)  # paged: bring back what bears on the latest turn
            resident = self.sys.working_set()
        summaries: list[Msg] = []
        turns: list[tuple[int, Msg]] = []
        for seg in resident:
            body = seg.body
            if seg.id in self.order and isinstance(body, dict) and "role" in body:
                hit = self.parsed.get(seg.id)
                if hit is None or hit[0] is not body:
                    hit = self.parsed[seg.id] = (body, Msg.from_json(body))
                turns.append((self.order[seg.id], hit[1]))
            elif seg.summary:
                text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
                summaries.append(Msg("user", f"(Summary of earlier context) {text}"))
        turns.sort(key=lambda t: t[0])
        return summaries + _paired([m for _, m in turns])


def _paired(messages: list[Msg]) -> list[Msg]:
    """Drop tool calls whose results paged out, and results whose call did (providers
    reject either orphan)."""
    results = {m.tool_call_id: m for m in messages if m.role == "tool" and m.tool_call_id}
    out: list[Msg] = []
    for m in messages:
        if m.role == "assistant" and m.tool_calls:
            calls = tuple(c for c in m.tool_calls if c.id in results)
            if calls:
                # all answered: the very Msg (equal to a rebuilt one, and its caches warm)
                whole = len(calls) == len(m.tool_calls) and m.tool_call_id is None
                out.append(m if whole and not m.is_error else Msg("assistant", m.content, calls))
                out.extend(results[c.id] for c in calls)
            elif m.content.strip():
                out.append(Msg("assistant", m.content))
        elif m.role != "tool":
            out.append(m)
    return out


@dataclass(slots=True)
class Progress:
    """How far a turn got: read by the caller even when the turn raised."""

    steps: int = 0
    answer: str = ""
    reason: str = COMPLETED


def _key(call: ToolCall) -> str:
    return call.name + ":" + json.dumps(call.arguments, sort_keys=True, default=str)


async def ask_llm(sys: Sys, llm: str, request: LLMRequest) -> LLMResponse:
    return LLMResponse.from_json(await sys.read(llm, request.payload()))


async def run_turn(
    sys: Sys, llm: str, box: Toolbox, spec: AgentSpec, mem: Memory, progress: Progress
) -> Progress:
    """Steps until a final answer (or a forced one); the history grows in `mem`."""
    ceil = max(1, min(spec.max_steps, HARD_MAX_STEPS))
    base = max(1, spec.base_steps)
    limit = min(base, ceil)
    stall_max = max(1, spec.stall_limit)
    cache: dict[str, tuple[Any, bool]] = {}
    stall = 0
    forced = False
    investigative = box.investigative()
    can_delegate = "delegate" in box.tools and spec.delegate_after is not None
    investigated = 0
    steered = False
    revisions = 0
    limit_noted = False
    query = ""
    noted = False
    while progress.steps < limit:
        if spec.note and progress.steps == spec.note_at and not noted:
            noted = True  # a fork's changed instruction, from this step on
            await mem.add(Msg("user", spec.note))
        no_tools = forced or progress.steps >= limit - 1 or not box.tools
        steer = can_delegate and investigated >= (spec.delegate_after or 0) and not no_tools
        if steer and not steered:
            steered = True
            await mem.add(Msg("user", steer_note(investigated)))
        if no_tools and not forced and box.tools and not limit_noted:
            limit_noted = True
            await mem.add(Msg("user", LIMIT_NOTE))
        offer = () if no_tools else box.specs(investigative if steer else frozenset())
        request = LLMRequest(
            tuple(await mem.messages(query, spec.recall_k)),
            system=spec.system,
            tools=offer,
            model=spec.model,
            max_tokens=spec.max_tokens,
        )
        reply = await ask_llm(sys, llm, request)
        progress.steps += 1
        if reply.tool_calls and not no_tools:
            calls = reply.tool_calls
            await mem.add(reply.as_message())
            keys = [_key(c) for c in calls]
            fresh: dict[str, ToolCall] = {}
            for call, key in zip(calls, keys, strict=True):
                if key not in fresh and not (spec.reuse_results and key in cache):
                    fresh[key] = call
            outs = await asyncio.gather(*(box.call(c.name, c.arguments) for c in fresh.values()))
            cache.update(zip(fresh, outs, strict=True))
            progressed = False
            texts: list[str] = []
            for call, key in zip(calls, keys, strict=True):
                value, is_error = cache[key]
                text = cap_result(result_text(value), spec.max_tool_chars)
                texts.append(text)
                await mem.add(Msg("tool", text, tool_call_id=call.id, is_error=is_error))
                if key in fresh and not is_error:
                    progressed = True
            query = " ".join([reply.text, *texts])[:2000]
            if can_delegate:
                inv = sum(1 for c in calls if c.name in investigative)
                if inv and inv == len(calls):
                    investigated += inv
                else:
                    investigated = 0
                    steered = False
            if progressed:
                stall = 0
                if progress.steps >= limit - 1 and limit < ceil:
                    limit = min(ceil, limit + base)  # progressing at the limit: more room
            else:
                stall += 1
                if stall >= stall_max:
                    forced = True
                    progress.reason = STALLED
                    await mem.add(Msg("user", STALL_NOTE))
            continue
        answer = reply.text
        await mem.add(Msg("assistant", answer))
        query = answer
        if (
            answer.strip()
            and spec.reflect
            and not forced
            and revisions < spec.max_revisions
            and progress.steps < limit - 1
        ):
            review = await ask_llm(
                sys,
                llm,
                LLMRequest(
                    (*await mem.messages(query, spec.recall_k), Msg("user", REFLECT_NOTE)),
                    system=spec.system,
                    model=spec.model,
                    max_tokens=spec.max_tokens,
                ),
            )
            verdict = review.text.strip()
            if verdict and verdict.rstrip(".").upper() != "APPROVED":
                revisions += 1
                limit = min(ceil, limit + base)
                await mem.add(Msg("user", f"A review of your answer says: {verdict}"))
                continue
        progress.answer = answer
        if answer.strip() or progress.steps >= limit:
            break
        await mem.add(Msg("user", NO_ANSWER_NOTE))
    if progress.reason == COMPLETED and (limit_noted or not progress.answer.strip()):
        progress.reason = STEP_LIMIT
    return progress


async def open_agent(sys: Sys, spec: AgentSpec) -> tuple[str, Toolbox]:
    """Open the LLM device and build the toolbox from the capabilities held."""
    dev = sys.cap("device", spec.llm_device)
    if dev is None:
        raise KernelError(f"agent pid {sys.pid} holds no {spec.llm_device!r} device capability")
    return await sys.open(dev), await build_toolbox(sys, spec)


def _result(sys: Sys, progress: Progress, reason: str) -> AgentResult:
    used = sys.usage()
    return AgentResult(
        progress.answer, progress.steps, int(used["tokens"]), float(used["usd"]), reason, sys.pid
    )


async def _report(sys: Sys, spec: AgentSpec, result: AgentResult) -> None:
    if spec.reply_to is not None:
        # A revoked reply capability is no error: the exit reason still tells the parent.
        with contextlib.suppress(KernelError):
            await sys.send(spec.reply_to, result)


async def react_agent(sys: Sys, task: str, spec: AgentSpec | None = None) -> None:
    """The image: do `task`, send an `AgentResult` to `spec.reply_to`, exit normally."""
    spec = spec or AgentSpec()
    progress = Progress()
    try:
        llm, box = await open_agent(sys, spec)
        mem = Memory(sys)
        if not mem.resume():
            await mem.add(Msg("user", task), pin=True)
        await run_turn(sys, llm, box, spec, mem, progress)
    except QuotaExceeded as e:
        await _report(sys, spec, _result(sys, progress, f"quota({e.resource})"))
        raise
    except ProcessExit:
        raise
    except Exception as e:
        await _report(sys, spec, _result(sys, progress, f"fault({type(e).__name__}: {e})"))
        raise
    await _report(sys, spec, _result(sys, progress, progress.reason))


def register_agents(kernel: Kernel) -> None:
    """Make the agents spawnable by name: "yool.react" and "yool.conversation"."""
    from yool.userland.agents.conversation import conversation_agent

    kernel.register_image("yool.react", react_agent)
    kernel.register_image("yool.conversation", conversation_agent)
