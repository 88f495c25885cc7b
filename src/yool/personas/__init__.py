"""Personas: named system prompts (with a domain, tools and a model) that agents are hired as.

`registry` reads them from the workspace (`.yool/personas`, Claude Code's `.claude/agents`),
the store and the built-ins shipped in `builtin/`; `forge` writes and refines prompts with
an LLM. Only the registry is imported here: `forge` runs agents, so it imports the tools.
"""

from yool.personas.registry import Persona, PersonaFileError, PersonaRegistry

__all__ = ["Persona", "PersonaFileError", "PersonaRegistry"]
