"""Test and benchmark helpers: real servers on loopback that stand in for the outside world."""

from yool.testing.fake_provider import (
    FakeProcess,
    FakeProvider,
    Fault,
    Recorded,
    Script,
    ThreadedFakeProvider,
    Turn,
)

__all__ = [
    "FakeProcess",
    "FakeProvider",
    "Fault",
    "Recorded",
    "Script",
    "ThreadedFakeProvider",
    "Turn",
]
