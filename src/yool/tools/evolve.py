"""`prompt_evolve`: improve a system prompt (or a persona's) by a metered tournament.

The operation only turns its arguments into a `yool.personas.evolve.Plan` (checkers built and
refused up front, the base taken from a persona when one is named) and the engine's
`Outcome` into a compact result; the engine runs the tournament. A persona that is beaten by
the margin gets the winner as its new prompt, saved in the session's persona registry.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import Field

from yool.kernel import KernelError
from yool.personas.checkers import CheckerError, CheckKind, make_checkers
from yool.personas.evolve import EvalCase, Outcome, Plan, Weights, evolve
from yool.personas.registry import resolve_model
from yool.tools.introspection import COMPACT
from yool.tools.session import Session
from yool.tools.table import Args, Call, OpError, Result, operation


class EvalItem(Args):
    model_config = COMPACT
    task: str
    check: CheckKind = "contains"
    want: str | dict[str, Any]  # the text, the pattern, or the JSON schema
    nocase: bool = False


class EvolveArgs(Args):
    # Bounds are checked by the engine (`Plan.validate`): this schema is read on every turn.
    prompt: str | None = None  # the base prompt; or `persona`, a persona's
    persona: str | None = None
    evals: list[EvalItem]
    variants: list[str] | None = None
    generations: int = 0
    population: int = 2
    budget_tokens: int | None = None
    budget_usd: float | None = None
    margin: float = 1.0
    weights: dict[str, float] | None = Field(None, description="correct,steps,tokens,usd")
    provider: str | None = None
    model: str | None = None


class Evolved(Result):
    model_config = COMPACT
    run_id: str
    winner: str  # the winning prompt (the baseline's when it was kept)
    replaced: bool  # the winner beat the baseline by the margin
    saved: bool  # ... and was saved as the persona's new prompt
    baseline_score: float | None
    winner_score: float | None
    candidates: list[dict[str, Any]]  # id, origin, parent, gen, score, correct
    spend: dict[str, int | float]  # tokens, usd
    generations: int  # rounds of mutation completed
    stop: str  # done | budget
    why: str


@operation("prompts", blocking=True)
async def prompt_evolve(call: Call, args: EvolveArgs) -> Evolved:
    """Evolve a prompt or persona on evals in a budget: generations x population LLM rewrites."""
    session = call.session
    base, persona, model = _base(session, args)
    try:
        checkers = make_checkers((e.check, e.want, e.nocase) for e in args.evals)
    except CheckerError as e:
        raise OpError(str(e)) from None
    sandboxed = [i for i, c in enumerate(checkers) if c.sandboxed]
    if sandboxed:
        await _sandbox_ready(session, sandboxed[0])
    plan = Plan(
        base=base,
        cases=tuple(EvalCase(e.task, c) for e, c in zip(args.evals, checkers, strict=True)),
        budget_tokens=args.budget_tokens,
        budget_usd=args.budget_usd,
        variants=tuple(args.variants or ()),
        generations=args.generations,
        population=args.population,
        margin=args.margin,
        weights=Weights.of(args.weights),
        persona=persona,
        provider=args.provider,
        model=model,
    )

    async def adopt(prompt: str) -> None:
        assert persona is not None
        await adopt_prompt(session, persona, prompt)

    outcome = await evolve(session, plan, progress=call.progress, adopt=adopt)
    return _result(outcome)


async def _sandbox_ready(session: Session, index: int) -> None:
    """A python check needs the sandbox: fail closed before any agent runs, not mid-way."""
    try:
        value = await session.sys.read(await session.sandbox_handle(), {"code": "pass"})
    except KernelError as e:
        raise OpError(f"evals[{index}].check: python checks run in the sandbox: {e}") from None
    if value.get("exit_code") != 0:
        why = value.get("error") or value.get("reason")
        raise OpError(f"evals[{index}].check: the sandbox could not run a check: {why}")


async def adopt_prompt(session: Session, name: str, prompt: str) -> None:
    """Save `prompt` as persona `name`'s prompt; OpError if a workspace file still wins."""
    registry = session.personas
    await registry.save(dataclasses.replace(registry.get(name), prompt=prompt))
    effective = registry.get(name)
    if effective.prompt.strip() != prompt.strip():
        raise OpError(
            f"persona: saved, but the {effective.source} file {effective.path} still defines "
            f"{name!r} and takes precedence; edit it to use the new prompt"
        )


def _base(session: Session, args: EvolveArgs) -> tuple[str, str | None, str | None]:
    """(base prompt, persona name, model): a persona is evolved on the model it runs on."""
    if (args.prompt is None) == (args.persona is None):
        raise OpError("prompt: give exactly one of prompt (the base text) or persona (a name)")
    if args.persona is None:
        assert args.prompt is not None
        return args.prompt, None, args.model
    persona = session.personas.get(args.persona)
    provider = (args.provider or session.policy.provider).strip().lower()
    return persona.prompt, persona.name, args.model or resolve_model(persona.model, provider)


def _result(outcome: Outcome) -> Evolved:
    return Evolved(
        run_id=outcome.run_id,
        winner=outcome.winner.prompt,
        replaced=outcome.replaced,
        saved=outcome.saved,
        baseline_score=outcome.baseline.score,
        winner_score=outcome.winner.score,
        candidates=[
            {
                "id": c.id,
                "origin": c.origin,
                "parent": c.parent,
                "gen": c.generation,
                "score": c.score,
                "correct": c.correct,
            }
            for c in outcome.candidates
        ],
        spend={"tokens": outcome.tokens, "usd": outcome.usd},
        generations=outcome.generations,
        stop=outcome.stop,
        why=outcome.why,
    )
