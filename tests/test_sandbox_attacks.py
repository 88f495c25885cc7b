"""The attack suite: every attack the sandbox must stop, each checked by its real effect.

Each test runs an attack in the real sandbox (a warm zygote pool, every layer this machine
has) and then looks at the world, not at the attack's own report: the victim process the
test started is still alive and unsignalled and untraced, the file outside the workdir does
not exist, the listener the test opened on 127.0.0.1 accepted nothing, no process carrying
the attack's marker is left anywhere. Victims run as the same uid as the sandboxed code, so
only the sandbox stands between them.

Most attacks are stopped by layers every machine has, and those always run. An attack that
only some layers stop (`needs_one_of`) is skipped, with the reason naming the missing layers
and what they leave open, on a machine that has none of them (say, no bubblewrap and a kernel
without Landlock): it would get through there, and the probe says so. Where an attack is
stopped either way but one layer changes how (fork refused by seccomp, or stopped by
RLIMIT_NPROC), the test asserts the outcome of the layers present.

As root the module runs twice: here, and again as an unprivileged user by
`test_the_attack_suite_holds_for_an_unprivileged_user`, which re-runs this very file under
`setpriv` (in a private mount namespace where the Python runtime, which may live under a
0700 home, is reachable by that user).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from yool.sandbox import Config, Limits, Pool, RunResult, Task, landlock
from yool.sandbox.probe import NAMES, probe

T = TypeVar("T")
ROOT = os.geteuid() == 0
UNPRIV = os.environ.get("YOOL_TEST_UNPRIV") == "1"
SANDBOX_UID = 65534
UNPRIV_UID = 65533
SECRET = "sk-yool-attack-secret-" + uuid.uuid4().hex

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")


class Sandbox:
    """One pool on a loop in a thread, shared by the module's tests."""

    def __init__(self, ro_paths: tuple[str, ...] = ()) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        level = probe(SANDBOX_UID).level
        self.pool = Pool(Config(level=level, zygotes=2, uid=SANDBOX_UID, ro_paths=ro_paths))
        self.do(self.pool.start())

    def do(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def run(self, code: str, **limits: Any) -> RunResult:
        sub = bool(limits.pop("subprocess", False))
        lim = Limits(**{"wall_s": 5.0, "cpu_s": 5, **limits})
        return self.do(self.pool.run(Task(code, subprocess=sub, limits=lim)))

    def close(self) -> None:
        self.do(self.pool.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def sb(suid_binary: Path | None) -> Iterator[Sandbox]:
    os.environ["YOOL_TEST_SECRET"] = SECRET  # in the host's environment, never the code's
    s = Sandbox(() if suid_binary is None else (str(suid_binary.parent),))
    try:
        yield s
    finally:
        s.close()
        os.environ.pop("YOOL_TEST_SECRET", None)


def _same_uid() -> dict[str, Any]:
    """Popen arguments that make a victim run as the uid the sandboxed code runs as."""
    return {"user": SANDBOX_UID, "group": SANDBOX_UID, "extra_groups": []} if ROOT else {}


@contextlib.contextmanager
def victim(env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A process the test owns (a sleep), as the sandbox's uid, killed afterwards."""
    p = subprocess.Popen(["/bin/sleep", "60"], env=env or {"PATH": "/usr/bin"}, **_same_uid())
    try:
        time.sleep(0.05)
        yield p
    finally:
        p.kill()
        p.wait()


def _state(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _marked(marker: str) -> list[int]:
    """Processes anywhere on this machine whose name is `marker` (the attack set it)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{name}/comm").read_text().strip() == marker[:15]:
                    found.append(int(name))
    return found


def _name_me(marker: str) -> str:
    return (
        "import ctypes\n"
        f"ctypes.CDLL(None).prctl(15, ctypes.c_char_p({marker[:15]!r}.encode()), 0, 0, 0)\n"
    )


def _all_layers(r: RunResult) -> None:
    expected = ["supervisor", "rlimits", "privdrop", "landlock", "seccomp", "bwrap", "cgroups"]
    p = probe(SANDBOX_UID)
    assert r.layers == [n for i, n in enumerate(expected) if p.layers[i].available], r


def _has(name: str) -> bool:
    """Whether this machine has `name`: a layer, or one of its features ("landlock:tcp",
    "bwrap:userns": bubblewrap's --disable-userns, which only the unprivileged mode has)."""
    p = probe(SANDBOX_UID)
    layer, _, feature = name.partition(":")
    if not p.available(NAMES.index(layer)):
        return False
    if layer == "landlock" and feature:
        return feature in landlock.features(p.landlock_abi)
    return feature != "userns" or not p.root


def needs_one_of(*names: str) -> None:
    """Skip unless one of `names` (see `_has`) is on this machine, saying what is missing."""
    if any(_has(n) for n in names):
        return
    p = probe(SANDBOX_UID)
    why = []
    for name in names:
        layer = p.layers[NAMES.index(name.partition(":")[0])]
        what = f"layer {layer.level} ({name})"
        why.append(f"{what}: {layer.detail}" if not layer.available else f"{what}: not here")
    pytest.skip(f"stopped only by {' or '.join(names)}; this machine has none: {'; '.join(why)}")


# -- resource bombs ----------------------------------------------------------------------------


def test_a_fork_bomb_is_refused_and_leaves_no_process(sb: Sandbox) -> None:
    marker = "ybomb" + uuid.uuid4().hex[:8]
    code = _name_me(marker) + "import os\nn = 0\nwhile True:\n    os.fork()\n    n += 1\n"
    r = sb.run(code, wall_s=3)
    _all_layers(r)
    if _has("seccomp"):
        assert r.exit_code == 1 and "PermissionError" in r.stderr, r  # fork is refused
    else:  # fork works: RLIMIT_NPROC (and the cgroup) stop it, or the wall clock does
        assert r.reason == "timeout" or "BlockingIOError" in r.stderr, r
    time.sleep(0.3)
    assert _marked(marker) == []


def test_a_fork_bomb_with_fork_allowed_is_capped_and_killed_as_a_tree(sb: Sandbox) -> None:
    marker = "ybomb" + uuid.uuid4().hex[:8]
    code = _name_me(marker) + (
        "import os, time\n"
        "for _ in range(10000):\n"
        "    try:\n"
        "        os.fork()\n"
        "    except OSError:\n"
        "        time.sleep(0.01)\n"
    )
    t0 = time.monotonic()
    r = sb.run(code, wall_s=2, subprocess=True, procs=16)
    assert time.monotonic() - t0 < 8, r
    time.sleep(0.3)
    assert _marked(marker) == [], "a bomb process outlived its task"


def test_a_thread_bomb_stops_at_the_limits(sb: Sandbox) -> None:
    code = (
        "import threading, time\nn = 0\n"
        "try:\n"
        "    while n < 100000:\n"
        "        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\n"
        "        n += 1\n"
        "except BaseException as e:\n"
        "    print('stopped', n, type(e).__name__)\n"
        "import os; os._exit(0)\n"
    )
    r = sb.run(code, wall_s=5)
    assert r.stdout.startswith("stopped"), r
    assert int(r.stdout.split()[1]) < 2000


def test_a_memory_bomb_gets_memory_error_under_the_cap(sb: Sandbox) -> None:
    code = (
        "chunks = []\n"
        "try:\n"
        "    for _ in range(64):\n"
        "        chunks.append(bytearray(64 << 20))\n"
        "except MemoryError:\n"
        "    print('MemoryError at', len(chunks))\n"
    )
    r = sb.run(code, memory_bytes=256 << 20)
    assert r.stdout.startswith("MemoryError at"), r
    assert r.max_rss_kb < 300 << 10  # never near the 4 GiB it asked for


def test_an_infinite_loop_is_stopped(sb: Sandbox) -> None:
    t0 = time.monotonic()
    r = sb.run("while True:\n    pass\n", wall_s=1.5, cpu_s=1)
    assert r.reason in ("timeout", "signalled") and r.exit_code is None, r
    assert time.monotonic() - t0 < 4


def test_sleeping_past_the_limit_is_a_timeout(sb: Sandbox) -> None:
    t0 = time.monotonic()
    r = sb.run("import time\ntime.sleep(60)\n", wall_s=1)
    assert (r.reason, r.signal) == ("timeout", signal.SIGTERM), r
    assert time.monotonic() - t0 < 3


def test_a_process_ignoring_sigterm_is_killed(sb: Sandbox) -> None:
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(60)\n"
    t0 = time.monotonic()
    r = sb.run(code, wall_s=1)
    assert (r.reason, r.signal) == ("timeout", signal.SIGKILL), r
    assert time.monotonic() - t0 < 4


def test_a_stdout_flood_is_cut_at_the_cap(sb: Sandbox) -> None:
    r = sb.run("while True:\n    print('x' * 9999)\n", output_bytes=64 << 10)
    assert (r.reason, r.truncated) == ("output_limit", True), r.reason
    assert len(r.stdout) + len(r.stderr) <= 64 << 10


# -- files ------------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home with a readable-by-all ~/.ssh key and a world-writable dir: only the sandbox
    keeps the code out."""
    h = tmp_path / "home"
    (h / ".ssh").mkdir(parents=True)
    key = h / ".ssh" / "id_ed25519"
    key.write_text(SECRET)
    for p in (tmp_path, h, h / ".ssh"):
        p.chmod(0o777)
    key.chmod(0o644)
    return h


def test_writing_outside_the_workdir_and_into_home_creates_nothing(sb: Sandbox, home: Path) -> None:
    needs_one_of("landlock", "bwrap")
    targets = [home / ".bashrc", home.parent / "outside.txt", Path("/tmp") / uuid.uuid4().hex]
    code = "".join(
        f"try:\n    open({str(t)!r}, 'w').write('pwned')\nexcept OSError as e:\n    print(e)\n"
        for t in targets
    )
    r = sb.run(code)
    _all_layers(r)
    for t in targets:
        assert not t.exists(), f"{t} was written"


def test_reading_ssh_keys_and_etc_shadow_gets_nothing(sb: Sandbox, home: Path) -> None:
    needs_one_of("landlock", "bwrap")  # the key is world-readable: no uid keeps it safe
    code = (
        f"for p in [{str(home / '.ssh' / 'id_ed25519')!r}, '/etc/shadow', '/root/.bashrc']:\n"
        "    try:\n"
        "        print(open(p).read())\n"
        "    except OSError as e:\n"
        "        print('denied', type(e).__name__)\n"
    )
    r = sb.run(code)
    assert SECRET not in r.stdout and "root:" not in r.stdout, r.stdout
    assert r.stdout.count("denied") == 3, r


def test_secrets_in_the_environment_do_not_reach_the_code(sb: Sandbox) -> None:
    assert os.environ["YOOL_TEST_SECRET"] == SECRET
    code = (
        "import os\nprint(dict(os.environ))\n"
        "for p in ('/proc/self/environ', '/proc/1/environ', '/proc/2/environ'):\n"
        "    try:\n        print(open(p).read())\n    except OSError as e:\n        print(e)\n"
    )
    r = sb.run(code)
    assert SECRET not in r.stdout + r.stderr
    assert "YOOL_TEST_SECRET" not in r.stdout


def test_a_siblings_proc_environ_is_unreadable(sb: Sandbox) -> None:
    needs_one_of("landlock", "bwrap")
    with victim({"PATH": "/usr/bin", "VICTIM_SECRET": SECRET}) as v:
        assert SECRET in Path(f"/proc/{v.pid}/environ").read_text()  # the host can
        r = sb.run(
            f"try:\n    print(open('/proc/{v.pid}/environ').read())\n"
            "except OSError as e:\n    print('denied', e)\n"
        )
        assert SECRET not in r.stdout, r.stdout
        assert v.poll() is None


def test_ptrace_of_a_sibling_fails_and_it_is_never_traced(sb: Sandbox) -> None:
    needs_one_of("seccomp", "landlock", "bwrap")
    with victim() as v:
        code = (
            "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"print(libc.ptrace(16, {v.pid}, 0, 0), ctypes.get_errno())\n"
            "import time; time.sleep(0.2)\n"
        )
        r = sb.run(code)
        assert r.stdout.split()[0] == "-1", r
        status = _state(v.pid)
        assert status["TracerPid"].strip() == "0"
        assert status["State"][0] == "S" and v.poll() is None


def test_signalling_another_process_reaches_nothing(sb: Sandbox) -> None:
    needs_one_of("landlock:signal-scope", "bwrap")
    with victim() as v:
        os.kill(v.pid, signal.SIGSTOP)
        time.sleep(0.05)
        assert _state(v.pid)["State"][0] == "T"
        code = (
            "import os, signal\n"
            f"for target in ({v.pid}, -1, 1):\n"
            "    try:\n"
            "        os.kill(target, signal.SIGCONT)\n"
            "    except OSError as e:\n"
            "        print(target, e)\n"
            f"try:\n    os.kill({v.pid}, signal.SIGTERM)\nexcept OSError as e:\n    print(e)\n"
        )
        sb.run(code)
        time.sleep(0.1)
        assert _state(v.pid)["State"][0] == "T", "the victim was continued"
        assert v.poll() is None, "the victim was terminated"
        os.kill(v.pid, signal.SIGCONT)


# -- network and sockets ---------------------------------------------------------------------


def test_tcp_to_localhost_never_connects(sb: Sandbox) -> None:
    needs_one_of("seccomp", "landlock:tcp", "bwrap")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        code = (
            "import socket\n"
            "for fam in (socket.AF_INET,):\n"
            "    try:\n"
            f"        s = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "        s.sendall(b'leak')\n        print('connected')\n"
            "    except OSError as e:\n        print('refused', e)\n"
        )
        r = sb.run(code)
        assert "connected" not in r.stdout, r
        assert select.select([srv], [], [], 0.3)[0] == [], "a connection reached the listener"


def test_a_udp_connect_sends_nothing(sb: Sandbox) -> None:
    needs_one_of("seccomp", "bwrap")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
        srv.bind(("127.0.0.1", 0))
        port = srv.getsockname()[1]
        code = (
            "import socket\ntry:\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"    s.connect(('127.0.0.1', {port}))\n    s.send(b'leak')\n    print('sent')\n"
            "except OSError as e:\n    print('refused', e)\n"
        )
        r = sb.run(code)
        if _has("seccomp"):
            assert "sent" not in r.stdout, r  # no AF_INET socket at all
        assert select.select([srv], [], [], 0.3)[0] == [], "a datagram arrived"


def test_an_abstract_unix_socket_outside_is_unreachable(sb: Sandbox) -> None:
    needs_one_of("landlock:abstract-unix-scope", "bwrap")
    name = "\0yool-attack-" + uuid.uuid4().hex
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(name)
        srv.listen(8)
        code = (
            "import socket\ntry:\n    s = socket.socket(socket.AF_UNIX)\n"
            f"    s.connect({name!r})\n    s.sendall(b'leak')\n    print('connected')\n"
            "except OSError as e:\n    print('refused', e)\n"
        )
        r = sb.run(code)
        assert "connected" not in r.stdout, r
        assert select.select([srv], [], [], 0.3)[0] == []


# -- processes --------------------------------------------------------------------------------


def test_running_a_subprocess_is_refused(sb: Sandbox) -> None:
    needs_one_of("seccomp")
    code = (
        "import os, subprocess\n"
        "for argv in (['/bin/sh', '-c', 'echo pwned > pwned.txt'], ['/usr/bin/id']):\n"
        "    try:\n        subprocess.run(argv)\n        print('ran')\n"
        "    except OSError as e:\n        print('refused', e.errno)\n"
        "print('system', os.system('echo pwned > pwned2.txt'))\n"
        "try:\n    os.execv('/bin/sh', ['sh', '-c', 'echo pwned'])\n"
        "except OSError as e:\n    print('exec refused', e.errno)\n"
    )
    r = sb.run(code)
    assert "ran" not in r.stdout and "pwned" not in r.stdout, r
    assert "pwned.txt" not in r.files and "pwned2.txt" not in r.files
    assert "exec refused" in r.stdout


@pytest.fixture(scope="module")
def suid_binary() -> Iterator[Path | None]:
    """A setuid-root copy of `id` (made by root; the unprivileged re-run gets its path),
    readable by every task of the module's pool."""
    given = os.environ.get("YOOL_TEST_SUID")
    if given:
        yield Path(given)
        return
    if not ROOT:
        yield None
        return
    d = Path(tempfile.mkdtemp(prefix="yool-suid-"))  # reachable by every uid
    d.chmod(0o755)
    target = d / "suid-id"
    shutil.copy("/usr/bin/id", target)
    os.chmod(target, 0o4755)
    try:
        yield target
    finally:
        shutil.rmtree(d)


def test_a_setuid_binary_gives_no_privilege(sb: Sandbox, suid_binary: Path | None) -> None:
    if suid_binary is None:
        pytest.skip("only root can make a setuid-root binary to attack")
    assert os.stat(suid_binary).st_mode & 0o4000 and os.stat(suid_binary).st_uid == 0
    code = (
        "import subprocess\n"
        f"r = subprocess.run([{str(suid_binary)!r}, '-u'], capture_output=True, text=True)\n"
        "print('euid', r.stdout.strip(), r.returncode)\n"
    )
    r = sb.run(code, subprocess=True)
    assert r.stdout.startswith("euid"), r
    assert r.stdout.split()[1] != "0", r.stdout  # no-new-privs: on every machine
    if _has("seccomp"):
        denied = sb.run(code)  # exec not allowed at all
        assert "euid" not in denied.stdout and "PermissionError" in denied.stderr


def test_a_daemon_does_not_outlive_its_task(sb: Sandbox) -> None:
    marker = "ydmn" + uuid.uuid4().hex[:8]
    name_me = "".join("        " + line + "\n" for line in _name_me(marker).splitlines())
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n" + name_me + "        time.sleep(30)\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\nprint('parent done')\n"
    )
    r = sb.run(code, subprocess=True)
    assert "parent done" in r.stdout, r
    time.sleep(0.3)
    assert _marked(marker) == [], "the daemon outlived its task"
    if _has("seccomp"):
        refused = sb.run(code)  # and without fork allowed there is no daemon to begin with
        assert "PermissionError" in refused.stderr


def test_creating_a_user_namespace_fails(sb: Sandbox) -> None:
    needs_one_of("seccomp", "bwrap:userns")
    code = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "print('unshare', libc.unshare(0x10000000), ctypes.get_errno())\n"
        "print('clone', libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0), ctypes.get_errno())\n"
    )
    for sub in (False, True):
        r = sb.run(code, subprocess=sub)
        lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
        assert lines["unshare"].split()[0] == "-1", r
        assert lines["clone"].split()[0] == "-1", r


def test_filling_the_disk_stops_at_the_cap(sb: Sandbox) -> None:
    code = (
        "import os\nblock = b'x' * (1 << 20)\nn = 0\n"
        "try:\n"
        "    for i in range(4096):\n"
        "        with open(f'f{i}', 'wb') as f:\n"
        "            for _ in range(4):\n"
        "                f.write(block); f.flush(); n += 1\n"
        "                print(n, flush=True)\n"
        "except OSError as e:\n    print('stopped', e.errno)\n"
    )
    r = sb.run(code, disk_bytes=8 << 20, wall_s=20)
    written = [int(x) for x in r.stdout.split() if x.isdigit()]
    assert r.reason in ("disk_limit", "exited"), r.reason
    assert written and max(written) <= 200, "far more than the cap was written"


def test_exhausting_file_descriptors_stops_at_the_limit(sb: Sandbox) -> None:
    code = (
        "fs = []\ntry:\n    while True:\n        fs.append(open('/dev/null'))\n"
        "except OSError as e:\n    print(len(fs), e.errno)\n"
    )
    r = sb.run(code, open_files=32)
    n, errno_ = map(int, r.stdout.split())
    assert n < 32 and errno_ == 24, r  # EMFILE


def test_a_planted_symlink_is_never_followed_by_the_host(sb: Sandbox, home: Path) -> None:
    key = home / ".ssh" / "id_ed25519"
    code = (
        "import os\n"
        f"os.symlink({str(key)!r}, 'key.txt')\n"
        "os.symlink('/etc/shadow', 'shadow.txt')\n"
        f"os.symlink({str(home)!r}, 'homedir')\n"
        "open('real.txt', 'w').write('mine')\n"
    )
    r = sb.run(code)
    assert r.files["real.txt"] == "mine"
    for name in ("key.txt", "shadow.txt", "homedir"):
        assert r.files[name] == "(symlink, not followed)", r.files
    assert SECRET not in str(r.files) and "root:" not in str(r.files)


# -- the same suite as an unprivileged user --------------------------------------------------------


_HARNESS = r"""
import os, subprocess, sys
needed, uid, argv = sys.argv[1].split(":"), int(sys.argv[2]), sys.argv[3:]
def closed(p):
    while p != "/":
        if not os.stat(p).st_mode & 0o001:
            return p
        p = os.path.dirname(p)
    return None
for d in sorted({c for c in map(closed, needed) if c}, key=len):
    inside = [n for n in needed if n.startswith(d + "/")]
    stage = f"/tmp/.yool-stage-{os.getpid()}"
    os.makedirs(stage, exist_ok=True)
    for i, n in enumerate(inside):
        os.makedirs(f"{stage}/{i}", exist_ok=True)
        subprocess.run(["mount", "--bind", n, f"{stage}/{i}"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", d], check=True)
    for i, n in enumerate(inside):
        os.makedirs(n, exist_ok=True)
        subprocess.run(["mount", "--bind", f"{stage}/{i}", n], check=True)
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
os.execv(argv[0], argv)
"""


@pytest.mark.skipif(not ROOT or UNPRIV, reason="needs root to become another user")
def test_the_attack_suite_holds_for_an_unprivileged_user(suid_binary: Path | None) -> None:
    assert suid_binary is not None
    repo = Path(__file__).resolve().parent.parent
    work = Path(tempfile.mkdtemp(prefix="yool-unpriv-"))
    os.chown(work, UNPRIV_UID, UNPRIV_UID)
    needed = [sys.base_prefix, sys.prefix, str(repo)]
    env = {
        "PATH": os.environ.get("PATH") or "/usr/bin:/bin",  # (a PATH without bwrap stays so)
        "HOME": str(work),
        "YOOL_TEST_UNPRIV": "1",
        "YOOL_TEST_SUID": str(suid_binary),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    argv = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-rs", "-p", "no:cacheprovider"]
    argv += [f"--basetemp={work / 'pytest'}", str(Path(__file__).resolve())]
    done = subprocess.run(
        [
            *("unshare", "--mount", "--propagation", "private", sys.executable, "-c", _HARNESS),
            *(":".join(needed), str(UNPRIV_UID), *argv),
        ],
        env=env,
        cwd=str(work),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    shutil.rmtree(work, ignore_errors=True)
    tail = (done.stdout + done.stderr)[-3000:]
    assert done.returncode == 0, tail
    summary = done.stdout.strip().splitlines()[-1]
    counts = {word: int(n) for n, word in (p.split()[:2] for p in summary.split(", "))}
    assert set(counts) <= {"passed", "skipped"}, tail
    skips = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    missing = [line for line in skips if "; this machine has none: " in line]
    others = [line for line in skips if line not in missing]
    assert len(others) == 1 and "needs root to become another user" in others[0], tail
    assert counts.get("skipped", 0) == len(skips), tail
    # every attack ran (or was skipped for the layers that user lacks), and the check that
    # it ran unprivileged
    assert counts["passed"] + len(missing) >= 25, tail


@pytest.mark.skipif(
    not UNPRIV, reason="runs only inside the unprivileged re-run of this module (see above)"
)
def test_this_run_is_unprivileged(sb: Sandbox) -> None:
    assert os.geteuid() == UNPRIV_UID
    r = sb.run("import os\nprint(os.getuid(), os.geteuid())")
    assert r.stdout.split() == [str(UNPRIV_UID)] * 2
    assert "privdrop" in r.layers
