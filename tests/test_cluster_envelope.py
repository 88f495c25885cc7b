"""Envelope rules: forged, tampered, misrouted, stale, future and replayed envelopes are
refused; the nonce guard never admits a nonce twice and stays within its memory bound."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yool.cluster.envelope import EnvelopeError, NonceGuard, canonical, open_envelope, seal

KEY = b"k" * 32
NOW = 1_000_000.0
WINDOW = 30.0


def opened(data: bytes, *, guard: NonceGuard | None = None, now: float = NOW, key: bytes = KEY):
    return open_envelope(
        key,
        data,
        node="b",
        now=now,
        window_s=WINDOW,
        guard=guard if guard is not None else NonceGuard(WINDOW),
    )


def refused(data: bytes, **kw: object) -> str:
    with pytest.raises(EnvelopeError) as info:
        opened(data, **kw)  # type: ignore[arg-type]
    return info.value.kind


def test_a_sealed_envelope_opens_with_its_body_and_addresses() -> None:
    env = opened(seal(KEY, "b", 7, {"hi": [1, 2.5, "x"]}, sender="a", ts=NOW))
    assert (env.node, env.to, env.sender, env.body) == ("b", 7, "a", {"hi": [1, 2.5, "x"]})


def test_an_envelope_sealed_with_another_key_is_forged() -> None:
    assert refused(seal(b"other" * 8, "b", 7, "hi", sender="a", ts=NOW)) == "forged"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"body":"hi"', b'"body":"HI"'),
        (b'"to":7', b'"to":8'),
        (b'"from":"a"', b'"from":"c"'),
        (b'"ts":1000000.0', b'"ts":1000001.0'),
        (b'"nonce":"n1"', b'"nonce":"n2"'),
        (b'"node":"b"', b'"node":"c"'),
        (b'"body":"hi"', b'"body":"hi" '),  # even a byte of whitespace
    ],
)
def test_tampering_with_any_field_breaks_the_mac(old: bytes, new: bytes) -> None:
    data = seal(KEY, "b", 7, "hi", sender="a", ts=NOW, nonce="n1")
    assert old in data
    assert refused(data.replace(old, new)) == "forged"


def test_a_wrong_mac_is_forged_and_a_missing_one_malformed_not_a_crash() -> None:
    data = seal(KEY, "b", 7, "hi", sender="a", ts=NOW)
    assert refused(data[:-66] + b"0" * 64 + b'"}') == "forged"
    assert refused(data[:-66] + "ü".encode() * 32 + b'"}') == "forged"
    raw = json.loads(data)
    del raw["mac"]
    assert refused(canonical(raw)) == "malformed"
    other = seal(KEY, "b", 7, "other", sender="a", ts=NOW)
    assert refused(data[:-74] + other[-74:]) == "forged"  # a real MAC, of another envelope


def test_a_valid_mac_over_bad_fields_is_still_malformed() -> None:
    from yool.cluster.envelope import _mac

    for signed in (
        b'{"to":1}',
        b'{"body":1,"from":"a","node":"b","nonce":"n","to":"1","ts":1}',
        b'{"body":1,"from":"a","node":"b","nonce":"n","to":1,"ts":NaN}',
    ):
        data = signed[:-1] + b',"mac":"' + _mac(KEY, signed) + b'"}'
        assert refused(data) == "malformed", signed


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[1,2]",
        b'{"to":1}',
        b'{"node":"b","to":"1","from":"a","nonce":"n","ts":1,"body":null,"mac":"x"}',
    ],
)
def test_malformed_bytes_are_refused_as_malformed(data: bytes) -> None:
    assert refused(data) == "malformed"


def test_an_envelope_for_another_node_is_misrouted() -> None:
    assert refused(seal(KEY, "c", 7, "hi", sender="a", ts=NOW)) == "misrouted"


def test_stale_and_future_timestamps_are_refused_but_skew_within_the_window_is_fine() -> None:
    assert refused(seal(KEY, "b", 7, "hi", sender="a", ts=NOW - WINDOW - 0.5)) == "stale"
    assert refused(seal(KEY, "b", 7, "hi", sender="a", ts=NOW + WINDOW + 0.5)) == "future"
    assert opened(seal(KEY, "b", 7, "hi", sender="a", ts=NOW - WINDOW + 1)).body == "hi"
    assert opened(seal(KEY, "b", 7, "hi", sender="a", ts=NOW + WINDOW - 1)).body == "hi"


def test_a_replayed_envelope_is_refused_within_the_window() -> None:
    guard = NonceGuard(WINDOW)
    data = seal(KEY, "b", 7, "hi", sender="a", ts=NOW)
    opened(data, guard=guard)
    assert refused(data, guard=guard) == "replay"
    assert refused(data, guard=guard, now=NOW + 10) == "replay"
    # after the window the same bytes are stale, so forgetting the nonce is safe
    assert refused(data, guard=guard, now=NOW + WINDOW + 1) == "stale"


def test_a_forged_envelope_does_not_use_up_its_nonce() -> None:
    guard = NonceGuard(WINDOW)
    assert refused(seal(b"x" * 32, "b", 7, "hi", sender="a", ts=NOW, nonce="n"), guard=guard)
    assert opened(seal(KEY, "b", 7, "hi", sender="a", ts=NOW, nonce="n"), guard=guard).body == "hi"


def test_bodies_that_are_not_plain_json_cannot_be_sealed() -> None:
    with pytest.raises((TypeError, ValueError)):
        seal(KEY, "b", 7, {"x": object()}, sender="a")
    with pytest.raises(ValueError):
        seal(KEY, "b", 7, float("nan"), sender="a")


def test_a_full_guard_raises_its_floor_instead_of_forgetting_safety() -> None:
    guard = NonceGuard(WINDOW, cap=2)
    assert guard.admit("a", NOW - 3, NOW)
    assert guard.admit("b", NOW - 2, NOW)
    assert guard.admit("c", NOW - 1, NOW)  # forgets "a", floor = NOW - 3
    assert len(guard) == 2
    assert not guard.admit("a", NOW - 3, NOW)  # "a" again: at the floor, refused
    assert not guard.admit("z", NOW - 4, NOW)  # anything older than the floor too
    assert guard.admit("d", NOW, NOW)


sent = st.lists(st.floats(0, 60), min_size=1, max_size=10)  # each envelope's ts - NOW
arrivals = st.lists(st.tuples(st.integers(0, 9), st.floats(0, 5)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(sent, arrivals, st.integers(1, 6))
def test_the_guard_never_admits_an_envelope_twice_and_stays_bounded(
    offsets: list[float], seq: list[tuple[int, float]], cap: int
) -> None:
    """Envelopes (distinct nonces, fixed ts) arrive in any order, any number of times: a
    replay is the same nonce and ts (both are under the MAC)."""
    guard = NonceGuard(WINDOW, cap=cap)
    now = NOW
    admitted: set[int] = set()
    for i, step in seq:
        now += step
        i %= len(offsets)
        ts = NOW + offsets[i]
        if abs(ts - now) > WINDOW:
            continue  # open_envelope refuses it as stale/future before the guard
        if guard.admit(f"n{i}", ts, now):
            assert i not in admitted
            admitted.add(i)
        assert len(guard) <= cap
