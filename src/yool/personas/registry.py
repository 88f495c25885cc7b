"""Personas: named system prompts with a domain, a description, the tools they may use, a model.

A persona comes from one of four sources. When two define the same name, the first of this
list wins (`PRECEDENCE`):

1. `workspace`: `.yool/personas/*.md` in the session's workspace;
2. `claude`: Claude Code's sub-agent files, `.claude/agents/*.md`, read unchanged;
3. `saved`: saved with `persona_save` (or by evolution), in the store (kv namespace
   `personas`), so they outlive the server;
4. `builtin`: the markdown files shipped in `yool/personas/builtin/`.

A file is markdown with YAML front matter, as Claude Code writes them::

    ---
    name: reviewer
    description: Reviews a change for bugs
    tools: Read, Grep, Glob      # or a YAML list; omitted: every tool
    model: sonnet                # sonnet | opus | haiku | inherit | a model id
    domain: code review          # yool's own field (optional)
    ---
    You are a meticulous reviewer...

`tools` names yool's tool groups (`files`, `write`, `kv`, `delegate`, `code`) or Claude Code's
tools, mapped to yool's (`TOOL_MAP`): Read/Grep/Glob/LS read files, Write/Edit/MultiEdit write
them, Task delegates, Bash runs code (Python or sh, in yool's sandbox: an empty directory with
no network, not the workspace). Tools yool does not have (WebFetch, ...) are kept as declared
but unavailable, and said so. A malformed file is skipped with a warning naming the file and the
problem; it never stops the server. Workspace files are re-read when their mtime, size or
inode changes: each lookup costs a directory scan and a stat per file, no parse.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.resources
import logging
import os
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from yool.kernel.store import Store

log = logging.getLogger("yool.personas")

PERSONAS_NS = "personas"  # store kv namespace of saved personas, keyed by name
PRECEDENCE = ("workspace", "claude", "saved", "builtin")
WORKSPACE_DIRS = (("workspace", Path(".yool/personas")), ("claude", Path(".claude/agents")))
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
MAX_PROMPT_CHARS = 64_000  # spawn takes 100,000: room for the lessons a hire adds
MAX_FILE_BYTES = 256 * 1024
MAX_FILES = 500  # per directory; the rest are skipped with a warning
GROUPS = ("files", "kv", "delegate", "code")  # yool's tool groups, in the order they are listed

# Claude Code's tool names (and yool's own), lower-cased, to (yool group, may write files).
TOOL_MAP: dict[str, tuple[str, bool]] = {
    "files": ("files", False),
    "write": ("files", True),
    "kv": ("kv", False),
    "delegate": ("delegate", False),
    "read": ("files", False),
    "grep": ("files", False),
    "glob": ("files", False),
    "ls": ("files", False),
    "notebookread": ("files", False),
    "edit": ("files", True),
    "multiedit": ("files", True),
    "notebookedit": ("files", True),
    "task": ("delegate", False),
    "code": ("code", False),
    "bash": ("code", False),
}
# Claude Code's model aliases, as Anthropic model ids (other providers use their own model).
MODEL_ALIASES = {
    "sonnet": "claude-sonnet-4-5",
    "opus": "claude-opus-4-5",
    "haiku": "claude-haiku-4-5",
}

_FRONT = re.compile(
    r"\A\ufeff?---[ \t]*\r?\n(?P<meta>.*?)^(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)(?P<body>.*)\Z",
    re.S | re.M,
)


@dataclass(frozen=True, slots=True)
class Persona:
    """One persona. `tools` bounds what a hire may be granted; `writes`: it may write files."""

    name: str
    prompt: str  # the system prompt (the markdown body)
    description: str = ""
    domain: str = ""
    tools: tuple[str, ...] = ()  # yool tool groups it may use ("files", "kv", "delegate", ...)
    model: str | None = None  # as declared: an alias (sonnet, opus, haiku) or a model id
    source: str = "builtin"  # builtin | saved | workspace (.yool/personas) | claude
    writes: bool = False  # "files" includes write access
    unavailable: tuple[str, ...] = ()  # declared tools yool does not have (WebFetch, ...)
    path: str | None = None  # the file it was read from, relative to the workspace

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "prompt": self.prompt,
            "description": self.description,
            "domain": self.domain,
            "tools": list(self.tools),
            "writes": self.writes,
            "unavailable": list(self.unavailable),
            "model": self.model,
        }


class PersonaFileError(ValueError):
    """A persona file or record that cannot be used; the message says why."""


def _op_error(message: str) -> Exception:
    # Imported here: `yool.tools` imports this module (for the session), not the other way.
    from yool.tools.table import OpError

    return OpError(message)


# -- parsing --------------------------------------------------------------------------------


def map_tools(declared: Sequence[str] | None) -> tuple[tuple[str, ...], bool, tuple[str, ...]]:
    """Declared tool names as (yool groups, may write files, names yool does not have).

    `None` (no `tools` field) inherits every tool, as in Claude Code.
    """
    if declared is None:
        return GROUPS, True, ()
    groups: set[str] = set()
    writes = False
    missing: list[str] = []
    for raw in declared:
        name = raw.strip()
        if not name:
            continue
        mapped = TOOL_MAP.get(name.lower())
        if mapped is None:
            if name not in missing:
                missing.append(name)
            continue
        groups.add(mapped[0])
        writes = writes or mapped[1]
    return tuple(g for g in GROUPS if g in groups), writes, tuple(missing)


def declared_tools(persona: Persona) -> list[str]:
    """The persona's tools in front-matter form (`write` stands for files with writing)."""
    out = list(persona.tools)
    if persona.writes and "files" in out:
        out.insert(out.index("files") + 1, "write")
    return out + list(persona.unavailable)


def check_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise PersonaFileError(
            f"{what}: {name!r} is not a persona name; use a lowercase slug of letters, digits, "
            "'-' and '_' (at most 64), e.g. 'code-reviewer'"
        )
    return name


def _string(meta: Mapping[str, Any], key: str) -> str | None:
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise PersonaFileError(f"'{key}' must be text, not {type(value).__name__}")
    return str(value).strip()


def _tool_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [t for t in (p.strip() for p in value.split(",")) if t]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return [t.strip() for t in value if t.strip()]
    raise PersonaFileError(
        "'tools' must be a comma-separated string (Read, Grep) or a list of names"
    )


def parse_persona(text: str, *, stem: str, source: str, path: str | None = None) -> Persona:
    """A persona from markdown with YAML front matter; `PersonaFileError` says what is wrong."""
    m = _FRONT.match(text.replace("\r\n", "\n"))
    if m is None:
        raise PersonaFileError(
            "no YAML front matter: start the file with a '---' line, the fields "
            "(name, description, tools, model), and a closing '---' line"
        )
    try:
        meta = yaml.safe_load(m.group("meta"))
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 2}"  # +1: 1-based, +1: the opening '---'
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PersonaFileError(f"front matter is not valid YAML{where}: {problem}") from None
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise PersonaFileError(
            f"front matter must be 'key: value' fields, not a {type(meta).__name__}"
        )
    name = _string(meta, "name") or stem
    check_name(name)
    prompt = m.group("body").strip()
    if not prompt:
        raise PersonaFileError("no system prompt after the front matter")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PersonaFileError(f"the prompt is longer than {MAX_PROMPT_CHARS} characters")
    tools, writes, missing = map_tools(_tool_list(meta.get("tools")))
    model = _string(meta, "model") or None
    return Persona(
        name=name,
        prompt=prompt,
        description=_string(meta, "description") or "",
        domain=_string(meta, "domain") or "",
        tools=tools,
        model=model,
        source=source,
        writes=writes,
        unavailable=missing,
        path=path,
    )


def render_persona(persona: Persona) -> str:
    """The persona as a markdown file with front matter (what `parse_persona` reads)."""
    meta: dict[str, Any] = {"name": persona.name}
    if persona.description:
        meta["description"] = persona.description
    if persona.domain:
        meta["domain"] = persona.domain
    meta["tools"] = ", ".join(declared_tools(persona))
    if persona.model:
        meta["model"] = persona.model
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100)
    return f"---\n{front}---\n{persona.prompt.strip()}\n"


def persona_from_json(data: Any) -> Persona:
    """A saved persona from its store record."""
    if not isinstance(data, dict):
        raise PersonaFileError("the record is not an object")
    try:
        name = check_name(data["name"])
        prompt = data["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise PersonaFileError("the record has no prompt")
        tools = tuple(t for t in data.get("tools", ()) if t in GROUPS)
        model = data.get("model")
        return Persona(
            name=name,
            prompt=prompt,
            description=str(data.get("description") or ""),
            domain=str(data.get("domain") or ""),
            tools=tools,
            model=model if isinstance(model, str) and model else None,
            source="saved",
            writes=bool(data.get("writes")) and "files" in tools,
            unavailable=tuple(str(t) for t in data.get("unavailable", ())),
        )
    except (KeyError, TypeError) as e:
        raise PersonaFileError(f"the record is incomplete ({e})") from None


def enriched(prompt: str, lessons: Iterable[str]) -> str:
    """`prompt` followed by the lessons to apply, if any."""
    items = [" ".join(text.split()) for text in lessons if text.strip()]
    if not items:
        return prompt
    listed = "\n".join(f"- {text}" for text in items)
    return (
        f"{prompt.rstrip()}\n\nLessons from past work (apply those that fit this task):\n{listed}"
    )


def resolve_model(declared: str | None, provider: str) -> str | None:
    """The model a hire runs on: an alias means an Anthropic model, else the session's."""
    if declared is None or declared.strip().lower() in ("", "inherit"):
        return None
    alias = MODEL_ALIASES.get(declared.strip().lower())
    if alias is not None:
        return alias if provider == "anthropic" else None
    return declared.strip()


# -- a directory of persona files --------------------------------------------------------------

Signature = tuple[int, int, int]  # (mtime_ns, size, inode)


@dataclass(slots=True)
class _Scan:
    signature: dict[str, Signature] = field(default_factory=dict)
    parsed: dict[str, Persona | str] = field(default_factory=dict)  # file -> persona | problem


class _Dir:
    """One persona directory, re-parsed file by file when a file's signature changes."""

    def __init__(self, workspace: Path, relative: Path, source: str) -> None:
        self.root = workspace / relative
        self.relative = relative
        self.source = source
        self.scan = _Scan()
        self.personas: dict[str, Persona] = {}
        self.warnings: list[str] = []

    def _listing(self) -> tuple[dict[str, Signature], list[str]]:
        notes: list[str] = []
        out: dict[str, Signature] = {}
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return out, notes
        except OSError as e:
            return out, [f"{self.relative}: cannot list ({e.strerror or e})"]
        for entry in entries:
            if not entry.name.endswith(".md") or entry.name.startswith("."):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:
                continue
            if len(out) >= MAX_FILES:
                notes.append(f"{self.relative}: more than {MAX_FILES} files; the rest skipped")
                break
            out[entry.name] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return out, notes

    def _parse(self, name: str, size: int) -> Persona | str:
        rel = str(self.relative / name)
        if size > MAX_FILE_BYTES:
            return f"larger than {MAX_FILE_BYTES // 1024} KiB"
        try:
            text = (self.root / name).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            return "not UTF-8 text"
        except OSError as e:
            return f"cannot read ({e.strerror or e})"
        try:
            return parse_persona(text, stem=name[:-3], source=self.source, path=rel)
        except PersonaFileError as e:
            return str(e)

    def refresh(self) -> bool:
        """Re-read what changed on disk; True if anything did."""
        signature, notes = self._listing()
        if signature == self.scan.signature and not notes:
            return False
        parsed: dict[str, Persona | str] = {}
        for name, sig in signature.items():
            old = self.scan.parsed.get(name)
            if old is not None and self.scan.signature.get(name) == sig:
                parsed[name] = old
            else:
                parsed[name] = self._parse(name, sig[1])
        personas: dict[str, Persona] = {}
        warnings = list(notes)
        for name, got in parsed.items():
            rel = self.relative / name
            if isinstance(got, str):
                warnings.append(f"{rel}: skipped: {got}")
            elif got.name in personas:
                first = personas[got.name].path
                warnings.append(
                    f"{rel}: skipped: persona {got.name!r} is already defined by {first}"
                )
            else:
                personas[got.name] = got
        for warning in warnings:
            if warning not in self.warnings:
                log.warning("personas: %s", warning)
        self.scan = _Scan(signature, parsed)
        self.personas = personas
        self.warnings = warnings
        return True


def _builtins() -> dict[str, Persona]:
    """The personas shipped with yool (read from the package, so they work from a wheel)."""
    out: dict[str, Persona] = {}
    folder = importlib.resources.files("yool.personas").joinpath("builtin")
    for item in sorted(folder.iterdir(), key=lambda i: i.name):
        if not item.name.endswith(".md"):
            continue
        try:
            persona = parse_persona(
                item.read_text(encoding="utf-8"), stem=item.name[:-3], source="builtin"
            )
        except PersonaFileError as e:  # a packaging mistake: say so, keep the others
            log.warning("personas: built-in %s: skipped: %s", item.name, e)
            continue
        out[persona.name] = persona
    return out


# -- the registry ------------------------------------------------------------------------------


class PersonaRegistry:
    """Every persona a session knows, by name, in `PRECEDENCE` order (`session.personas`)."""

    def __init__(self, workspace: Path, store: Store | None = None) -> None:
        self.workspace = workspace
        self.store = store
        self._dirs = [_Dir(workspace, rel, source) for source, rel in WORKSPACE_DIRS]
        self._saved: dict[str, Persona] = {}
        self._builtin: dict[str, Persona] = {}
        self._store_warnings: list[str] = []

    async def load(self) -> None:
        """Read the built-ins, the saved personas and the workspace files, off the loop."""
        self._builtin = await asyncio.to_thread(_builtins)
        store = self.store
        if store is not None:

            def read(_conn: Any) -> list[tuple[str, Any]]:
                return [(k, store.kv_get(PERSONAS_NS, k)) for k in store.kv_keys(PERSONAS_NS)]

            for key, data in await store.read(read):
                try:
                    self._saved[key] = dataclasses.replace(persona_from_json(data), name=key)
                except PersonaFileError as e:
                    self._store_warnings.append(f"saved persona {key!r}: skipped: {e}")
                    log.warning("personas: saved persona %r: skipped: %s", key, e)
        await asyncio.to_thread(self._refresh_all)

    def _refresh_all(self) -> None:
        for d in self._dirs:
            d.refresh()

    def refresh(self) -> None:
        """Re-read changed workspace files (a stat per file when nothing changed)."""
        self._refresh_all()

    async def arefresh(self) -> None:
        """`refresh` in a worker thread; callers on the event loop use this first."""
        await asyncio.to_thread(self._refresh_all)

    def _layers(self) -> list[dict[str, Persona]]:
        return [*(d.personas for d in self._dirs), self._saved, self._builtin]

    def find(self, name: str) -> Persona | None:
        self.refresh()
        for layer in self._layers():
            persona = layer.get(name)
            if persona is not None:
                return persona
        return None

    def get(self, name: str) -> Persona:
        """The persona `name` (the highest-precedence definition); OpError if there is none."""
        persona = self.find(name)
        if persona is None:
            known = ", ".join(sorted(p.name for p in self.all())) or "none"
            raise _op_error(f"persona: no persona named {name!r} (known: {known})")
        return persona

    def all(self) -> list[Persona]:
        """The effective personas, by name."""
        self.refresh()
        out: dict[str, Persona] = {}
        for layer in self._layers():
            for name, persona in layer.items():
                out.setdefault(name, persona)
        return [out[n] for n in sorted(out)]

    def definitions(self, name: str) -> list[Persona]:
        """Every definition of `name`, the effective one first."""
        self.refresh()
        return [layer[name] for layer in self._layers() if name in layer]

    @property
    def warnings(self) -> list[str]:
        """Why files or records were skipped (as of the last refresh)."""
        return [w for d in self._dirs for w in d.warnings] + self._store_warnings

    async def save(self, persona: Persona) -> Persona:
        """Save (or replace) `persona` in the store; it outlives the server.

        A workspace or `.claude/agents` file of the same name still takes precedence (see
        `definitions`); `write_file` writes one that does.
        """
        try:
            check_name(persona.name)
        except PersonaFileError as e:
            raise _op_error(str(e)) from None
        prompt = persona.prompt.strip()
        if not prompt:
            raise _op_error("prompt: empty; give the persona's system prompt")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise _op_error(f"prompt: longer than {MAX_PROMPT_CHARS} characters; shorten it")
        bad = [t for t in persona.tools if t not in GROUPS]
        if bad:
            raise _op_error(f"tools: unknown tool groups {bad}; use {list(GROUPS)}")
        saved = dataclasses.replace(
            persona,
            prompt=prompt,
            source="saved",
            path=None,
            writes=persona.writes and "files" in persona.tools,
        )
        if self.store is not None:
            record = {**saved.to_json(), "saved": time.time()}
            self.store.kv_put(PERSONAS_NS, saved.name, record)
            # Read back (after the queued writes, without taking others' failure reports).
            if await self.store.akv_get(PERSONAS_NS, saved.name) != record:
                raise _op_error(
                    f"persona: {saved.name!r} could not be stored (see the server's log)"
                )
        self._saved[saved.name] = saved
        return saved

    def file_path(self, name: str) -> Path:
        return self.workspace / WORKSPACE_DIRS[0][1] / f"{check_name(name)}.md"

    async def write_file(self, persona: Persona) -> Path:
        """Write `persona` as `.yool/personas/<name>.md` (atomically); it then wins by name."""
        path = self.file_path(persona.name)
        text = render_persona(persona)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)

        try:
            await asyncio.to_thread(write)
        except OSError as e:
            raise _op_error(f"write_file: cannot write {path} ({e.strerror or e})") from None
        await self.arefresh()
        return path
