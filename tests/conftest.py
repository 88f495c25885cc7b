"""Shared fixtures: run coroutines on a virtual clock (instant, deterministic) or a real loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from yool.kernel.clock import run_virtual

T = TypeVar("T")
Runner = Callable[[Coroutine[Any, Any, T]], T]


@pytest.fixture
def virtual() -> Runner[Any]:
    """Run a coroutine on the virtual clock: sleeps and timeouts take no real time."""
    return run_virtual


@pytest.fixture
def real() -> Runner[Any]:
    """Run a coroutine on an ordinary event loop."""
    return asyncio.run
