"""Prompt evolution end to end: `prompt_evolve` on a real session, agents on the fake provider.

The real anthropic SDK talks to `FakeProvider` on 127.0.0.1, whose script answers each
request by its system prompt: a scoring agent answers correctly only under a prompt holding
a marker, and a request whose system prompt is `MUTATOR_SYSTEM` is the mutator's, answered
with a rewrite. Sessions keep a real SQLite store in a tmp `YOOL_HOME`, so lineage is read
back after a restart.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from yool.personas.evolve import EVOLUTION_NS, MUTATOR_SYSTEM, lineage, load_run, run_ids
from yool.policy import RuntimePolicy
from yool.testing import FakeProvider, Fault, Recorded, Script, Turn
from yool.tools import OPERATIONS, Call, OpError, Session, load_all
from yool.tools.session import ACTIVE

load_all()

KEY = "sk-test-evolve"
BASE = "You are a helpful assistant."
GOOD = "GOOD: answer with the bare result, nothing else."
ANSWERS = {
    "t-exact": "42",
    "t-contains": "It is PARIS.",
    "t-regex": "that is ticket #123.",
    "t-json": 'Here:\n```json\n{"city": "Paris"}\n```',
}
EVALS: list[dict[str, Any]] = [
    {"task": "t-exact: what is 6*7?", "check": "exact", "want": "42"},
    {"task": "t-contains: the capital of France?", "want": "paris", "nocase": True},
    {"task": "t-regex: which ticket?", "check": "regex", "want": r"#\d{3}\b"},
    {
        "task": "t-json: the city, as JSON",
        "check": "json_schema",
        "want": {"type": "object", "required": ["city"]},
    },
]
Mutant = Callable[[Recorded], str]


def _system(rec: Recorded) -> str:
    system = rec.body.get("system") if isinstance(rec.body, dict) else None
    if isinstance(system, list):
        return " ".join(str(b.get("text", "")) for b in system if isinstance(b, dict))
    return str(system or "")


def _task(rec: Recorded) -> str:
    content = rec.body["messages"][0]["content"]
    if isinstance(content, list):
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return str(content)


def _is_mutator(rec: Recorded) -> bool:
    return _system(rec) == MUTATOR_SYSTEM


def solver(
    good: Callable[[str, str], bool] = lambda system, task: "GOOD" in system,
    mutant: Mutant | None = None,
    usage: Callable[[str], tuple[int, int] | None] = lambda system: None,
) -> Script:
    """Scoring agents answer right when `good(system, task)`; the mutator answers `mutant`."""

    def respond(rec: Recorded) -> Turn:
        system = _system(rec)
        if system == MUTATOR_SYSTEM:
            return Turn.say(mutant(rec) if mutant is not None else "")
        task = _task(rec)
        if good(system, task):
            key = next(k for k in ANSWERS if k in task)
            return Turn.say(ANSWERS[key], usage=usage(system))
        return Turn.say("I am not sure.", usage=usage(system))

    return Script(respond=respond)


def _policy(tmp: Path, **kw: Any) -> RuntimePolicy:
    return RuntimePolicy(home=tmp / "home", heartbeat_s=0.05, **kw)


def _workspace(tmp: Path) -> Path:
    ws = tmp / "ws"
    ws.mkdir(exist_ok=True)
    return ws


def _env(fake: FakeProvider) -> dict[str, str]:
    return {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": fake.url}


Notes = list[tuple[float, float | None, str]]


async def _evolve(session: Session, notes: Notes | None = None, **args: Any) -> Any:
    async def progress(done: float, total: float | None, message: str) -> None:
        if notes is not None:
            notes.append((done, total, message))

    args = {"provider": "anthropic", "budget_tokens": 200_000, **args}
    return await OPERATIONS["prompt_evolve"](Call(session, progress), args)


def _live(session: Session) -> list[int]:
    return [pid for pid, r in session.agents.items() if session.record(pid).status in ACTIVE]


async def _until(check: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polling session state is the point
            await asyncio.sleep(0.01)


# -- the acceptance points ------------------------------------------------------------------


def test_the_variant_that_truly_scores_better_wins_and_progress_comes_per_candidate(
    tmp_path: Path,
) -> None:
    variants = ["Think step by step.", GOOD, "Be very polite."]

    async def main() -> None:
        async with (
            FakeProvider(solver()) as fake,
            Session.open(
                _policy(tmp_path), workspace=_workspace(tmp_path), environ=_env(fake)
            ) as s,
        ):
            notes: Notes = []
            r = await _evolve(s, notes, prompt=BASE, evals=EVALS, variants=variants)
            assert r.replaced and r.winner == GOOD and not r.saved
            assert r.stop == "done" and r.generations == 0
            by_id = {c["id"]: c for c in r.candidates}
            assert [c["origin"] for c in r.candidates] == ["baseline", "user", "user", "user"]
            assert by_id[2]["correct"] == 4 and r.winner_score == by_id[2]["score"]
            assert all(by_id[i]["correct"] == 0 for i in (0, 1, 3))
            assert r.baseline_score == by_id[0]["score"] and r.winner_score > r.baseline_score + 900
            assert all(c["parent"] == 0 for c in r.candidates[1:])
            # the spend is every agent's, and every agent of the run has ended
            runs = [a for a in s.agents.values() if (a.origin or {}).get("evolve") == r.run_id]
            assert len(runs) == 4 * 4 == fake.count()
            assert r.spend["tokens"] == sum(a.tokens for a in runs) > 0
            assert math.isclose(r.spend["usd"], sum(a.usd for a in runs), abs_tol=1e-6)
            assert r.spend["usd"] > 0
            assert not _live(s)
            # one "scored" notification per candidate, values only growing, toward the plan
            scored = [m for _, _, m in notes if m.startswith("scored #")]
            assert [m.split()[1] for m in scored] == ["#0", "#1", "#2", "#3"]
            values = [d for d, _, _ in notes]
            assert values == sorted(values) and len(set(values)) == len(values)
            assert {t for _, t, _ in notes} == {4.0} and values[-1] == 4.0

    asyncio.run(main())


PY_CHECK = "def check(answer):\n    return int(answer.strip()) == 6 * 7\n"


def test_a_python_check_judges_answers_in_the_sandbox(tmp_path: Path) -> None:
    evals = [{"task": "t-exact: what is 6*7?", "check": "python", "want": PY_CHECK}]

    async def main() -> None:
        async with (
            FakeProvider(solver()) as fake,
            Session.open(
                _policy(tmp_path), workspace=_workspace(tmp_path), environ=_env(fake)
            ) as s,
        ):
            r = await _evolve(s, prompt=BASE, evals=evals, variants=[GOOD])
            assert r.replaced and r.winner == GOOD
            # "I am not sure." made int() raise in the sandbox: a failed check, not a crash
            assert [c["correct"] for c in r.candidates] == [0, 1]
            assert s.sandbox_pool is not None  # the checks ran there, not in this process

    asyncio.run(main())


def test_when_no_variant_scores_better_the_baseline_is_kept_and_the_result_says_so(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with (
            FakeProvider(solver()) as fake,
            Session.open(
                _policy(tmp_path), workspace=_workspace(tmp_path), environ=_env(fake)
            ) as s,
        ):
            r = await _evolve(s, prompt=BASE, evals=EVALS, variants=["Be terse.", "Be kind."])
            assert not r.replaced and r.winner == BASE and r.winner_score == r.baseline_score
            assert r.stop == "done"
            # the short variants are a little cheaper, but not by the margin
            assert "did not beat the baseline" in r.why and "the baseline is kept" in r.why
            assert all(c["correct"] == 0 for c in r.candidates)
            # a variant no better in any way: the baseline stays the best outright
            longer = BASE + " Take great care over every word of every answer you write."
            r = await _evolve(s, prompt=BASE, evals=EVALS, variants=[longer], margin=0)
            assert not r.replaced and r.winner == BASE
            assert r.candidates[1]["score"] < r.baseline_score
            assert "no candidate scored above the baseline: the baseline is kept" in r.why

    asyncio.run(main())


def test_a_budget_cap_stops_evolution_before_a_step_it_cannot_afford_with_the_spend_reported(
    tmp_path: Path,
) -> None:
    # each run costs 650 tokens; a run needs ~1,070 of headroom (its reservation)
    evals = EVALS[:1]

    async def main() -> None:
        async with (
            FakeProvider(solver(usage=lambda _s: (600, 50))) as fake,
            Session.open(
                _policy(tmp_path), workspace=_workspace(tmp_path), environ=_env(fake)
            ) as s,
        ):
            notes: Notes = []
            r = await _evolve(
                s,
                notes,
                prompt=BASE,
                evals=evals,
                variants=[GOOD, "v2", "v3"],
                budget_tokens=2000,
            )
            assert r.stop == "budget"
            assert "scoring candidate #2 needs up to" in r.why and "700 are left" in r.why
            assert r.spend["tokens"] == 1300 <= 2000 and fake.count() == 2
            assert [c["score"] is not None for c in r.candidates] == [True, True, False]
            assert r.replaced and r.winner == GOOD  # what was scored still counts
            assert not _live(s)
            assert len([m for _, _, m in notes if m.startswith("scored #")]) == 2
            assert s.kernel.store is not None
            record = await load_run(s.kernel.store, r.run_id)
            assert record is not None and record["status"] == "ended"
            assert record["stop"] == "budget" and record["tokens"] == 1300
            assert [c["score"] is None for c in record["candidates"]] == [False, False, True]

    asyncio.run(main())


def test_the_sessions_own_budget_caps_evolution_too(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            FakeProvider(solver(usage=lambda _s: (600, 50))) as fake,
            Session.open(
                _policy(tmp_path, budget_tokens=2500),
                workspace=_workspace(tmp_path),
                environ=_env(fake),
            ) as s,
        ):
            r = await _evolve(
                s,
                prompt=BASE,
                evals=EVALS[:1],
                variants=["v1", "v2", "v3"],
                budget_tokens=1_000_000,
            )
            assert r.stop == "budget" and "candidate #3 needs up to" in r.why
            assert "550 are left" in r.why
            assert r.spend["tokens"] == 3 * 650 == s.usage()["tokens"]
            assert not _live(s)

    asyncio.run(main())


def test_a_budget_too_small_for_the_baseline_starts_nothing_and_keeps_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            FakeProvider(solver()) as fake,
            Session.open(
                _policy(tmp_path), workspace=_workspace(tmp_path), environ=_env(fake)
            ) as s,
        ):
            r = await _evolve(s, prompt=BASE, evals=EVALS, variants=[GOOD], budget_tokens=500)
            assert r.stop == "budget" and "scoring candidate #0" in r.why
            assert fake.count() == 0 and not s.agents
            assert not r.replaced and r.winner == BASE and r.baseline_score is None
            assert r.spend == {"tokens": 0, "usd": 0.0}
            # the same with dollars: ~1,070 tokens of claude-sonnet-4-5 cost ~$0.015
            r = await _evolve(
                s, prompt=BASE, evals=EVALS, variants=[GOOD], budget_tokens=None, budget_usd=0.01
            )
            assert r.stop == "budget" and "$0.0100 is left" in r.why and fake.count() == 0

    asyncio.run(main())


def test_a_run_that_outspends_its_share_leaves_its_candidate_unscored_and_no_agent_running(
    tmp_path: Path,
) -> None:
    # Under the "EMPTY" prompt the model answers nothing yet bills 3,000 tokens: the agent
    # asks again, the kernel refuses the call (its share is spent) and it ends quota(tokens).
    def usage(system: str) -> tuple[int, int] | None:
        return (3000, 10) if "EMPTY" in system else None

    def good(system: str, task: str) -> bool:
        return "GOOD" in system

    script = solver(good=good, usage=usage)
    inner = script.respond
    assert inner is not None

    def respond(rec: Recorded) -> Turn:
        turn = inner(rec)
        assert isinstance(turn, Turn)
        return Turn("", usage=turn.usage) if "EMPTY" in _system(rec) else turn

    async def main() -> None:
        async with (
            FakeProvider(Script(respond=respond)) as fake,
            Session.open(
                _policy(tmp_path), workspace=_workspace(tmp_path), environ=_env(fake)
            ) as s,
        ):
            r = await _evolve(
                s, prompt=BASE, evals=EVALS[:2], variants=["EMPTY", GOOD], budget_tokens=6000
            )
            assert r.stop == "budget"
            assert "candidate #1 was left unscored" in r.why and "quota(tokens)" in r.why
            assert [c["score"] is not None for c in r.candidates] == [True, False]
            assert r.candidates[1]["correct"] == 0
            assert not r.replaced and r.winner == BASE
            assert not _live(s)
            runs = [a for a in s.agents.values() if (a.origin or {}).get("evolve") == r.run_id]
            assert r.spend["tokens"] == sum(a.tokens for a in runs)
            assert fake.count() >= 3  # two baseline runs and at least one EMPTY one
            assert s.kernel.store is not None
            record = await load_run(s.kernel.store, r.run_id)
            assert record is not None and record["candidates"][1]["runs"] == []

    asyncio.run(main())


# -- mutation, elitism, margin, fitness -----------------------------------------------------


def test_mutations_rewrite_the_best_so_far_from_its_failures_with_elitism(tmp_path: Path) -> None:
    briefs: list[str] = []

    def mutant(rec: Recorded) -> str:
        brief = _task(rec)
        briefs.append(brief)
        current = brief.split("<<<", 1)[1].split(">>>", 1)[0]
        if "GOOD" in current:  # already good: the rewrite only makes it longer
            return "```\n" + GOOD + " Double-check the result before you answer it.\n```"
        return GOOD

    async def main() -> None:
        async with (
            FakeProvider(solver(mutant=mutant)) as fake,
            Session.open(
                _policy(tmp_path), workspace=_workspace(tmp_path), environ=_env(fake)
            ) as s,
        ):
            r = await _evolve(s, prompt=BASE, evals=EVALS, generations=2, population=1)
            assert r.stop == "done" and r.generations == 2
            c = r.candidates
            assert [(x["origin"], x["parent"], x["gen"]) for x in c] == [
                ("baseline", None, 0),
                ("mutation", 0, 1),
                ("mutation", 1, 2),  # generation 2 rewrites the best so far: #1
            ]
            assert c[1]["correct"] == c[2]["correct"] == 4
            assert c[2]["score"] < c[1]["score"]  # same answers, a longer (dearer) prompt
            assert r.replaced and r.winner == GOOD  # the elite survives its worse offspring
            # the mutator saw the failures: task, what passes, what the agent said
            first = briefs[0]
            assert "FAILURES:" in first and "t-exact: what is 6*7?" in first
            assert "exactly '42'" in first and "I am not sure." in first
            assert "0/4 eval tasks passed" in first
            second = briefs[1]
            assert "Every eval task passed" in second
            assert "ALREADY TRIED" in second and BASE in second
            assert s.kernel.store is not None
            record = await load_run(s.kernel.store, r.run_id)
            assert record is not None
            kids = lineage(record)
            assert kids[2].prompt.startswith(GOOD) and "```" not in kids[2].prompt  # unfenced
            assert kids[1].mutator_pid is not None
            assert s.record(kids[1].mutator_pid).origin == {
                "evolve": r.run_id,
                "mutate": 0,
                "generation": 1,
            }
            mutator_calls = [q for q in fake.requests if _is_mutator(q)]
            assert len(mutator_calls) == 2 and fake.count() == 2 + 3 * 4

    asyncio.run(main())


def test_a_mutation_that_repeats_a_known_prompt_is_skipped_without_scoring(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            FakeProvider(solver(mutant=lambda _r: f'"{BASE}"')) as fake,
            Session.open(
                _policy(tmp_path), workspace=_workspace(tmp_path), environ=_env(fake)
            ) as s,
        ):
            r = await _evolve(s, prompt=BASE, evals=EVALS, generations=1, population=2)
            assert [c["origin"] for c in r.candidates] == ["baseline"]
            assert r.generations == 1 and r.stop == "done" and not r.replaced
            assert fake.count() == 4 + 2  # the baseline's runs and two mutator calls
            assert s.kernel.store is not None
            record = await load_run(s.kernel.store, r.run_id)
            assert record is not None and record["skipped"] == 2
            assert "2 variant(s) or rewrite(s) were empty or repeats" in r.why

    asyncio.run(main())


def test_a_failing_mutator_adds_no_candidate_and_the_result_names_its_exit(
    tmp_path: Path,
) -> None:
    def refuse(rec: Recorded) -> Fault | None:
        return Fault(status=400, message="bad request") if _is_mutator(rec) else None

    async def main() -> None:
        async with (
            FakeProvider(solver(mutant=lambda _r: GOOD), fault_for=refuse) as fake,
            Session.open(
                _policy(tmp_path), workspace=_workspace(tmp_path), environ=_env(fake)
            ) as s,
        ):
            r = await _evolve(s, prompt=BASE, evals=EVALS, generations=1, population=1)
            assert [c["origin"] for c in r.candidates] == ["baseline"] and not r.replaced
            assert r.stop == "done" and "mutator runs that failed: #" in r.why
            assert "fault(" in r.why
            assert not _live(s)

    asyncio.run(main())


@pytest.mark.parametrize(("margin", "replaced"), [(600.0, False), (100.0, True)])
def test_a_winner_replaces_the_baseline_only_if_it_beats_it_by_the_margin(
    tmp_path: Path, margin: float, replaced: bool
) -> None:
    half = "HALF: answer well."

    def good(system: str, task: str) -> bool:  # right on two of the four items: +500
        return "HALF" in system and ("t-exact" in task or "t-regex" in task)

    async def main() -> None:
        async with (
            FakeProvider(solver(good=good)) as fake,
            Session.open(
                _policy(tmp_path), workspace=_workspace(tmp_path), environ=_env(fake)
            ) as s,
        ):
            r = await _evolve(s, prompt=BASE, evals=EVALS, variants=[half], margin=margin)
            gain = r.candidates[1]["score"] - r.baseline_score
            assert 490 < gain < 510 and r.candidates[1]["correct"] == 2
            assert r.replaced is replaced
            assert r.winner == (half if replaced else BASE)
            assert ("did not beat the baseline" in r.why) is not replaced

    asyncio.run(main())


def test_fitness_is_the_metered_mean_and_its_weights_are_configurable(tmp_path: Path) -> None:
    async def main() -> None:
        async with (
            FakeProvider(solver()) as fake,
            Session.open(
                _policy(tmp_path), workspace=_workspace(tmp_path), environ=_env(fake)
            ) as s,
        ):
            r = await _evolve(s, prompt=BASE, evals=EVALS, variants=[GOOD])
            assert s.kernel.store is not None
            record = await load_run(s.kernel.store, r.run_id)
            assert record is not None
            for cand in lineage(record):
                want = [
                    1000 * run.correct - 2 * run.steps - run.tokens / 1000 - 10 * run.usd
                    for run in cand.runs
                ]
                assert cand.score == pytest.approx(sum(want) / len(want))
                assert all(run.steps == 1 for run in cand.runs)
            flat = {"steps": 0, "tokens": 0, "usd": 0}
            r = await _evolve(s, prompt=BASE, evals=EVALS[:2], variants=[GOOD], weights=flat)
            assert [c["score"] for c in r.candidates] == [0.0, 1000.0]
            r = await _evolve(
                s, prompt=BASE, evals=EVALS[:2], variants=[GOOD], weights={"correct": -1}
            )
            assert not r.replaced  # right answers now cost fitness

    asyncio.run(main())


# -- persistence and personas ---------------------------------------------------------------


def test_lineage_and_scores_persist_and_read_back_after_a_restart(tmp_path: Path) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)

    async def main() -> None:
        async with FakeProvider(solver(mutant=lambda _r: GOOD)) as fake:
            async with Session.open(pol, workspace=ws, environ=_env(fake)) as s:
                r = await _evolve(
                    s,
                    prompt=BASE,
                    evals=EVALS,
                    variants=["Be terse."],
                    generations=1,
                    population=1,
                )
                first = [
                    (c["id"], c["origin"], c["parent"], c["gen"], c["score"]) for c in r.candidates
                ]
            async with Session.open(pol, workspace=ws, environ=_env(fake)) as s:
                store = s.kernel.store
                assert store is not None
                assert r.run_id in await run_ids(store)
                record = await load_run(store, r.run_id)
                assert record is not None
                assert record["status"] == "ended" and record["stop"] == "done"
                assert record["winner"] == 2 and record["replaced"] is True
                assert record["base"] == BASE and record["generations"] == 1
                assert record["tokens"] == r.spend["tokens"]
                assert record["evals"][0] == {"task": EVALS[0]["task"], "check": "exactly '42'"}
                kids = lineage(record)
                again = [(c.id, c.origin, c.parent, c.generation, c.score) for c in kids]
                assert again == first
                assert [c.prompt for c in kids] == [BASE, "Be terse.", GOOD]
                # every run's agent is a known, ended agent of the restarted session
                for cand in kids:
                    assert len(cand.runs) == 4
                    for run in cand.runs:
                        agent = s.record(run.pid)
                        assert agent.status == "exited" and agent.origin is not None
                        assert agent.origin["evolve"] == r.run_id
                        assert agent.origin["candidate"] == cand.id
                assert await load_run(store, "evo-nope") is None
                assert store.kv_keys(EVOLUTION_NS) == [r.run_id]

    asyncio.run(main())


def test_a_persona_beaten_by_the_margin_gets_the_winner_as_its_saved_prompt(
    tmp_path: Path,
) -> None:
    pol, ws = _policy(tmp_path), _workspace(tmp_path)

    async def main() -> None:
        async with FakeProvider(solver()) as fake:
            async with Session.open(pol, workspace=ws, environ=_env(fake)) as s:
                before = s.personas.get("reviewer")
                kept = await _evolve(s, persona="reviewer", evals=EVALS, variants=["Be terse."])
                assert not kept.replaced and not kept.saved
                assert kept.winner == before.prompt
                assert s.personas.get("reviewer") == before  # untouched
                r = await _evolve(s, persona="reviewer", evals=EVALS, variants=[GOOD])
                assert r.replaced and r.saved and r.winner == GOOD
                now = s.personas.get("reviewer")
                assert now.prompt == GOOD and now.source == "saved"
                assert now.description == before.description and now.tools == before.tools
            async with Session.open(pol, workspace=ws, environ=_env(fake)) as s:
                assert s.personas.get("reviewer").prompt == GOOD
                assert s.kernel.store is not None
                record = await load_run(s.kernel.store, r.run_id)
                assert record is not None and record["persona"] == "reviewer"
                assert record["saved"] is True

    asyncio.run(main())


def test_a_persona_is_evolved_on_its_model_and_a_workspace_file_that_still_wins_is_reported(
    tmp_path: Path,
) -> None:
    ws = _workspace(tmp_path)
    (ws / ".yool" / "personas").mkdir(parents=True)
    (ws / ".yool" / "personas" / "solver.md").write_text(
        "---\nname: solver\ndescription: solves\nmodel: haiku\n---\nYou solve things.\n"
    )

    async def main() -> None:
        async with (
            FakeProvider(solver()) as fake,
            Session.open(_policy(tmp_path), workspace=ws, environ=_env(fake)) as s,
        ):
            r = await _evolve(s, persona="solver", evals=EVALS, variants=[GOOD])
            assert r.replaced and not r.saved
            assert "takes precedence" in r.why and ".yool/personas/solver.md" in r.why
            assert s.personas.get("solver").prompt.strip() == "You solve things."
            # the persona's candidates ran on the persona's model
            assert {q.body["model"] for q in fake.requests} == {"claude-haiku-4-5"}

    asyncio.run(main())


# -- bad input, cancellation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"evals": []}, "evals: the eval set is empty"),
        (
            {"evals": [EVALS[0], {"task": "t", "check": "regex", "want": "a(b"}]},
            r"evals[1].want: bad regular expression 'a(b'",
        ),
        (
            {"evals": [{"task": "t", "check": "json_schema", "want": {"type": 3}}]},
            "evals[0].want: bad JSON schema at type",
        ),
        ({"evals": [{"task": "t", "want": ""}]}, "evals[0].want: empty"),
        ({"evals": [{"task": " ", "want": "x"}]}, "evals[0].task: empty"),
        ({"budget_tokens": None}, "budget_tokens: evolution needs a budget"),
        ({"budget_tokens": 0}, "budget_tokens: must be > 0"),
        ({"variants": []}, "generations: give variants and/or generations >= 1"),
        ({"variants": ["  "]}, "variants[0]: empty"),
        ({"generations": -1}, "generations: must be 0..20, got -1"),
        ({"generations": 21}, "generations: must be 0..20, got 21"),
        ({"generations": 1, "population": 0}, "population: must be 1..8, got 0"),
        ({"variants": ["v"] * 17}, "variants: 17 given; at most 16"),
        ({"evals": [{"task": "t" * 100_001, "want": "x"}]}, "evals[0].task: longer than"),
        ({"evals": [{"task": "t", "want": "x"}] * 101}, "evals: 101 items; at most 100"),
        ({"margin": -1}, "margin: must be >= 0"),
        ({"persona": "reviewer"}, "prompt: give exactly one of prompt"),
        ({"prompt": None}, "prompt: give exactly one of prompt"),
        ({"prompt": None, "persona": "nobody"}, "persona: no persona named 'nobody'"),
        ({"weights": {"speed": 1}}, "weights: unknown weight 'speed'"),
        ({"weights": {"steps": math.inf}}, "weights.steps: inf is not a finite number"),
        ({"provider": "nope"}, "provider: unknown provider 'nope'"),
        (
            {"budget_tokens": None, "budget_usd": 1.0, "model": "fake-unpriced"},
            "budget_usd: model 'fake-unpriced' has no known price",
        ),
    ],
)
def test_bad_input_is_refused_naming_the_field_before_any_agent_runs(
    tmp_path: Path, args: dict[str, Any], message: str
) -> None:
    async def main() -> None:
        async with (
            FakeProvider(solver()) as fake,
            Session.open(
                _policy(tmp_path), workspace=_workspace(tmp_path), environ=_env(fake)
            ) as s,
        ):
            call = {"prompt": BASE, "evals": EVALS, "variants": [GOOD], **args}
            with pytest.raises(OpError) as e:
                await _evolve(s, **call)
            assert message in str(e.value)
            assert fake.count() == 0 and not s.agents
            assert s.kernel.store is not None
            assert await run_ids(s.kernel.store) == []

    asyncio.run(main())


def test_cancelling_an_evolution_kills_its_agents_and_records_it_cancelled(tmp_path: Path) -> None:
    def hang(rec: Recorded) -> Fault | None:
        return Fault.timeout() if "HANG" in _system(rec) else None

    async def main() -> None:
        async with (
            FakeProvider(solver(), fault_for=hang) as fake,
            Session.open(
                _policy(tmp_path), workspace=_workspace(tmp_path), environ=_env(fake)
            ) as s,
        ):
            task = asyncio.ensure_future(
                _evolve(s, prompt=BASE, evals=EVALS, variants=["HANG here", GOOD])
            )
            await _until(lambda: fake.count() >= 4 + 4)  # the baseline, then all four hung
            assert len(_live(s)) == 4
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not _live(s)  # ended before the cancellation returned
            assert fake.count() == 8  # and nothing started after it
            reasons = {s.record(pid).reason["kind"] for pid in s.agents}  # type: ignore[index]
            assert reasons == {"normal", "killed"}
            assert s.kernel.store is not None
            (run_id,) = await run_ids(s.kernel.store)
            record = await load_run(s.kernel.store, run_id)
            assert record is not None and record["status"] == "cancelled"
            assert [c["score"] is not None for c in record["candidates"]] == [True, False]

    asyncio.run(main())
