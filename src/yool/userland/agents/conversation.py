"""The conversation agent: a long-lived agent answering the questions in its mailbox.

Send it `Ask(text, reply_to)` (handing over the `reply_to` process capability
with the message) and it answers `Answer(...)` there, after the same tool loop
as the ReAct agent. The whole conversation stays in its working memory, so a
later question can build on an earlier answer. It exits normally on `Term`
(it traps the terminate signal) or on the message "stop"; other messages are
ignored. A question that fails gets an `Answer` whose reason says why; running
out of budget answers with `quota(...)` and exits with that reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from yool.drivers.llm.types import Msg
from yool.kernel.errors import KernelError, QuotaExceeded
from yool.kernel.messages import Term
from yool.kernel.sys import Sys
from yool.userland.agents.react import Memory, Progress, open_agent, run_turn
from yool.userland.agents.spec import AgentSpec


@dataclass(frozen=True, slots=True)
class Ask:
    text: str
    reply_to: str  # a process capability with the send right, handed over with the message


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    steps: int
    tokens: int  # spent so far by the whole conversation (and its sub-agents)
    usd: float
    reason: str  # "completed", "stalled", "step_limit", "quota(...)", "fault(...)"


async def conversation_agent(sys: Sys, spec: AgentSpec | None = None) -> None:
    spec = spec or AgentSpec()
    sys.trap_term()
    llm, box = await open_agent(sys, spec)
    mem = Memory(sys)
    while True:
        msg = await sys.recv()
        body = msg.body
        if isinstance(body, Term) or body == "stop":
            return
        if not isinstance(body, Ask):
            continue
        await mem.add(Msg("user", body.text))
        progress = Progress()
        try:
            await run_turn(sys, llm, box, spec, mem, progress)
        except QuotaExceeded as e:
            await _answer(sys, body, progress, f"quota({e.resource})")
            raise
        except KernelError as e:
            await _answer(sys, body, progress, f"fault({type(e).__name__}: {e})")
            continue
        await _answer(sys, body, progress, progress.reason)


async def _answer(sys: Sys, ask: Ask, progress: Progress, reason: str) -> None:
    used = sys.usage()
    answer = Answer(
        progress.answer, progress.steps, int(used["tokens"]), float(used["usd"]), reason
    )
    try:
        await sys.send(ask.reply_to, answer)
        sys.revoke(ask.reply_to)  # used once; it must not pile up (or become a messaging peer)
    except KernelError:
        pass  # no (longer a) valid reply capability: nobody to answer
