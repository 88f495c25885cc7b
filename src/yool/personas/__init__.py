"""Personas: named system prompts (with a domain, tools and a model) that agents are hired as.

`registry` reads them from the workspace (`.yool/personas`, Claude Code's `.claude/agents`),
the store and the built-ins shipped in `builtin/`; `forge` writes and refines prompts with
an LLM; `evolve` improves them by tournament. Only the registry is imported here: the others
run agents, so they import the tools (which import the registry).
"""

from yool.personas.registry import Persona, PersonaFileError, PersonaRegistry

__all__ = ["Persona", "PersonaFileError", "PersonaRegistry"]
