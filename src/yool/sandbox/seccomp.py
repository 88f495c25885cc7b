"""The seccomp filter a sandboxed child loads before it runs any code, via `pyseccomp`.

Landlock and seccomp cover each other's gaps: Landlock confines files, TCP, signals and
abstract sockets; this filter takes away the kernel interfaces Landlock does not see. Denied
calls fail with EPERM (so code sees an ordinary error, not a crash):

- every socket family but AF_UNIX (so no UDP, raw, netlink or packet sockets);
- execve/execveat unless the task allows subprocesses, and fork/vfork/non-thread clone
  unless it allows them (threads always work);
- clone with any namespace flag, unshare, setns (no user namespaces, no new mounts);
- clone3 answers ENOSYS, so glibc falls back to clone, whose flags the filter can see;
- ptrace, process_vm_*, io_uring, mount and friends, bpf, perf events, keyrings,
  userfaultfd, kernel modules, kexec, reboot, swap, the clock, and the TIOCSTI/TIOCLINUX
  ioctls that push input into a terminal.

A call from another architecture's ABI (32-bit int 0x80, x32) kills the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
from typing import Any

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2

_CLONE_NAMESPACES = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)
_CLONE_THREAD = 0x00010000
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C

DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "open_by_handle_at",
    "name_to_handle_at",
    "kcmp",
    "pidfd_getfd",
    "process_madvise",
    "lookup_dcookie",
    "syslog",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "iopl",
    "ioperm",
    "vhangup",
    "sethostname",
    "setdomainname",
    "fanotify_init",
    "uselib",
)
EXEC = ("execve", "execveat")
FORK = ("fork", "vfork")


def load_module() -> Any:
    """Import pyseccomp (it looks libseccomp up with ldconfig, so do it before Landlock)."""
    import importlib

    return importlib.import_module("pyseccomp")


def build(allow_exec: bool, allow_fork: bool) -> bytes:
    """The compiled BPF program (what `load` installs); see the module docstring.

    A zygote builds its two variants once, so a child only has to install bytes.
    """
    sc = load_module()
    deny = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    for name in DENIED:
        _add(f, deny, name)
    f.add_rule(sc.ERRNO(errno.EAFNOSUPPORT), "socket", sc.Arg(0, sc.NE, socket.AF_UNIX))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    for flag in _CLONE_NAMESPACES:
        f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    if not allow_fork:
        f.add_rule(deny, "clone", sc.Arg(0, sc.MASKED_EQ, _CLONE_THREAD, 0))
        for name in FORK:
            _add(f, deny, name)
    if not allow_exec:
        for name in EXEC:
            _add(f, deny, name)
    for request in (_TIOCSTI, _TIOCLINUX):
        f.add_rule(deny, "ioctl", sc.Arg(1, sc.MASKED_EQ, 0xFFFFFFFF, request))
    fd = os.memfd_create("yool-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            f.export_bpf(out)
        size = os.lseek(fd, 0, os.SEEK_CUR)
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def load(program: bytes) -> None:
    """Install a program from `build` in this process (no-new-privs must be set already)."""
    if not program or len(program) % 8:
        raise OSError(errno.EINVAL, "not a BPF program")
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def _add(f: Any, action: int, name: str) -> None:
    # A call this architecture or libseccomp does not know cannot be made either.
    with contextlib.suppress(ValueError, OSError):
        f.add_rule(action, name)
