"""Personas: named system prompts (the registry), prompt forging, and prompt evolution."""
