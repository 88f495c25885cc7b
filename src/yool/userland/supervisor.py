"""Supervisors: processes that start children and restart them when they die, the OTP way.

A supervisor is the image `supervise`, spawned with a `SupervisorSpec` as its
argument (`start_supervisor` does that and hands it the capabilities it
needs). It links to each child and traps exits, so a child's death arrives as
an `Exit` message, and the children die with the supervisor if it is killed.

- Restart types: `permanent` children are always restarted, `transient` ones
  only after an abnormal exit (as in OTP, `shutdown` is not abnormal: someone
  stopped it on purpose), `temporary` ones never.
- Strategies: `one_for_one` restarts the dead child; `one_for_all` stops the
  others (in reverse start order) and restarts them all; `rest_for_one` does
  that for the children started after the dead one.
- Intensity: more than `intensity` restarts within `period_s` and the
  supervisor stops every child and exits `fault("restart intensity exceeded: ...")`.
- Flap backoff: a child that dies before it has run `period_s` is flapping;
  its first quick death is restarted at once, the next ones after
  `backoff_s`, then twice that, and so on up to `backoff_max_s`. Running a full
  `period_s` resets it. The supervisor keeps serving its mailbox meanwhile.
- Stopping a child is `term` (it may trap it and clean up), then `kill` after
  its `shutdown_s`.
- Capabilities: a child gets fresh derived copies of the supervisor's
  capabilities named in its `grants` at each start; they die with it. The
  supervisor revokes its capability over each child that died, so restarting
  forever holds a constant number of capabilities.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, get_args

from yool.kernel.accounts import Budget
from yool.kernel.errors import CapError, KernelError
from yool.kernel.messages import Child, Exit, Message, Term
from yool.kernel.process import Image
from yool.kernel.reasons import SHUTDOWN, ExitReason, fault
from yool.kernel.sys import Sys

Restart = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]

RESTARTS: tuple[str, ...] = get_args(Restart)
STRATEGIES: tuple[str, ...] = get_args(Strategy)

_tags = itertools.count(1)


class SpecError(ValueError):
    """A supervisor or child spec is malformed; the message names the field and the fix."""


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to start (and restart) one child.

    `grants` name capabilities the supervisor holds ("spawn", "device:llm") of
    which each incarnation gets a fresh derived copy. `deadline_s` is given
    afresh to each incarnation.
    """

    id: str
    image: str | Image
    args: tuple[Any, ...] = ()
    restart: Restart = "permanent"
    budget: Budget | None = None
    shutdown_s: float = 5.0
    deadline_s: float | None = None
    grants: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise SpecError(f"child id must be a non-empty string, got {self.id!r}")
        where = f"child {self.id!r}"
        if not (isinstance(self.image, str) and self.image) and not callable(self.image):
            raise SpecError(f"{where}: image must be an async function or an image name")
        if not isinstance(self.args, tuple):
            raise SpecError(f"{where}: args must be a tuple, got {type(self.args).__name__}")
        if self.restart not in RESTARTS:
            raise SpecError(
                f"{where}: unknown restart {self.restart!r}; use one of {', '.join(RESTARTS)}"
            )
        if self.budget is not None and not isinstance(self.budget, Budget):
            raise SpecError(f"{where}: budget must be a Budget")
        _non_negative(where, "shutdown_s", self.shutdown_s, allow_inf=True)
        if self.deadline_s is not None:
            _non_negative(where, "deadline_s", self.deadline_s)
        grants: object = self.grants  # checked at run time: specs come from callers' code
        if not isinstance(grants, tuple) or not all(isinstance(g, str) and g for g in grants):
            raise SpecError(f"{where}: grants must be a tuple of names like 'spawn' or 'device:kv'")


@dataclass(frozen=True, slots=True)
class SupervisorSpec:
    """A supervisor: its children (started in this order), strategy and restart limits."""

    children: Sequence[ChildSpec]
    strategy: Strategy = "one_for_one"
    intensity: int = 5
    period_s: float = 5.0
    backoff_s: float = 0.1
    backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        given: object = self.children
        if isinstance(given, str | bytes) or not isinstance(given, Sequence):
            raise SpecError("supervisor children must be a list of ChildSpec")
        children = tuple(given)
        seen: set[str] = set()
        for c in children:
            if not isinstance(c, ChildSpec):
                raise SpecError(f"supervisor children must be ChildSpec, got {c!r}")
            if c.id in seen:
                raise SpecError(f"duplicate child id {c.id!r}: each child needs its own id")
            seen.add(c.id)
        object.__setattr__(self, "children", children)
        if self.strategy not in STRATEGIES:
            raise SpecError(
                f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}"
            )
        if isinstance(self.intensity, bool) or not isinstance(self.intensity, int):
            raise SpecError(f"intensity must be an integer, got {self.intensity!r}")
        if self.intensity < 0:
            raise SpecError(f"intensity must be >= 0 restarts, got {self.intensity}")
        _non_negative("supervisor", "period_s", self.period_s)
        if self.period_s == 0:
            raise SpecError("supervisor: period_s must be > 0 seconds")
        _non_negative("supervisor", "backoff_s", self.backoff_s)
        _non_negative("supervisor", "backoff_max_s", self.backoff_max_s)
        if self.backoff_max_s < self.backoff_s:
            raise SpecError(
                f"supervisor: backoff_max_s ({self.backoff_max_s}) must be >= "
                f"backoff_s ({self.backoff_s})"
            )

    def grants(self) -> tuple[str, ...]:
        """Every capability name some child is granted, once each, in first-use order."""
        return tuple(dict.fromkeys(g for c in self.children for g in c.grants))


def _non_negative(where: str, name: str, value: object, *, allow_inf: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpecError(f"{where}: {name} must be a number of seconds, got {value!r}")
    if not value >= 0 or (math.isinf(value) and not allow_inf):
        raise SpecError(f"{where}: {name} must be a finite number >= 0, got {value!r}")


# -- the mailbox protocol -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WhichChildren:
    """Ask a supervisor for its children; send with a reply capability as the message's cap."""

    tag: int


@dataclass(frozen=True, slots=True)
class ChildInfo:
    id: str
    pid: int | None  # None: not running (ended for good, or waiting out a backoff)
    restarts: int
    restart: Restart


@dataclass(frozen=True, slots=True)
class Children:
    """The reply to `WhichChildren`, in start order."""

    tag: int
    children: tuple[ChildInfo, ...]


async def which_children(
    sys: Sys,
    sup: str,
    timeout: float = 5.0,  # noqa: ASYNC109 - bounded like a gen_server call
) -> list[ChildInfo]:
    """Ask the supervisor behind `sup` (a send capability) which children it has."""
    tag = next(_tags)
    reply = sys.self_ref(("send",))
    try:
        sent = await sys.send(sup, WhichChildren(tag), caps=(reply,))
    except BaseException:
        _drop(sys, (reply,))
        raise
    if not sent:
        _drop(sys, (reply,))
        raise KernelError("which_children: the supervisor is not running")
    msg = await sys.recv(timeout, match=lambda b: isinstance(b, Children) and b.tag == tag)
    body: Children = msg.body
    return list(body.children)


# -- starting a supervisor --------------------------------------------------------


def grant_caps(sys: Sys, spec: SupervisorSpec) -> tuple[str, ...]:
    """Derived copies of the caller's capabilities that a supervisor for `spec` needs.

    A spawn capability, plus one of each capability named in the children's
    grants. Revoking the caller's originals revokes these (and the children's) too.
    """
    wanted = ["spawn", *(g for g in spec.grants() if g != "spawn")]
    out: list[str] = []
    try:
        for name in wanted:
            source = _held(sys, name)
            if source is None:
                users = [c.id for c in spec.children if name in c.grants] or ["the supervisor"]
                raise CapError(
                    f"the caller (pid {sys.pid}) holds no {name!r} capability to hand to "
                    f"{', '.join(users)}"
                )
            out.append(sys.derive(source))
    except BaseException:
        for ref in out:
            sys.revoke(ref)
        raise
    return tuple(out)


def start_supervisor(
    sys: Sys,
    spec: SupervisorSpec,
    *,
    name: str = "supervisor",
    budget: Budget | None = None,
    link: bool = False,
    monitor: bool = False,
    priority: int = 0,
) -> Child:
    """Spawn a supervisor for `spec` under the caller, with the capabilities it needs."""
    caps = grant_caps(sys, spec)
    try:
        return sys.spawn(
            supervise,
            spec,
            name=name,
            budget=budget,
            caps=caps,
            link=link,
            monitor=monitor,
            priority=priority,
        )
    except BaseException:
        for ref in caps:
            sys.revoke(ref)
        raise


async def supervise(sys: Sys, spec: SupervisorSpec) -> NoReturn:
    """The supervisor image: start `spec`'s children, then keep them running."""
    if not isinstance(spec, SupervisorSpec):
        raise SpecError(f"supervise needs a SupervisorSpec, got {type(spec).__name__}")
    await _Supervisor(sys, spec).run()


def _held(sys: Sys, name: str) -> str | None:
    kind, _, target = name.partition(":")
    return sys.cap(kind, target or None)


# -- the supervisor itself -------------------------------------------------------------


@dataclass(slots=True)
class _Slot:
    """One child spec and its current incarnation (pid None: not running)."""

    spec: ChildSpec
    index: int
    pid: int | None = None
    ref: str | None = None
    started: float = 0.0
    starts: int = 0
    flaps: int = 0
    due: float | None = None  # a restart is scheduled for this time

    def info(self) -> ChildInfo:
        return ChildInfo(self.spec.id, self.pid, max(0, self.starts - 1), self.spec.restart)


@dataclass(slots=True)
class _Supervisor:
    sys: Sys
    spec: SupervisorSpec
    slots: list[_Slot] = field(init=False)
    by_pid: dict[int, _Slot] = field(default_factory=dict)
    stamps: deque[float] = field(default_factory=deque)  # restart times within period_s
    parent: int = 0

    def __post_init__(self) -> None:
        self.slots = [_Slot(c, i) for i, c in enumerate(self.spec.children)]

    async def run(self) -> NoReturn:
        sys = self.sys
        sys.trap_exits()
        sys.trap_term()
        self.parent = sys.parent
        for name in ("spawn", *self.spec.grants()):
            if _held(sys, name) is None:
                sys.exit(fault(f"supervisor holds no {name!r} capability (see grant_caps)"))
        for slot in self.slots:
            try:
                self._start(slot)
            except KernelError as e:
                await self._stop_all()
                sys.exit(fault(f"child {slot.spec.id!r} failed to start: {e}"))
        while True:
            due = [s.due for s in self.slots if s.due is not None]
            timeout = None if not due else max(0.0, min(due) - sys.now())
            try:
                msg = await sys.recv(timeout)
            except TimeoutError:
                await self._restart_due()
                continue
            await self._handle(msg)

    async def _handle(self, msg: Message) -> None:
        body = msg.body
        sys = self.sys
        if isinstance(body, Exit):
            slot = self.by_pid.pop(body.pid, None)
            if slot is not None:
                self._forget(slot)
                await self._exited(slot, body.reason)
            elif body.pid == self.parent:
                await self._shutdown(body.reason)  # a linked parent died: go with it
        elif isinstance(body, Term):
            await self._shutdown(SHUTDOWN)
        elif isinstance(body, WhichChildren) and msg.caps:
            reply = Children(body.tag, tuple(s.info() for s in self.slots))
            # A full or bad reply box is the asker's problem, never a stall of ours.
            with contextlib.suppress(KernelError):
                sys.send_nowait(msg.caps[0], reply)
        _drop(sys, msg.caps)

    # -- deaths and restarts --------------------------------------------------

    async def _exited(self, slot: _Slot, reason: ExitReason) -> None:
        if not _restarts(slot.spec.restart, reason):
            return
        sys, spec = self.sys, self.spec
        now = sys.now()
        stamps = self.stamps
        stamps.append(now)
        while stamps and now - stamps[0] >= spec.period_s:
            stamps.popleft()
        if len(stamps) > spec.intensity:
            await self._stop_all()
            sys.exit(
                fault(
                    f"restart intensity exceeded: child {slot.spec.id!r} exited {reason}; "
                    f"more than {spec.intensity} restarts in {spec.period_s:g}s"
                )
            )
        if now - slot.started >= spec.period_s:
            slot.flaps = 0
        delay = 0.0 if slot.flaps == 0 else spec.backoff_s * 2.0 ** (slot.flaps - 1)
        delay = min(delay, spec.backoff_max_s)
        slot.flaps += 1
        group = [slot]
        if spec.strategy == "one_for_all":
            group = [s for s in self.slots if s is slot or s.pid is not None or s.due is not None]
        elif spec.strategy == "rest_for_one":
            group = [
                s
                for s in self.slots
                if s is slot or (s.index > slot.index and (s.pid is not None or s.due is not None))
            ]
        for other in reversed(group):
            if other.pid is not None:
                await self._stop(other)
        when = now + delay
        for s in group:
            if s is slot or s.spec.restart != "temporary":
                s.due = when if s.due is None else max(s.due, when)
            else:
                s.due = None  # a temporary child stopped with its group stays stopped

    async def _restart_due(self) -> None:
        now = self.sys.now()
        for slot in self.slots:
            if slot.due is None or slot.due > now:
                continue  # (a failed start below may have pushed a sibling's restart back)
            slot.due = None
            try:
                self._start(slot)
            except KernelError as e:
                await self._exited(slot, fault(e))  # counts against intensity; retried later

    def _start(self, slot: _Slot) -> None:
        sys, c = self.sys, slot.spec
        slot.started = sys.now()  # a start that fails counts as a flap
        granted: list[str] = []
        try:
            for name in c.grants:
                source = _held(sys, name)
                if source is None:
                    raise CapError(f"supervisor holds no {name!r} capability to grant")
                granted.append(sys.derive(source))
            child = sys.spawn(
                c.image,
                *c.args,
                name=c.id,
                budget=c.budget,
                caps=granted,
                link=True,
                deadline=c.deadline_s,
            )
        except BaseException:
            _drop(sys, granted)
            raise
        slot.pid, slot.ref = child.pid, child.ref
        slot.starts += 1
        self.by_pid[child.pid] = slot

    # -- stopping -----------------------------------------------------------

    async def _stop(self, slot: _Slot) -> None:
        """Term, wait up to shutdown_s for the child's exit, then kill."""
        sys = self.sys
        pid, ref = slot.pid, slot.ref
        assert pid is not None and ref is not None
        del self.by_pid[pid]

        def gone(body: Any) -> bool:
            return isinstance(body, Exit) and body.pid == pid

        grace = slot.spec.shutdown_s
        if grace == 0:
            sys.kill(ref)
        else:
            sys.term(ref)
        try:
            await sys.recv(None if math.isinf(grace) else grace, match=gone)
        except TimeoutError:
            sys.kill(ref)
            with contextlib.suppress(TimeoutError):
                await sys.recv(0, match=gone)  # a kill is delivered at once
        self._forget(slot)

    async def _stop_all(self) -> None:
        for slot in reversed(self.slots):
            slot.due = None
            if slot.pid is not None:
                await self._stop(slot)

    async def _shutdown(self, reason: ExitReason) -> NoReturn:
        await self._stop_all()
        self.sys.exit(reason)

    def _forget(self, slot: _Slot) -> None:
        """The child is dead: drop our capability over it, so restarts never pile them up."""
        if slot.ref is not None:
            _drop(self.sys, (slot.ref,))
        slot.pid = slot.ref = None


def _restarts(restart: Restart, reason: ExitReason) -> bool:
    if restart == "permanent":
        return True
    if restart == "transient":
        return reason.kind not in ("normal", "shutdown")
    return False


def _drop(sys: Sys, refs: Sequence[str]) -> None:
    for ref in refs:
        with contextlib.suppress(CapError):  # already gone (e.g. revoked from above)
            sys.revoke(ref)
