"""Prompt evolution: a metered tournament of system prompts, scored by sub-agents.

A candidate system prompt is scored by running one sub-agent per eval item (no tools, the
candidate as its system prompt) and judging each answer with the item's checker
(`yool.personas.checkers`). Each run's fitness is, by default,
`correct*1000 - steps*2 - tokens/1000 - usd*10` (the weights are configurable), and a
candidate's score is its mean over the eval set, so a prompt that gets more answers right
wins and, among equally right ones, the cheaper one does.

The baseline is always scored first, then the user's variants (generation 0). Each further
generation asks an LLM (the mutator, `MUTATOR_SYSTEM`) to rewrite the best prompt so far,
showing it the eval items that prompt failed and the prompts already tried, and scores the
rewrites. Elitism: the best so far always survives, it is never re-scored and a worse
offspring never displaces it. The winner replaces the baseline only if its score beats the
baseline's by `margin`; otherwise the baseline is kept and the outcome says so.

Every LLM call here is an ordinary agent started with `run_agent`: charged to the session's
budget, journaled, visible in `ps` and `trace`, its origin `{"evolve": run id, ...}`. The
evolution's own budget (tokens and/or USD; required) is split so the agents of one step can
never jointly spend more than is left: before a step (a mutation, or scoring a candidate) its
cost is bounded by what the LLM device would reserve for it (and by the most a run has cost
so far); a step that cannot be afforded is not started, and evolution stops with the spend
and the reason. A candidate is counted as scored only when every one of its runs ended on
its own; if one runs out of budget its siblings are killed and the candidate is left
unscored. The kernel charges real usage, which may exceed an estimate, so the total can pass
the budget by at most that estimate error.

Lineage (parent, generation, origin) and scores are written to the store (kv namespace
`evolution`, one record per run id) as evolution goes, so they survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from yool.drivers.llm.driver import LLMDriver
from yool.drivers.llm.factory import resolve_model
from yool.drivers.llm.types import LLMRequest, Msg
from yool.kernel import ExitReason
from yool.kernel.context import estimate_tokens
from yool.kernel.store import Store
from yool.personas.checkers import Checker, sandbox_program
from yool.sandbox.spec import EXITED
from yool.tools.agents import MAX_TASK_CHARS, SpawnArgs, kill_all, run_agent
from yool.tools.session import ACTIVE, AgentRecord, Session
from yool.tools.table import OpError
from yool.userland.agents import AgentSpec

EVOLUTION_NS = "evolution"  # store kv namespace: one record per run id
RUN_MAX_STEPS = 4  # a scoring run has no tools: one step, a few more if it answers empty
RUN_DEADLINE_S = 600.0  # a hung provider call fails the run instead of hanging evolution
MAX_PROMPT_CHARS = MAX_TASK_CHARS
MAX_EVALS = 100
MAX_VARIANTS = 16
MAX_GENERATIONS = 20
MAX_POPULATION = 8
MAX_FAILURES_SHOWN = 5  # failed eval items shown to the mutator
MAX_TRIED_SHOWN = 6  # earlier prompts shown to the mutator, so it does not repeat them
SHOWN_CHARS = 400  # of each task, answer and earlier prompt in the mutator's brief
ANSWER_CHARS = 300  # of each answer kept in the lineage record
SETTLE_S = 5.0  # how long to wait for killed agents to end
SLACK_TOKENS = 16  # on top of a step's reservation estimate
MAX_TOKENS = AgentSpec().max_tokens  # what an agent asks per reply, hence reserves

MUTATOR_SYSTEM = (
    "You improve system prompts for LLM agents. You are given the CURRENT system prompt, "
    "the eval tasks it failed (what a passing answer looks like and what the agent "
    "answered) and prompts already tried. Write ONE improved system prompt that fixes the "
    "failures without breaking what already works. Keep it concise: every token is paid on "
    "every call. Output only the new system prompt: no preamble, no quotes, no code fence."
)

Origin = Literal["baseline", "user", "mutation"]
Stop = Literal["done", "budget"]
Progress = Callable[[float, float | None, str], Awaitable[None]]
Adopt = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Weights:
    """Fitness of one eval run: `correct*w.correct - steps*w.steps - tokens*w.tokens - ...`."""

    correct: float = 1000.0
    steps: float = 2.0
    tokens: float = 0.001
    usd: float = 10.0

    def fitness(self, correct: bool, steps: int, tokens: int, usd: float) -> float:
        return self.correct * correct - self.steps * steps - self.tokens * tokens - self.usd * usd

    @classmethod
    def of(cls, raw: Mapping[str, float] | None) -> Weights:
        """Defaults overridden by `raw`; an unknown or non-finite weight is an OpError."""
        if not raw:
            return cls()
        known = {f.name for f in fields(cls)}
        for key, value in raw.items():
            if key not in known:
                raise OpError(f"weights: unknown weight {key!r}; use {', '.join(sorted(known))}")
            if not math.isfinite(value):
                raise OpError(f"weights.{key}: {value} is not a finite number")
        return cls(**{k: float(v) for k, v in raw.items()})


@dataclass(frozen=True, slots=True)
class EvalCase:
    """One eval item: the task an agent is given, and how its answer is judged."""

    task: str
    check: Checker


CHECK_TIMEOUT_S = 10.0  # a python check's wall clock in the sandbox


async def judge(session: Session, check: Checker, answer: str) -> bool:
    """Whether `answer` passes `check`: a python check in the sandbox (charged to the session
    like any code run), the others in a worker thread (a regex or schema on a long answer is
    CPU work the event loop must not do)."""
    if not check.sandboxed:
        return await asyncio.to_thread(check, answer)
    request = {
        "code": sandbox_program(check),
        "files": {"answer.txt": answer},
        "timeout_s": CHECK_TIMEOUT_S,
    }
    value = await session.sys.read(await session.sandbox_handle(), request)
    return bool(value.get("reason") == EXITED and value.get("exit_code") == 0)


@dataclass(frozen=True, slots=True)
class Plan:
    """What to evolve and within what limits; `validate()` refuses bad input up front."""

    base: str
    cases: tuple[EvalCase, ...]
    budget_tokens: int | None = None
    budget_usd: float | None = None
    variants: tuple[str, ...] = ()
    generations: int = 0
    population: int = 2
    margin: float = 1.0
    weights: Weights = field(default_factory=Weights)
    persona: str | None = None  # the base came from this persona (the winner may replace it)
    provider: str | None = None
    model: str | None = None
    concurrency: int = 4

    def validate(self) -> None:
        if not self.base.strip():
            raise OpError("prompt: the base prompt is empty")
        if len(self.base) > MAX_PROMPT_CHARS:
            raise OpError(f"prompt: longer than {MAX_PROMPT_CHARS} chars")
        if not self.cases:
            raise OpError("evals: the eval set is empty; give at least one {task, check, want}")
        if len(self.cases) > MAX_EVALS:
            raise OpError(f"evals: {len(self.cases)} items; at most {MAX_EVALS}")
        for i, case in enumerate(self.cases):
            if not case.task.strip():
                raise OpError(f"evals[{i}].task: empty")
            if len(case.task) > MAX_TASK_CHARS:
                raise OpError(f"evals[{i}].task: longer than {MAX_TASK_CHARS} chars")
        if self.budget_tokens is None and self.budget_usd is None:
            raise OpError(
                "budget_tokens: evolution needs a budget (budget_tokens and/or budget_usd)"
            )
        if self.budget_tokens is not None and self.budget_tokens <= 0:
            raise OpError(f"budget_tokens: must be > 0, got {self.budget_tokens}")
        if self.budget_usd is not None and not (
            self.budget_usd > 0 and math.isfinite(self.budget_usd)
        ):
            raise OpError(f"budget_usd: must be > 0, got {self.budget_usd}")
        if not self.variants and self.generations <= 0:
            raise OpError("generations: give variants and/or generations >= 1 to evolve")
        if not 0 <= self.generations <= MAX_GENERATIONS:
            raise OpError(f"generations: must be 0..{MAX_GENERATIONS}, got {self.generations}")
        if not 1 <= self.population <= MAX_POPULATION:
            raise OpError(f"population: must be 1..{MAX_POPULATION}, got {self.population}")
        if len(self.variants) > MAX_VARIANTS:
            raise OpError(f"variants: {len(self.variants)} given; at most {MAX_VARIANTS}")
        for i, v in enumerate(self.variants):
            if not v.strip():
                raise OpError(f"variants[{i}]: empty")
            if len(v) > MAX_PROMPT_CHARS:
                raise OpError(f"variants[{i}]: longer than {MAX_PROMPT_CHARS} chars")
        if not math.isfinite(self.margin) or self.margin < 0:
            raise OpError(f"margin: must be >= 0, got {self.margin}")
        if self.concurrency < 1:
            raise OpError(f"concurrency: must be >= 1, got {self.concurrency}")


@dataclass(slots=True)
class Run:
    """One eval item answered under one candidate."""

    item: int
    correct: bool
    steps: int
    tokens: int
    usd: float
    fitness: float
    pid: int
    reason: str  # the agent's exit reason: normal, fault(...), deadline, ...
    answer: str  # clipped


@dataclass(slots=True)
class Candidate:
    """One prompt in the tournament and where it came from."""

    id: int
    prompt: str
    origin: Origin
    parent: int | None
    generation: int
    score: float | None = None  # None: not scored (evolution stopped first)
    correct: int = 0
    runs: list[Run] = field(default_factory=list)
    mutator_pid: int | None = None  # the agent that wrote it (origin "mutation")

    @property
    def scored(self) -> bool:
        return self.score is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Candidate:
        runs = [Run(**r) for r in data.get("runs", [])]
        return cls(**{**data, "runs": runs})


@dataclass(slots=True)
class Outcome:
    """How an evolution ended: the winner, whether it replaced the baseline, and the cost."""

    run_id: str
    baseline: Candidate
    winner: Candidate
    replaced: bool
    candidates: list[Candidate]
    tokens: int
    usd: float
    generations: int  # generations of mutation completed
    stop: Stop  # done: all planned work ran; budget: the next step could not be afforded
    why: str
    saved: bool = False  # the winner was saved as the persona's new prompt


class _Unaffordable(Exception):
    """The next step cannot be paid for: evolution stops cleanly."""


@dataclass(frozen=True, slots=True)
class _Need:
    tokens: int
    usd: float


class Evolution:
    """One evolution run on a session. `await Evolution(session, plan).run()`."""

    def __init__(
        self,
        session: Session,
        plan: Plan,
        *,
        run_id: str | None = None,
        progress: Progress | None = None,
        adopt: Adopt | None = None,
    ) -> None:
        plan.validate()
        self.session = session
        self.plan = plan
        self.run_id = run_id or f"evo-{secrets.token_hex(4)}"
        self.progress = progress
        self.adopt = adopt  # saves a winner that beat a persona's prompt
        self.candidates: list[Candidate] = []
        self.generations = 0
        self.skipped = 0  # variants and rewrites that were empty or repeated a known prompt
        self.failed: list[str] = []  # mutator agents that did not end normally: "#pid reason"
        self.started = time.time()
        self._done = 0.0  # the last progress value sent (it must only grow)
        self._max_run = _Need(0, 0.0)  # the most one scoring run has cost so far
        self._driver, self._model = self._llm()

    # -- the tournament -------------------------------------------------------------------

    async def run(self) -> Outcome:
        plan = self.plan
        stop: Stop = "done"
        why = "every planned candidate was scored"
        baseline = self._add(plan.base, "baseline", None, 0)
        self._persist("running")
        try:
            try:
                await self._score(baseline)
                for text in plan.variants:
                    if self._known(text):
                        self.skipped += 1
                        continue
                    await self._score(self._add(text, "user", baseline.id, 0))
                for generation in range(1, plan.generations + 1):
                    parent = self._best()
                    assert parent is not None  # the baseline was scored
                    for k in range(plan.population):
                        child = await self._mutate(parent, generation, k)
                        if child is not None:
                            await self._score(child)
                    self.generations = generation
            except _Unaffordable as e:
                stop, why = "budget", str(e)
        except asyncio.CancelledError:
            await self._end_agents()
            self._persist("cancelled", "the caller cancelled the evolution")
            raise
        except BaseException as e:
            await self._end_agents()
            self._persist("failed", f"{type(e).__name__}: {e}")
            raise
        await self._end_agents()
        if self.skipped:
            why += f"; {self.skipped} variant(s) or rewrite(s) were empty or repeats, not scored"
        if self.failed:
            why += f"; mutator runs that failed: {', '.join(self.failed[:3])}"
        outcome = self._outcome(stop, why)
        if outcome.replaced and plan.persona is not None and self.adopt is not None:
            try:
                await self.adopt(outcome.winner.prompt)
                outcome.saved = True
            except Exception as e:  # the evolution's result stands; say why it was not saved
                outcome.why += f"; the winner was not saved as persona {plan.persona!r}: {e}"
        self._persist("ended", outcome.why, outcome)
        return outcome

    def _add(self, prompt: str, origin: Origin, parent: int | None, generation: int) -> Candidate:
        cand = Candidate(len(self.candidates), prompt, origin, parent, generation)
        self.candidates.append(cand)
        return cand

    def _known(self, prompt: str) -> bool:
        text = prompt.strip()
        return any(c.prompt.strip() == text for c in self.candidates)

    def _best(self) -> Candidate | None:
        scored = [c for c in self.candidates if c.score is not None]
        if not scored:
            return None
        # the highest score; on a tie the earlier candidate (the baseline first)
        return max(scored, key=lambda c: (c.score, -c.id))

    def _outcome(self, stop: Stop, why: str) -> Outcome:
        baseline = self.candidates[0]
        best = self._best()
        replaced = (
            best is not None
            and best is not baseline
            and baseline.score is not None
            and best.score is not None
            and best.score > baseline.score + self.plan.margin
        )
        if best is baseline:
            why += "; no candidate scored above the baseline: the baseline is kept"
        elif best is not None and not replaced:
            why += (
                f"; the best candidate #{best.id} ({best.score:.2f}) did not beat the baseline "
                f"({baseline.score:.2f}) by the margin {self.plan.margin}: the baseline is kept"
            )
        tokens, usd = self._spent()
        return Outcome(
            run_id=self.run_id,
            baseline=baseline,
            winner=best if replaced and best is not None else baseline,
            replaced=replaced,
            candidates=list(self.candidates),
            tokens=tokens,
            usd=usd,
            generations=self.generations,
            stop=stop,
            why=why,
        )

    # -- scoring --------------------------------------------------------------------------

    async def _score(self, cand: Candidate) -> None:
        """Run every eval item under `cand`; its score is set only if every run ended."""
        plan = self.plan
        needs = [self._need(cand.prompt, case.task, scoring=True) for case in plan.cases]
        allots = self._allot(needs, f"scoring candidate #{cand.id}")
        gate = asyncio.Semaphore(min(plan.concurrency, len(plan.cases)))
        done = sum(1 for c in self.candidates if c.scored)
        ended = 0

        async def one(i: int) -> Run:
            nonlocal ended
            async with gate:
                record = await run_agent(
                    self.session,
                    self._spawn(plan.cases[i].task, cand.prompt, allots[i], RUN_MAX_STEPS),
                    origin={"evolve": self.run_id, "candidate": cand.id, "item": i},
                )
            reason = _reason(record)
            if reason.startswith("quota"):
                raise _Unaffordable(
                    f"candidate #{cand.id} was left unscored: its run on evals[{i}] ended "
                    f"{reason} (the evolution's budget, or the session's, ran out)"
                )
            answer = record.answer or ""
            correct = reason == "normal" and await judge(self.session, plan.cases[i].check, answer)
            ended += 1
            await self._report(
                done + ended / (len(plan.cases) + 1),
                f"scoring #{cand.id}: {ended}/{len(plan.cases)} runs ended",
            )
            return Run(
                item=i,
                correct=correct,
                steps=record.steps,
                tokens=record.tokens,
                usd=round(record.usd, 8),
                fitness=plan.weights.fitness(correct, record.steps, record.tokens, record.usd),
                pid=record.pid,
                reason=reason,
                answer=answer[:ANSWER_CHARS],
            )

        tasks = [asyncio.ensure_future(one(i)) for i in range(len(plan.cases))]
        try:
            runs = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        cand.runs = list(runs)
        cand.correct = sum(r.correct for r in runs)
        cand.score = round(sum(r.fitness for r in runs) / len(runs), 6)
        for r in runs:
            self._max_run = _Need(
                max(self._max_run.tokens, r.tokens), max(self._max_run.usd, r.usd)
            )
        self._persist("running")
        best = self._best()
        scored = sum(1 for c in self.candidates if c.scored)
        tokens, usd = self._spent()
        await self._report(
            scored,
            f"scored #{cand.id} ({cand.origin}, gen {cand.generation}): {cand.score:.2f}, "
            f"{cand.correct}/{len(runs)} correct; best #{best.id if best else '-'}; "
            f"spent {tokens} tokens ${usd:.4f}",
        )

    # -- mutation -------------------------------------------------------------------------

    async def _mutate(self, parent: Candidate, generation: int, k: int) -> Candidate | None:
        """Ask the mutator for a rewrite of `parent`; None if it adds nothing new."""
        plan = self.plan
        brief = self._brief(parent, k)
        own = self._need(MUTATOR_SYSTEM, brief, scoring=False)
        # a rewrite is only worth paying for if scoring it can be paid for afterwards
        after = [self._need(parent.prompt, case.task, scoring=True) for case in plan.cases]
        allot = self._allot([own, *after], f"mutating candidate #{parent.id}")[0]
        record = await run_agent(
            self.session,
            self._spawn(brief, MUTATOR_SYSTEM, allot, 2),
            origin={"evolve": self.run_id, "mutate": parent.id, "generation": generation},
        )
        reason = _reason(record)
        if reason.startswith("quota"):
            raise _Unaffordable(f"the mutation of candidate #{parent.id} ended {reason}")
        if reason != "normal":
            self.failed.append(f"#{record.pid} {reason}")
            return None
        text = _unwrap(record.answer or "")
        if not text or len(text) > MAX_PROMPT_CHARS or self._known(text):
            self.skipped += 1
            return None
        child = self._add(text, "mutation", parent.id, generation)
        child.mutator_pid = record.pid
        return child

    def _brief(self, parent: Candidate, k: int) -> str:
        """The mutator's task: the parent prompt, its failures, and what was tried."""
        n = len(parent.runs)
        lines = [
            f"CURRENT PROMPT (score {parent.score:.2f}, {parent.correct}/{n} eval tasks passed):",
            "<<<",
            parent.prompt[: MAX_TASK_CHARS // 2],
            ">>>",
            "",
        ]
        failures = [r for r in parent.runs if not r.correct][:MAX_FAILURES_SHOWN]
        if failures:
            lines.append("FAILURES:")
            for j, r in enumerate(failures, 1):
                case = self.plan.cases[r.item]
                lines.append(f"{j}. task: {_clip(case.task)}")
                lines.append(f"   a passing answer: {case.check.describe()}")
                got = _clip(r.answer) if r.answer else "(no answer)"
                lines.append(f"   the agent answered: {got}")
                if r.reason != "normal":
                    lines.append(f"   the agent ended: {r.reason}")
        else:
            lines.append(
                "Every eval task passed. Make the prompt cheaper (shorter prompt, shorter "
                "answers) without losing correctness."
            )
        others = [c for c in self.candidates if c is not parent][-MAX_TRIED_SHOWN:]
        if others:
            lines += ["", "ALREADY TRIED (do not repeat these):"]
            for c in others:
                score = "unscored" if c.score is None else f"score {c.score:.2f}"
                lines.append(f"- ({score}) {_clip(c.prompt)}")
        lines += ["", f"Write rewrite {k + 1} of {self.plan.population}."]
        return "\n".join(lines)[:MAX_TASK_CHARS]

    # -- budget ---------------------------------------------------------------------------

    def _llm(self) -> tuple[LLMDriver | None, str | None]:
        name, _cap = self.session.llm_device(self.plan.provider)
        driver = self.session.kernel.drivers.get(name)
        if not isinstance(driver, LLMDriver):
            return None, self.plan.model
        model = resolve_model(driver.provider, self.session.policy, self.plan.model)
        if (
            self.plan.budget_tokens is None
            and model is not None
            and not driver.prices.price(model).known
        ):
            raise OpError(
                f"budget_usd: model {model!r} has no known price, so a USD budget cannot "
                "bound it; give budget_tokens too (or a price via YOOL_PRICES)"
            )
        return driver, model

    def _need(self, system: str, task: str, *, scoring: bool) -> _Need:
        """The most one step may cost: what the LLM device reserves before its first call
        (the kernel refuses a call its budget cannot cover), and for a scoring run at least
        the most a scoring run has cost so far."""
        request = LLMRequest(
            (Msg("user", task),), system=system, model=self._model, max_tokens=MAX_TOKENS
        )
        if self._driver is not None:
            cost = self._driver.estimate(request)
            tokens, usd = cost.tokens, cost.usd
        else:
            tokens = estimate_tokens(system) + estimate_tokens(task) + MAX_TOKENS
            usd = 0.0
        tokens += SLACK_TOKENS
        if scoring:
            tokens, usd = max(tokens, self._max_run.tokens), max(usd, self._max_run.usd)
        return _Need(tokens, usd)

    def _left(self) -> tuple[float | None, float | None]:
        """What is left of the evolution's budget (and of the session's, if tighter)."""
        tokens, usd = self._spent()
        left_t = None if self.plan.budget_tokens is None else self.plan.budget_tokens - tokens
        left_u = None if self.plan.budget_usd is None else self.plan.budget_usd - usd
        session = self.session.usage().get("remaining", {})
        st, su = session.get("tokens"), session.get("usd")
        if st is not None:
            left_t = st if left_t is None else min(left_t, st)
        if su is not None:
            left_u = su if left_u is None else min(left_u, su)
        return left_t, left_u

    def _allot(self, needs: list[_Need], step: str) -> list[_Need]:
        """Budgets for a step's agents, in proportion to their needs and summing to no more
        than is left; `_Unaffordable` if what is left cannot cover every need."""
        left_t, left_u = self._left()
        need_t = sum(n.tokens for n in needs)
        need_u = sum(n.usd for n in needs)
        if left_t is not None and need_t > left_t:
            raise _Unaffordable(
                f"{step} needs up to {need_t} tokens and {max(0, int(left_t))} are left"
            )
        if left_u is not None and need_u > left_u:
            raise _Unaffordable(
                f"{step} needs up to ${need_u:.4f} and ${max(0.0, left_u):.4f} is left"
            )
        out = []
        for n in needs:
            tokens = n.tokens if left_t is None else int(left_t * n.tokens / max(1, need_t))
            if left_u is None:
                usd = n.usd
            elif need_u > 0:
                usd = left_u * n.usd / need_u
            else:
                usd = left_u / len(needs)
            out.append(_Need(tokens, usd))
        return out

    def _spawn(self, task: str, system: str, allot: _Need, max_steps: int) -> SpawnArgs:
        plan = self.plan
        return SpawnArgs.model_validate(
            {
                "task": task,
                "system": system,
                "tools": [],
                "provider": plan.provider,
                "model": plan.model,
                "budget_tokens": allot.tokens if plan.budget_tokens is not None else None,
                "budget_usd": round(allot.usd, 9) if plan.budget_usd is not None else None,
                "max_steps": max_steps,
                "deadline_s": RUN_DEADLINE_S,
            }
        )

    def _agents(self) -> list[AgentRecord]:
        """Every agent this evolution started (found by origin: run_agent keeps no list)."""
        out = []
        for record in list(self.session.agents.values()):
            origin = record.origin
            if isinstance(origin, dict) and origin.get("evolve") == self.run_id:
                out.append(self.session.record(record.pid))
        return out

    def _spent(self) -> tuple[int, float]:
        records = self._agents()
        return sum(r.tokens for r in records), round(sum(r.usd for r in records), 8)

    async def _end_agents(self) -> None:
        """Kill any agent of this run still live and wait (briefly) for them to end."""
        records = [r for r in self._agents() if r.status in ACTIVE]
        if not records:
            return
        kill_all(self.session, records)
        pending = [r.done for r in records if r.done is not None and not r.done.done()]
        if pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(asyncio.gather(*pending, return_exceptions=True)), SETTLE_S
                )

    # -- progress and persistence ---------------------------------------------------------

    async def _report(self, value: float, message: str) -> None:
        """One progress notification; its value only grows, as MCP requires."""
        if self.progress is None:
            return
        value = max(value, self._done + 1e-6)
        self._done = value
        await self.progress(value, float(self.planned), message)

    @property
    def planned(self) -> int:
        """Candidates this run means to score at most (mutations that repeat are skipped)."""
        return 1 + len(self.plan.variants) + self.plan.generations * self.plan.population

    def _persist(self, status: str, why: str = "", outcome: Outcome | None = None) -> None:
        store = self.session.kernel.store
        if store is None:
            return
        tokens, usd = self._spent()
        plan = self.plan
        record: dict[str, Any] = {
            "id": self.run_id,
            "status": status,  # running | ended | cancelled | failed
            "stop": None if outcome is None else outcome.stop,
            "why": why,
            "started": self.started,
            "ended": None if status == "running" else time.time(),
            "persona": plan.persona,
            "base": plan.base,
            "evals": [{"task": _clip(c.task), "check": c.check.describe()} for c in plan.cases],
            "params": {
                "generations": plan.generations,
                "population": plan.population,
                "margin": plan.margin,
                "weights": asdict(plan.weights),
                "budget_tokens": plan.budget_tokens,
                "budget_usd": plan.budget_usd,
                "provider": plan.provider,
                "model": self._model,
            },
            "candidates": [c.to_json() for c in self.candidates],
            "generations": self.generations,
            "skipped": self.skipped,
            "failed": self.failed,
            "tokens": tokens,
            "usd": usd,
        }
        if outcome is not None:
            record["winner"] = outcome.winner.id
            record["replaced"] = outcome.replaced
            record["saved"] = outcome.saved
        store.kv_put(EVOLUTION_NS, self.run_id, record)


async def evolve(
    session: Session,
    plan: Plan,
    *,
    progress: Progress | None = None,
    adopt: Adopt | None = None,
    run_id: str | None = None,
) -> Outcome:
    """Run one evolution (see the module docstring); bad input is refused before anything
    (even the provider's SDK import) happens."""
    plan.validate()
    await session.warm(plan.provider)
    return await Evolution(session, plan, run_id=run_id, progress=progress, adopt=adopt).run()


async def load_run(store: Store, run_id: str) -> dict[str, Any] | None:
    """The persisted record of run `run_id` (lineage, scores, spend), or None."""
    data = await store.akv_get(EVOLUTION_NS, run_id)
    return data if isinstance(data, dict) else None


async def run_ids(store: Store) -> list[str]:
    """The ids of every persisted evolution run."""
    return await store.akv_keys(EVOLUTION_NS)


def lineage(record: Mapping[str, Any]) -> list[Candidate]:
    """The candidates of a persisted run record, as `Candidate`s."""
    return [Candidate.from_json(c) for c in record.get("candidates", [])]


def _reason(record: AgentRecord) -> str:
    """The agent's exit reason as text: normal, quota(tokens), fault(...), killed(by=1)."""
    return "unknown" if record.reason is None else str(ExitReason.from_json(record.reason))


def _clip(text: str, chars: int = SHOWN_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[:chars] + "…"


def _unwrap(answer: str) -> str:
    """The mutator's prompt without a code fence or quotes it may have put around it."""
    text = answer.strip()
    if text.startswith("```") and text.endswith("```") and len(text) >= 6:
        text = text[3:-3]
        first, _, rest = text.partition("\n")
        text = rest if first.strip().isalpha() or not first.strip() else text
        text = text.strip()
    for mark in ('"""', '"', "'", "<<<"):
        end = ">>>" if mark == "<<<" else mark
        if len(text) > 2 * len(mark) and text.startswith(mark) and text.endswith(end):
            text = text[len(mark) : -len(end)].strip()
            break
    return text
