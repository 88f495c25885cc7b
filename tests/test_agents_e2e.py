"""Sub-agents that think, end to end: a real kernel, the LLM device, the real anthropic/openai
SDKs (through our providers) and the fake provider on 127.0.0.1, the agent a spawned process.

These are the acceptance points of "sub-agents that think": a multi-step tool task, budgets
that stop an agent within the documented bound, the breaker, Retry-After, the receipt cache,
hedging, malformed replies, path confinement, and keys that never leak.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from yool.drivers.files import FilesDriver
from yool.drivers.llm.anthropic import AnthropicProvider
from yool.drivers.llm.driver import LLMDriver
from yool.drivers.llm.openai import OpenAIProvider
from yool.drivers.llm.prices import Price, PriceTable
from yool.drivers.llm.provider import Provider
from yool.drivers.llm.types import LLMRequest, LLMResponse, Msg
from yool.kernel import NORMAL, Budget, Cost, DriverError, ExitReason, Kernel, Sys, quota
from yool.kernel.store import Store
from yool.policy import RuntimePolicy
from yool.testing import FakeProvider, Fault, Recorded, Script, Turn
from yool.testing.fake_provider import Responder, TurnLike
from yool.userland.agents import AgentResult, AgentSpec, react_agent

Runner = Callable[[Coroutine[Any, Any, Any]], Any]
KEY = "sk-ant-api03-E2EKEY-5c1f0b7e-must-never-leak"
KINDS = ["anthropic", "chat", "responses"]
MODEL = "fake-model"
PRICES = PriceTable({MODEL: Price(1000.0, 2000.0)})  # $0.001 in, $0.002 out per token
TIMEOUT = 15.0
A_TEXT = "The capital of Zorbia is Quux."
B_TEXT = "Zorbia has 4217 inhabitants."
SECRET = "TOPSECRET-c0ffee-42"


def make(kind: str, fake: FakeProvider, key: str = KEY) -> Provider:
    """The real SDK-backed provider of `kind`, pointed at the fake."""
    if kind == "anthropic":
        return AnthropicProvider(api_key=key, base_url=fake.url)
    return OpenAIProvider(
        api_key=key, base_url=fake.openai_url, api="chat" if kind == "chat" else "responses"
    )


def policy(**kw: Any) -> RuntimePolicy:
    """Small values so faults resolve fast; the model is the policy's (priced) test model."""
    base: dict[str, Any] = {
        "model": MODEL,
        "api_max_retries": 0,
        "api_backoff_base_ms": 1,
        "api_backoff_max_ms": 5,
    }
    return RuntimePolicy(**(base | kw))


class Metered(LLMDriver):
    """The real driver, noting each estimate the kernel reserved (to check the budget bound)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.estimates: list[Cost] = []

    def estimate(self, request: LLMRequest) -> Cost:
        cost = super().estimate(request)
        self.estimates.append(cost)
        return cost


def tree(tmp_path: Path) -> Path:
    """A granted root with two fact files; a secret beside it; a symlink escaping to it."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_text(A_TEXT)
    (root / "b.txt").write_text(B_TEXT)
    (tmp_path / "secret.txt").write_text(SECRET)
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    return root


async def run_agent(
    k: Kernel,
    devices: list[str],
    task: str,
    spec: AgentSpec | None = None,
    *,
    budget: Budget | None = None,
) -> tuple[ExitReason, AgentResult | None]:
    """A parent spawns `react_agent` holding `devices`; its exit reason and AgentResult."""
    box: dict[str, Any] = {}

    async def parent(sys: Sys) -> None:
        reply_ref = sys.self_ref(("send",))
        caps = [sys.derive(c.ref) for c in sys.caps("device")]
        child = sys.spawn(
            react_agent,
            task,
            replace(spec or AgentSpec(max_tokens=64), reply_to=reply_ref),
            budget=budget,
            caps=[*caps, reply_ref],
        )
        box["reason"] = await sys.wait(child.ref)
        try:
            msg = await sys.recv(timeout=0, match=lambda b: isinstance(b, AgentResult))
            box["result"] = msg.body
        except TimeoutError:
            box["result"] = None

    spawn = k.init.cap("spawn")
    assert spawn is not None
    p = k.init.spawn(parent, caps=[*(k.init.derive(d) for d in devices), k.init.derive(spawn)])
    done = await asyncio.wait_for(k.wait(p.pid), TIMEOUT)
    assert done == NORMAL, str(done)
    return box["reason"], box["result"]


async def read_all(
    k: Kernel, dev: str, requests: list[dict[str, Any]]
) -> list[dict[str, Any] | str]:
    """A process reads each request from the LLM device; a DriverError becomes its text."""
    got: list[dict[str, Any] | str] = []

    async def reader(sys: Sys) -> None:
        ref = sys.cap("device")
        assert ref is not None
        h = await sys.open(ref)
        for r in requests:
            try:
                got.append(await sys.read(h, r))
            except DriverError as e:
                got.append(str(e))

    p = k.init.spawn(reader, caps=[k.init.derive(dev)])
    done = await asyncio.wait_for(k.wait(p.pid), TIMEOUT)
    assert done == NORMAL, str(done)
    return got


def ask(text: str = "What is 2+2?", **kw: Any) -> dict[str, Any]:
    return LLMRequest((Msg("user", text),), max_tokens=32, **kw).to_json()


def tool_results(kind: str, body: dict[str, Any]) -> list[tuple[str, bool]]:
    """(content, is_error) of every tool result in a recorded request body."""
    if kind == "anthropic":
        return [
            (str(b["content"]), bool(b.get("is_error")))
            for m in body["messages"]
            if isinstance(m["content"], list)
            for b in m["content"]
            if b.get("type") == "tool_result"
        ]
    if kind == "chat":
        texts = [str(m["content"]) for m in body["messages"] if m["role"] == "tool"]
    else:
        texts = [str(i["output"]) for i in body["input"] if i.get("type") == "function_call_output"]
    return [(t, t.startswith("[error]")) for t in texts]


# --- a multi-step, tool-using task -----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_sub_agent_answers_from_two_files_and_reports_steps_tokens_and_usd(
    real: Runner, kind: str, tmp_path: Path
) -> None:
    root = tree(tmp_path)

    def final(rec: Recorded) -> Turn:
        seen = json.dumps(rec.body)  # the answer is built from what the tools really returned
        capital = "Quux" if "Quux" in seen else "?"
        people = "4217" if "4217" in seen else "?"
        return Turn.say(f"Zorbia: capital {capital}, {people} inhabitants.", usage=(200, 20))

    script: list[TurnLike | Responder] = [
        Turn.say("reading a", ("read_file", {"path": "a.txt"}), usage=(100, 10)),
        Turn.say("reading b", ("read_file", {"path": "b.txt"}), usage=(150, 12)),
        final,
    ]

    async def main() -> None:
        async with FakeProvider(script) as fake, Kernel() as k:
            driver = LLMDriver(make(kind, fake), policy(), lanes=k.lanes, prices=PRICES)
            llm = k.register_driver(driver)
            files = k.register_driver(FilesDriver({root: "r"}))
            reason, result = await run_agent(k, [llm, files], "Tell me about Zorbia.")
            await driver.provider.aclose()
        assert reason == NORMAL
        assert result is not None
        assert result.answer == "Zorbia: capital Quux, 4217 inhabitants."
        assert result.reason == "completed"
        assert result.steps == 3 == fake.count()
        assert result.tokens == 110 + 162 + 220
        assert result.usd == pytest.approx((450 * 1000 + 42 * 2000) / 1e6)
        assert {r.body["model"] for r in fake.requests} == {MODEL}  # the policy's model
        assert [c for c, _ in tool_results(kind, fake.requests[-1].body)] == [A_TEXT, B_TEXT]

    real(main())


# --- budgets -----------------------------------------------------------------------------------


def _within_bound(used: float, limit: float, actuals: list[float], estimates: list[float]) -> None:
    """The driver's documented bound: the overshoot is at most the last sent call's actual
    cost minus its reservation; a call refused before sending left the budget unbroken."""
    sent = len(actuals)
    assert used == pytest.approx(sum(actuals))
    if used > limit + 1e-9:
        assert used - limit <= actuals[-1] - estimates[sent - 1] + 1e-9
        assert len(estimates) == sent  # the overshooting call ended the agent
    else:
        assert len(estimates) == sent + 1  # one more call was estimated and refused
        assert used + estimates[sent] > limit


@pytest.mark.parametrize("kind", KINDS)
def test_a_token_budget_stops_an_agent_within_one_reservations_error(
    real: Runner, kind: str, tmp_path: Path
) -> None:
    root = tree(tmp_path)
    # The second call reports far more than its reservation: the settle overshoots.
    read = ("read_file", {"path": "a.txt"})
    script = Script([Turn.say("", read, usage=(300, 20)), Turn.say("", read, usage=(900, 20))])
    spec = AgentSpec(max_tokens=64, reuse_results=False, base_steps=20, max_steps=20)

    async def main() -> None:
        async with FakeProvider(script) as fake, Kernel() as k:
            driver = Metered(make(kind, fake), policy(), lanes=k.lanes, prices=PRICES)
            llm = k.register_driver(driver)
            files = k.register_driver(FilesDriver({root: "r"}))
            reason, result = await run_agent(
                k, [llm, files], "Read a.txt forever.", spec, budget=Budget(tokens=1000)
            )
            await driver.provider.aclose()
        assert reason == quota("tokens")
        assert result is not None and result.reason == "quota(tokens)"
        assert fake.count() == 2 and result.steps == 1
        assert result.tokens == 320 + 920 > 1000  # the real spend is recorded, overshoot too
        _within_bound(result.tokens, 1000, [320, 920], [e.tokens for e in driver.estimates])

    real(main())


@pytest.mark.parametrize("kind", KINDS)
def test_a_usd_budget_stops_an_agent_before_a_call_it_cannot_afford(
    real: Runner, kind: str, tmp_path: Path
) -> None:
    root = tree(tmp_path)
    script = Script([Turn.say("", ("read_file", {"path": "a.txt"}), usage=(300, 20))], loop=True)
    spec = AgentSpec(max_tokens=64, reuse_results=False, base_steps=20, max_steps=20)

    async def main() -> None:
        async with FakeProvider(script) as fake, Kernel() as k:
            driver = Metered(make(kind, fake), policy(), lanes=k.lanes, prices=PRICES)
            llm = k.register_driver(driver)
            files = k.register_driver(FilesDriver({root: "r"}))
            reason, result = await run_agent(
                k, [llm, files], "Read a.txt forever.", spec, budget=Budget(usd=1.0)
            )
            await driver.provider.aclose()
        assert reason == quota("usd")
        assert result is not None and result.reason == "quota(usd)"
        sent = fake.count()
        assert sent >= 2 and result.steps == sent
        each = (300 * 1000 + 20 * 2000) / 1e6
        _within_bound(result.usd, 1.0, [each] * sent, [e.usd for e in driver.estimates])
        assert result.usd <= 1.0  # here the estimate refused the call: no overshoot at all

    real(main())


# --- resilience through the device ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_breaker_opens_fails_fast_probes_after_cooldown_and_recovers(
    real: Runner, kind: str
) -> None:
    down = {"on": True}

    def fault_for(rec: Recorded) -> Fault | None:
        return Fault.server_error(503) if down["on"] else None

    cooldown = 0.3

    async def main() -> None:
        async with FakeProvider(["all good"], fault_for=fault_for) as fake, Kernel() as k:
            p = policy(circuit_failure_threshold=2, circuit_cooldown_s=cooldown)
            driver = LLMDriver(make(kind, fake), p, lanes=k.lanes, prices=PRICES)
            llm = k.register_driver(driver)
            got = await read_all(k, llm, [ask("a"), ask("b"), ask("c"), ask("d")])
            assert all(isinstance(g, str) for g in got)
            assert "503" in str(got[0]) and "503" in str(got[1])
            assert all("circuit open" in str(g) for g in got[2:])
            assert fake.count() == 2  # open: failing fast, the fake is not reached

            await asyncio.sleep(cooldown + 0.05)
            got = await read_all(k, llm, [ask("probe"), ask("again")])
            assert "503" in str(got[0]) and "circuit open" in str(got[1])
            assert fake.count() == 3  # exactly one probe went through

            down["on"] = False
            await asyncio.sleep(cooldown + 0.05)
            reason, result = await run_agent(k, [llm], "Are you well?")
            assert driver.breaker.state == "closed"
            await driver.provider.aclose()
        assert reason == NORMAL and result is not None
        assert (result.answer, result.reason) == ("all good", "completed")
        assert fake.count() == 4

    real(main())


@pytest.mark.parametrize("kind", KINDS)
def test_retry_after_is_honoured_before_the_retry(real: Runner, kind: str) -> None:
    arrivals: list[float] = []

    def fault_for(rec: Recorded) -> Fault | None:
        arrivals.append(time.monotonic())
        return Fault.rate_limited(retry_after=0.3) if rec.n == 1 else None

    async def main() -> None:
        async with FakeProvider(["fine"], fault_for=fault_for) as fake, Kernel() as k:
            driver = LLMDriver(
                make(kind, fake), policy(api_max_retries=2), lanes=k.lanes, prices=PRICES
            )
            llm = k.register_driver(driver)
            reason, result = await run_agent(k, [llm], "Hello?")
            await driver.provider.aclose()
        assert reason == NORMAL and result is not None and result.answer == "fine"
        assert fake.count() == 2
        assert arrivals[1] - arrivals[0] >= 0.3
        assert driver.retry.last_delays and driver.retry.last_delays[0] >= 0.3

    real(main())


@pytest.mark.parametrize("kind", KINDS)
def test_an_identical_deterministic_request_is_answered_from_the_cache(
    real: Runner, kind: str
) -> None:
    async def main() -> None:
        async with FakeProvider(["four"]) as fake, Kernel() as k:
            driver = LLMDriver(make(kind, fake), policy(), lanes=k.lanes, prices=PRICES)
            llm = k.register_driver(driver)
            got = await read_all(k, llm, [ask(temperature=0), ask(temperature=0)])
            await driver.provider.aclose()
        assert [LLMResponse.from_json(g).text for g in got if isinstance(g, dict)] == ["four"] * 2
        assert fake.count() == 1
        assert driver.cache.hits == 1

    real(main())


@pytest.mark.parametrize("kind", KINDS)
def test_hedging_returns_the_first_success_of_an_idempotent_request(
    real: Runner, kind: str
) -> None:
    async def main() -> None:
        slow_first = {1: Fault.delay(2.0)}
        async with FakeProvider(["quick"], faults=slow_first) as fake, Kernel() as k:
            driver = LLMDriver(
                make(kind, fake), policy(), lanes=k.lanes, prices=PRICES, hedge_floor_s=0.2
            )
            llm = k.register_driver(driver)
            started = time.monotonic()
            got = await read_all(k, llm, [ask(idempotent=True)])
            took = time.monotonic() - started
            await driver.provider.aclose()
        assert isinstance(got[0], dict) and LLMResponse.from_json(got[0]).text == "quick"
        assert took < 1.0
        assert fake.count() == 2
        assert (driver.hedger.hedges, driver.hedger.hedge_wins) == (1, 1)

    real(main())


@pytest.mark.parametrize("malformed", ["json", "fields"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_malformed_reply_ends_the_agent_with_a_clear_fault_never_a_hang(
    real: Runner, kind: str, malformed: str
) -> None:
    fault = Fault.invalid_json() if malformed == "json" else Fault.missing_fields()
    vendor = "anthropic" if kind == "anthropic" else "openai"

    async def main() -> None:
        async with FakeProvider(["unused"], fault=fault) as fake, Kernel() as k:
            driver = LLMDriver(make(kind, fake), policy(), lanes=k.lanes, prices=PRICES)
            llm = k.register_driver(driver)
            async with asyncio.timeout(5):
                reason, result = await run_agent(k, [llm], "Say something.")
            await driver.provider.aclose()
        assert reason.kind == "fault"
        assert f"malformed reply from {vendor}" in str(reason.detail)
        assert result is not None and result.reason.startswith("fault(")
        assert f"malformed reply from {vendor}" in result.reason
        assert fake.count() == 1  # a malformed reply is not retried into a loop

    real(main())


# --- confinement and secrets -------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_sub_agent_cannot_read_outside_its_granted_paths(
    real: Runner, kind: str, tmp_path: Path
) -> None:
    root = tree(tmp_path)
    outside = str(tmp_path / "secret.txt")
    script: list[TurnLike | Responder] = [
        Turn.say(
            "trying",
            ("read_file", {"path": "../secret.txt"}),
            ("read_file", {"path": outside}),
            ("read_file", {"path": "link.txt"}),
        ),
        "I could not read them.",
    ]

    async def main() -> None:
        async with FakeProvider(script) as fake, Kernel() as k:
            driver = LLMDriver(make(kind, fake), policy(), lanes=k.lanes, prices=PRICES)
            llm = k.register_driver(driver)
            files = k.register_driver(FilesDriver({root: "r"}))
            reason, result = await run_agent(k, [llm, files], "Read the secret.")
            await driver.provider.aclose()
        assert reason == NORMAL and result is not None
        assert result.answer == "I could not read them."
        results = tool_results(kind, fake.requests[-1].body)
        assert len(results) == 3
        assert all(is_error for _, is_error in results), results
        assert all("outside" in t or "not allowed" in t for t, _ in results), results
        for rec in fake.requests:
            assert SECRET not in json.dumps(rec.body)

    real(main())


@pytest.mark.parametrize("kind", KINDS)
def test_keys_never_reach_requests_events_or_the_journal(
    real: Runner, kind: str, tmp_path: Path
) -> None:
    root = tree(tmp_path)
    db = tmp_path / "yool.db"
    # The server echoes the key back in an error: our errors must scrub it.
    echo = Fault(status=401, message=f"invalid x-api-key {KEY}")
    script: list[TurnLike] = [Turn.say("", ("read_file", {"path": "a.txt"})), "Quux."]

    async def main() -> None:
        with Store.open(db) as store:
            async with FakeProvider(script, faults={3: echo}) as fake, Kernel(store=store) as k:
                driver = LLMDriver(make(kind, fake), policy(), lanes=k.lanes, prices=PRICES)
                llm = k.register_driver(driver)
                files = k.register_driver(FilesDriver({root: "r"}))
                ok, _ = await run_agent(k, [llm, files], "Capital of Zorbia?")
                failed, result = await run_agent(k, [llm, files], "Again?")
                events = [json.dumps(e.to_json()) for e in k.trace(10_000)]
                await driver.provider.aclose()
            assert ok == NORMAL and failed.kind == "fault"
            assert "401" in str(failed.detail) and KEY not in str(failed.detail)
            assert result is not None and KEY not in result.reason
            assert fake.count() == 3
            for rec in fake.requests:
                assert KEY not in json.dumps(rec.body) and KEY not in json.dumps(rec.headers)
            assert events and not any(KEY in e for e in events)

    real(main())
    with sqlite3.connect(db) as conn:  # the store is closed: read what it persisted
        journal = conn.execute("SELECT digest, result, error FROM journal").fetchall()
        rows = conn.execute("SELECT kind, data FROM events").fetchall()
        procs = conn.execute("SELECT reason, meta FROM processes").fetchall()
    assert journal and rows
    assert any("401" in str(r) for r in journal)  # the failure was journaled, scrubbed
    for row in (*journal, *rows, *procs):
        assert KEY not in json.dumps(row)
    for path in tmp_path.rglob("yool.db*"):
        if path.is_file():  # the database, its WAL, and the boots' lock files
            assert KEY.encode() not in path.read_bytes()
