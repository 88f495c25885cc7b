"""Devices a process opens through a capability: key-value, tools, (later) LLMs, sandbox."""

from yool.drivers.kv import KVDriver
from yool.drivers.tools import ToolsDriver

__all__ = ["KVDriver", "ToolsDriver"]
