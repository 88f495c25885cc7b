"""`yool` inside the sandbox: the code's one line back to the kernel.

Sandboxed code finds a `yool` object in its globals. `yool.call(op, **args)` sends one JSON
line over the task's socket and blocks for the answer; the host checks `op` against its
allowlist and the calling process's capabilities before doing anything, so the code can
reach only what the process that ran it could. Shorthands: `yool.kv_get(key)`,
`yool.kv_put(key, value)`, `yool.kv_keys(prefix)`, `yool.send(to, text)`,
`yool.remember(text)`, `yool.recall(query)`.
"""

from __future__ import annotations

import json
import socket
from typing import Any


class CallbackError(Exception):
    """The host refused or failed a callback; the message says why."""


class Client:
    __slots__ = ("_buf", "_n", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._n = 0

    def _send(self, obj: Any) -> None:
        self._sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def _line(self) -> Any:
        while b"\n" not in self._buf:
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                raise CallbackError("the host closed the callback channel")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    # -- the set-up handshake (before the code runs) ----------------------------------

    def hello(self) -> None:
        """Tell the host who we are (it reads our pid from SCM_CREDENTIALS and places us)."""
        self._send({"hello": 1})

    def wait_go(self) -> None:
        """Block until the host has placed us (in our cgroup) and lets the code run."""
        reply = self._line()
        if not isinstance(reply, dict) or reply.get("go") != 1:
            raise CallbackError(f"the host did not let the task start: {reply!r}")

    def started(self, layers: list[str]) -> None:
        self._send({"layers": layers})

    # -- callbacks ------------------------------------------------------------------

    def call(self, op: str, **args: Any) -> Any:
        """Run kernel operation `op` as the calling process; raise `CallbackError` if refused."""
        self._n += 1
        self._send({"call": op, "args": args, "id": self._n})
        reply = self._line()
        if not isinstance(reply, dict):
            raise CallbackError(f"bad reply {reply!r}")
        if "error" in reply:
            raise CallbackError(str(reply["error"]))
        return reply.get("ok")

    def kv_get(self, key: str) -> Any:
        return self.call("kv_get", key=key)

    def kv_put(self, key: str, value: Any) -> Any:
        return self.call("kv_put", key=key, value=value)

    def kv_keys(self, prefix: str = "") -> Any:
        return self.call("kv_keys", prefix=prefix)

    def send(self, to: int, text: str) -> Any:
        return self.call("send", to=to, text=text)

    def remember(self, text: str) -> Any:
        return self.call("remember", text=text)

    def recall(self, query: str, k: int = 4) -> Any:
        return self.call("recall", query=query, k=k)

    def __repr__(self) -> str:
        return "<yool sandbox client: yool.call(op, **args)>"
