"""Landlock through its raw system calls: filesystem rules, TCP rules and scoping.

The `landlock` package on PyPI covers filesystem rules only; TCP bind/connect (ABI 4) and the
signal and abstract-unix-socket scopes (ABI 6) need the syscalls themselves, which are three
calls with small structs, so they are here over ctypes. `restrict` is called in the sandboxed
child after `PR_SET_NO_NEW_PRIVS`: from then on the process (and everything it starts) may
read and execute only the runtime paths, read and write only its workdir, bind and connect
no TCP port, signal no process outside its own domain and reach no abstract unix socket
outside it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import stat
from collections.abc import Iterable

_SYSCALLS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}

CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1

# Filesystem rights, by the ABI that introduced them.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
# Network rights (ABI 4) and scopes (ABI 6).
NET_BIND_TCP = 1 << 0
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class LandlockError(OSError):
    """Landlock refused a step; the sandbox must not run the code unconfined."""


def _numbers() -> tuple[int, int, int] | None:
    return _SYSCALLS.get(platform.machine())


def abi() -> int:
    """The kernel's Landlock ABI version, or 0 when Landlock is missing or disabled."""
    nums = _numbers()
    if nums is None:
        return 0
    version = _libc.syscall(nums[0], None, ctypes.c_size_t(0), CREATE_RULESET_VERSION)
    return max(int(version), 0)


def fs_rights(version: int) -> int:
    """Every filesystem right the ABI `version` knows (all of them are handled, so denied)."""
    rights = (1 << 13) - 1
    if version >= 2:
        rights |= REFER
    if version >= 3:
        rights |= TRUNCATE
    if version >= 5:
        rights |= IOCTL_DEV
    return rights


def features(version: int) -> list[str]:
    """What `restrict` enforces on this ABI, in words, for the probe's report."""
    out = ["filesystem"] if version >= 1 else []
    if version >= 4:
        out.append("tcp")
    if version >= 6:
        out += ["signal-scope", "abstract-unix-scope"]
    return out


def restrict(
    version: int,
    read_only: Iterable[str],
    read_write: Iterable[str],
    read_write_files: Iterable[str] = (),
) -> None:
    """Confine this process for good: see the module docstring. Raises `LandlockError`."""
    nums = _numbers()
    if nums is None or version < 1:
        raise LandlockError(0, "Landlock is not available")
    create, add_rule, restrict_self = nums
    handled = fs_rights(version)
    attr = _RulesetAttr(handled, 0, 0)
    size = 8
    if version >= 4:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
        size = 16
    if version >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    fd = int(_libc.syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), 0))
    if fd < 0:
        raise LandlockError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        ro = EXECUTE | READ_FILE | READ_DIR
        rules = [(p, ro) for p in read_only]
        rules += [(p, handled) for p in read_write]
        rules += [(p, READ_FILE | WRITE_FILE | (TRUNCATE & handled)) for p in read_write_files]
        for path, access in rules:
            _add_path(add_rule, fd, path, access)
        if _libc.syscall(restrict_self, fd, 0) != 0:
            raise LandlockError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(fd)


def _add_path(add_rule: int, ruleset: int, path: str, access: int) -> None:
    try:
        target = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # nothing there to allow
    try:
        if not stat.S_ISDIR(os.fstat(target).st_mode):
            access &= _FILE_RIGHTS
        rule = _PathBeneath(access, target)
        if _libc.syscall(add_rule, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            raise LandlockError(ctypes.get_errno(), f"landlock_add_rule({path}) failed")
    finally:
        os.close(target)
