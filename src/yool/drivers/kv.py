"""A key-value device: small durable state a process can share under a capability.

Requests are dicts. Reads: `{"op": "get", "key": k}` and `{"op": "keys", "prefix": p}`.
Writes: `{"op": "put", "key": k, "value": v}` and `{"op": "delete", "key": k}`.
A handle works in one namespace, chosen when it is opened (`ns=...`). Values
must be JSON. With a store the data lives in SQLite and survives restarts;
without one it lives in memory.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from yool.kernel.devices import Driver, Handle, Reply
from yool.kernel.errors import DriverError

if TYPE_CHECKING:
    from yool.kernel.store import Store


class KVDriver(Driver):
    name = "kv"

    def __init__(self, store: Store | None = None) -> None:
        self._store = store
        self._memory: dict[str, dict[str, Any]] = {}

    async def open(self, pid: int, params: dict[str, Any]) -> Handle:
        ns = params.get("ns", "default")
        if not isinstance(ns, str) or not ns:
            raise DriverError("kv: ns must be a non-empty string")
        return _KVHandle(self, ns)


class _KVHandle(Handle):
    __slots__ = ("_driver", "_ns")

    def __init__(self, driver: KVDriver, ns: str) -> None:
        self._driver = driver
        self._ns = ns

    async def read(self, request: Any) -> Reply:
        op, key = _parse(request, ("get", "keys"))
        store = self._driver._store
        if op == "get":
            if store is None:
                return Reply(self._driver._memory.get(self._ns, {}).get(key))
            await store.aflush()
            ns = self._ns
            return Reply(await store.read(lambda _c: store.kv_get(ns, key)))
        prefix = key
        if store is None:
            table = self._driver._memory.get(self._ns, {})
            return Reply(sorted(k for k in table if k.startswith(prefix)))
        await store.aflush()
        ns = self._ns
        return Reply(await store.read(lambda _c: store.kv_keys(ns, prefix)))

    async def write(self, data: Any) -> Reply:
        op, key = _parse(data, ("put", "delete"))
        store = self._driver._store
        if op == "put":
            value = data.get("value")
            try:
                json.dumps(value)
            except (TypeError, ValueError) as e:
                raise DriverError(f"kv: value for {key!r} is not JSON ({e})") from None
            if store is None:
                self._driver._memory.setdefault(self._ns, {})[key] = value
            else:
                store.kv_put(self._ns, key, value)
        elif store is None:
            self._driver._memory.get(self._ns, {}).pop(key, None)
        else:
            store.kv_delete(self._ns, key)
        return Reply(True)


def _parse(request: Any, ops: tuple[str, str]) -> tuple[str, str]:
    if not isinstance(request, dict):
        raise DriverError(
            f"kv: a request is a dict with 'op' ({' or '.join(ops)}), got {type(request).__name__}"
        )
    op = request.get("op")
    if op not in ops:
        raise DriverError(f"kv: op must be {' or '.join(ops)}, got {op!r}")
    key = request.get("prefix", "") if op == "keys" else request.get("key")
    if not isinstance(key, str):
        field = "prefix" if op == "keys" else "key"
        raise DriverError(f"kv: {field} must be a string, got {type(key).__name__}")
    return op, key
