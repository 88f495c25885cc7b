"""Personas: where they come from, which wins a name, what a bad file does, and hiring one.

The registry reads real files in a temporary workspace (`.yool/personas`, `.claude/agents`),
the store on a temporary `YOOL_HOME` and the built-ins from the installed package. Hires run
real agents on the fake Anthropic provider on 127.0.0.1 through the real `anthropic` SDK, so
a test reads the system prompt and the model the agent actually sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from yool.personas.registry import (
    MODEL_ALIASES,
    PERSONAS_NS,
    Persona,
    PersonaFileError,
    PersonaRegistry,
    map_tools,
    parse_persona,
    render_persona,
    resolve_model,
)
from yool.policy import RuntimePolicy
from yool.testing import FakeProvider, Recorded, Turn
from yool.tools import OPERATIONS, Call, OpError, Session, load_all

load_all()

KEY = "sk-test-personas"
BUILTINS = {"reviewer", "test-writer", "researcher", "refactorer", "debugger"}
# pip cannot reach an index for the build backend (setuptools): an offline machine
NO_INDEX = ("No matching distribution", "Could not find a version", "NewConnectionError")


def _policy(tmp: Path, **extra: Any) -> RuntimePolicy:
    return RuntimePolicy(home=tmp / "home", heartbeat_s=0.05, **extra)


def _workspace(tmp: Path) -> Path:
    ws = tmp / "ws"
    ws.mkdir(exist_ok=True)
    (ws / "src").mkdir(exist_ok=True)
    (ws / "src" / "app.py").write_text("print('hi')\n")
    return ws


def _agent_file(ws: Path, name: str, body: str, where: str = ".claude/agents", **meta: str) -> Path:
    folder = ws / where
    folder.mkdir(parents=True, exist_ok=True)
    fields = "".join(f"{k}: {v}\n" for k, v in {"name": name, **meta}.items())
    path = folder / f"{name}.md"
    path.write_text(f"---\n{fields}---\n{body}\n")
    return path


def _env(fake: FakeProvider) -> dict[str, str]:
    return {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": fake.url}


async def _op(session: Session, op: str, /, **args: Any) -> Any:
    return await OPERATIONS[op](Call(session), args)


def _registry(ws: Path) -> PersonaRegistry:
    registry = PersonaRegistry(ws)
    asyncio.run(registry.load())
    return registry


def _system(rec: Recorded) -> str:
    system = rec.body.get("system", "")
    if isinstance(system, list):
        return "".join(block.get("text", "") for block in system)
    assert isinstance(system, str)
    return system


# -- built-ins ------------------------------------------------------------------------------


def test_the_built_in_personas_are_real_prompts_with_a_domain_and_bounded_tools(
    tmp_path: Path,
) -> None:
    registry = _registry(_workspace(tmp_path))
    found = {p.name: p for p in registry.all()}
    assert set(found) == BUILTINS
    for persona in found.values():
        assert persona.source == "builtin"
        assert persona.description and persona.domain
        assert 400 < len(persona.prompt) < 2000, persona.name  # real, and concise
        assert "files" in persona.tools
        assert persona.unavailable == ()
    assert not found["reviewer"].writes  # a reviewer reports; it does not edit
    assert found["test-writer"].writes and found["refactorer"].writes
    assert found["researcher"].tools == ("files", "delegate")
    assert registry.warnings == []


def test_the_built_in_personas_ship_in_the_wheel_and_load_from_it(tmp_path: Path) -> None:
    """A real wheel, built from a copy of the sources, holds them; installed alone, it works."""
    root = Path(__file__).resolve().parents[1]
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, tree / name)
    shutil.copytree(
        root / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(tree)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    if built.returncode != 0 and any(w in built.stderr for w in NO_INDEX):
        pytest.skip(f"no package index for the build backend: {built.stderr.strip()[-300:]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = out.glob("yool-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        site = tmp_path / "site"
        z.extractall(site)  # what installing it puts in site-packages
    assert {f"yool/personas/builtin/{n}.md" for n in BUILTINS} <= names
    probe = (
        "import asyncio, json, pathlib, sys\n"
        f"sys.path.insert(0, {str(site)!r})\n"
        "import yool.personas.registry as r\n"
        "reg = r.PersonaRegistry(pathlib.Path('.'))\n"
        "asyncio.run(reg.load())\n"
        "print(json.dumps([r.__file__, sorted(p.name for p in reg.all())]))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-I", "-c", probe],  # -I: no PYTHONPATH, no cwd, no user site
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    where, listed = json.loads(ran.stdout)
    assert where.startswith(str(site))  # the wheel's copy, not the source tree's
    assert set(listed) == BUILTINS


# -- files ----------------------------------------------------------------------------------


def test_a_claude_code_agent_file_is_a_persona_with_its_tools_mapped_to_yools(
    tmp_path: Path,
) -> None:
    ws = _workspace(tmp_path)
    _agent_file(
        ws,
        "code-reviewer",
        "You review code.",
        description="Expert code review specialist. Use after writing code.",
        tools="Read, Grep, Glob, Bash, Task",
        model="sonnet",
    )
    (ws / ".claude/agents/editor.md").write_text(
        "---\nname: editor\ndescription: Edits\ntools:\n  - Read\n  - Edit\n  - WebFetch\n"
        "model: inherit\ncolor: blue\n---\nYou edit.\n"
    )
    (ws / ".claude/agents/everything.md").write_text(
        "---\nname: everything\ndescription: Inherits every tool\n---\nYou do it all.\n"
    )
    registry = _registry(ws)
    reviewer = registry.get("code-reviewer")
    assert reviewer.source == "claude" and reviewer.path == ".claude/agents/code-reviewer.md"
    assert reviewer.description.startswith("Expert code review")
    assert reviewer.prompt == "You review code."
    assert (reviewer.tools, reviewer.writes) == (("files", "delegate", "code"), False)
    assert reviewer.unavailable == ()  # Bash runs code in yool's sandbox
    assert reviewer.model == "sonnet"
    editor = registry.get("editor")
    assert (editor.tools, editor.writes, editor.unavailable) == (("files",), True, ("WebFetch",))
    assert editor.model == "inherit"
    everything = registry.get("everything")  # no tools field: every tool, as in Claude Code
    assert (everything.tools, everything.writes) == (("files", "kv", "delegate", "code"), True)
    assert registry.warnings == []


@pytest.mark.parametrize(
    ("declared", "tools", "writes", "missing"),
    [
        (None, ("files", "kv", "delegate", "code"), True, ()),
        ([], (), False, ()),
        (["Read", "Grep", "Glob", "LS"], ("files",), False, ()),
        (["Write"], ("files",), True, ()),
        (["Edit", "MultiEdit", "NotebookEdit"], ("files",), True, ()),
        (["Task"], ("delegate",), False, ()),
        (["files", "write", "kv", "delegate"], ("files", "kv", "delegate"), True, ()),
        (["read", "EDIT"], ("files",), True, ()),  # names match whatever their case
        (
            ["Bash", "WebSearch", "mcp__github__list"],
            ("code",),
            False,
            ("WebSearch", "mcp__github__list"),
        ),
        (["WebFetch", "WebFetch", " "], (), False, ("WebFetch",)),
        (["Bash", "code"], ("code",), False, ()),
    ],
)
def test_declared_tools_map_to_yools_groups_and_the_rest_are_named_unavailable(
    declared: list[str] | None, tools: tuple[str, ...], writes: bool, missing: tuple[str, ...]
) -> None:
    assert map_tools(declared) == (tools, writes, missing)


def test_a_name_defined_twice_is_taken_from_workspace_then_claude_then_saved_then_builtin(
    tmp_path: Path,
) -> None:
    ws = _workspace(tmp_path)
    pol = _policy(tmp_path)
    ours = _agent_file(ws, "reviewer", "WORKSPACE prompt", where=".yool/personas")
    claude = _agent_file(ws, "reviewer", "CLAUDE prompt")

    async def main() -> None:
        async with Session.open(pol, workspace=ws, environ={}) as s:
            await _op(s, "persona_save", name="reviewer", prompt="SAVED prompt")
            registry = s.personas
            order = [p.source for p in registry.definitions("reviewer")]
            assert order == ["workspace", "claude", "saved", "builtin"]
            assert registry.get("reviewer").prompt == "WORKSPACE prompt"
            assert s.persona_prompt("reviewer") == "WORKSPACE prompt"  # what spawn(persona=) uses
            ours.unlink()
            assert registry.get("reviewer").prompt == "CLAUDE prompt"
            claude.unlink()
            assert registry.get("reviewer").prompt == "SAVED prompt"
            assert [p.source for p in registry.all() if p.name == "reviewer"] == ["saved"]

        async with Session.open(pol, workspace=ws, environ={}) as s:  # saved outlives it
            assert s.personas.get("reviewer").prompt == "SAVED prompt"
            assert s.kernel.store is not None
            s.kernel.store.kv_delete(PERSONAS_NS, "reviewer")
            await s.kernel.store.aflush()

        async with Session.open(pol, workspace=ws, environ={}) as s:
            assert s.personas.get("reviewer").source == "builtin"

    asyncio.run(main())


BAD_FILES = {
    "plain.md": ("Just a prompt, no front matter.\n", "no YAML front matter"),
    "broken.md": (
        "---\nname: broken\ndescription: [unclosed\n---\nbody\n",
        "not valid YAML at line",
    ),
    "listy.md": ("---\n- a\n- b\n---\nbody\n", "must be 'key: value' fields, not a list"),
    "badname.md": ("---\nname: Bad Name!\n---\nbody\n", "'Bad Name!' is not a persona name"),
    "empty.md": ("---\nname: empty\ndescription: nothing\n---\n\n   \n", "no system prompt"),
    "tooltype.md": ("---\nname: tooltype\ntools: {Read: yes}\n---\nbody\n", "'tools' must be"),
    "desctype.md": (
        "---\nname: desctype\ndescription: [a, b]\n---\nbody\n",
        "'description' must be text",
    ),
    "unclosed.md": ("---\nname: unclosed\nbody without a closing line\n", "no YAML front matter"),
    "z-dup.md": ("---\nname: good\n---\nsecond definition\n", "'good' is already defined by"),
}


def test_malformed_persona_files_are_skipped_with_a_warning_naming_the_file_and_problem(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ws = _workspace(tmp_path)
    folder = ws / ".claude/agents"
    folder.mkdir(parents=True)
    (folder / "good.md").write_text("---\nname: good\n---\nYou are good.\n")
    for name, (text, _) in BAD_FILES.items():
        (folder / name).write_text(text)
    (folder / "binary.md").write_bytes(b"---\nname: bin\n---\n\xff\xfe\x00 not utf-8\n")
    (folder / "huge.md").write_text("---\nname: huge\n---\n" + "x" * (300 * 1024))
    (folder / "notes.txt").write_text("not markdown: ignored, no warning")
    (folder / "sub.md").mkdir()  # a directory named like a file: ignored
    with caplog.at_level("WARNING", logger="yool.personas"):
        registry = _registry(ws)
    assert {p.name for p in registry.all() if p.source == "claude"} == {"good"}
    assert registry.get("good").prompt == "You are good."
    warnings = registry.warnings
    for name, (_, problem) in BAD_FILES.items():
        (line,) = [w for w in warnings if w.startswith(f".claude/agents/{name}:")]
        assert problem in line, line
    assert any(w.startswith(".claude/agents/binary.md:") and "UTF-8" in w for w in warnings)
    assert any(w.startswith(".claude/agents/huge.md:") and "KiB" in w for w in warnings)
    assert len(warnings) == len(BAD_FILES) + 2
    assert all(w in caplog.text for w in warnings)  # logged too, once each
    registry.all()
    assert caplog.text.count("broken.md") == 1  # not again while the file is unchanged


def test_workspace_files_are_re_read_only_when_they_change(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    path = _agent_file(ws, "helper", "first version")
    registry = _registry(ws)
    first = registry.get("helper")
    assert first.prompt == "first version"
    assert registry.get("helper") is first  # unchanged on disk: the same parse, not a new one

    path.write_text("---\nname: helper\n---\nsecond, longer version\n")
    assert registry.get("helper").prompt == "second, longer version"
    same_size = "---\nname: helper\n---\nthird, longer  version\n"
    assert len(same_size) == len(path.read_text())
    path.write_text(same_size)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a same-size edit
    assert registry.get("helper").prompt == "third, longer  version"

    _agent_file(ws, "late", "added while running", where=".yool/personas")
    assert {"helper", "late"} <= {p.name for p in registry.all()}
    path.unlink()
    with pytest.raises(OpError, match=r"persona: no persona named 'helper' \(known: .*late"):
        registry.get("helper")


def test_a_persona_file_round_trips_through_render_and_parse() -> None:
    persona = Persona(
        name="sql-expert",
        prompt="You write SQL.\n\n- Use CTEs.",
        description="Writes: SQL, carefully",  # YAML-significant characters
        domain="databases",
        tools=("files", "kv"),
        writes=True,
        model="opus",
        unavailable=("WebFetch",),
        source="saved",
    )
    again = parse_persona(render_persona(persona), stem="x", source="saved")
    assert again == persona
    windows = "\ufeff" + render_persona(persona).replace("\n", "\r\n")  # BOM and CRLF
    assert parse_persona(windows, stem="x", source="saved") == persona


def test_model_aliases_mean_anthropic_models_and_inherit_means_the_sessions() -> None:
    assert resolve_model("sonnet", "anthropic") == MODEL_ALIASES["sonnet"]
    assert resolve_model("Haiku", "anthropic") == "claude-haiku-4-5"
    assert resolve_model("opus", "openai") is None  # an alias means nothing to other vendors
    assert resolve_model("inherit", "anthropic") is None
    assert resolve_model(None, "anthropic") is None
    assert resolve_model("gpt-4o-mini", "openai") == "gpt-4o-mini"


def test_parse_persona_refuses_a_prompt_too_long_to_hire() -> None:
    with pytest.raises(PersonaFileError, match="longer than"):
        parse_persona("---\nname: big\n---\n" + "x" * 70_000, stem="big", source="claude")


# -- save -----------------------------------------------------------------------------------


def test_persona_save_stores_and_optionally_writes_a_file_that_then_takes_precedence(
    tmp_path: Path,
) -> None:
    ws, pol = _workspace(tmp_path), _policy(tmp_path)

    async def main() -> None:
        async with Session.open(pol, workspace=ws, environ={}) as s:
            saved = await _op(
                s,
                "persona_save",
                name="migrator",
                prompt="You migrate schemas.",
                description="Schema migrations",
                domain="databases",
                tools=["Read", "Edit", "kv"],  # Claude Code's names work too
                model="haiku",
            )
            assert (saved.source, saved.path) == ("saved", None)
            got = s.personas.get("migrator")
            assert (got.tools, got.writes, got.model) == (("files", "kv"), True, "haiku")
            listed = await _op(s, "persona_list", name="migrator")
            (one,) = listed.personas
            assert one.prompt == "You migrate schemas." and one.tools == ["files", "write", "kv"]

            filed = await _op(s, "persona_save", name="migrator", prompt="From a file.", file=True)
            assert (filed.source, filed.path) == ("workspace", ".yool/personas/migrator.md")
            text = (ws / ".yool/personas/migrator.md").read_text()
            assert text.startswith("---\nname: migrator\n") and "From a file." in text
            assert s.personas.get("migrator").source == "workspace"
            # saved again without the file: stored, but the file still wins, and it says so
            shadowed = await _op(s, "persona_save", name="migrator", prompt="Stored only.")
            assert (shadowed.source, shadowed.path) == ("workspace", ".yool/personas/migrator.md")
            assert s.personas.definitions("migrator")[1].prompt == "Stored only."

        async with Session.open(pol, workspace=ws, environ={}) as s:
            assert [p.prompt for p in s.personas.definitions("migrator")] == [
                "From a file.",
                "Stored only.",
            ]

    asyncio.run(main())


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"name": "Bad Name", "prompt": "x"}, "name: 'Bad Name' is not a persona name"),
        ({"name": "-dash", "prompt": "x"}, "is not a persona name"),
        ({"name": "a" * 65, "prompt": "x"}, "at most 64 characters"),
        ({"name": "ok", "prompt": "   "}, "prompt: blank"),
        ({"name": "ok", "prompt": "x", "tools": ["WebFetch"]}, r"tools: unknown \['WebFetch'\]"),
        ({"name": "ok", "prompt": "x" * 64_001}, "at most 64000 characters"),
        ({"name": "ok", "prompt": "x", "colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_persona_save_refuses_bad_input_and_stores_nothing(
    tmp_path: Path, args: dict[str, Any], error: str
) -> None:
    ws, pol = _workspace(tmp_path), _policy(tmp_path)

    async def main() -> None:
        async with Session.open(pol, workspace=ws, environ={}) as s:
            with pytest.raises((OpError, ValueError), match=error):  # ours, or pydantic's
                await _op(s, "persona_save", **args)
            assert s.kernel.store is not None
            assert await s.kernel.store.akv_keys(PERSONAS_NS) == []
            assert not (ws / ".yool").exists()

    asyncio.run(main())


# -- hire -----------------------------------------------------------------------------------


def test_a_hire_runs_under_the_personas_prompt_and_model_with_tools_bounded_by_it(
    tmp_path: Path,
) -> None:
    ws, pol = _workspace(tmp_path), _policy(tmp_path)
    _agent_file(
        ws, "auditor", "AUDITOR-PROMPT: read, never write.", tools="Read, Grep, Bash", model="haiku"
    )

    async def main() -> None:
        async with (
            FakeProvider(
                [Turn.say("audited")],
            ) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            hired = await _op(
                s, "persona_hire", name="auditor", task="audit src", provider="anthropic"
            )
            done = await _op(s, "wait", pids=[hired.pid], timeout_s=10)
            agent = done.agents[0]
            assert (agent.reason, agent.answer, agent.persona) == ("normal", "audited", "auditor")
            assert agent.origin == {"persona": "auditor", "lessons": []}
            (rec,) = fake.requests
            assert _system(rec) == "AUDITOR-PROMPT: read, never write."  # no lessons yet
            assert rec.body["model"] == "claude-haiku-4-5"
            names = {t["name"] for t in rec.body.get("tools", [])}
            assert "read_file" in names and not names & {"write_file", "spawn", "delegate"}
            ps = await _op(s, "ps")
            assert next(a for a in ps.agents if a.pid == hired.pid).persona == "auditor"

            only = r"tools: persona 'auditor' may use only \['files', 'code'\]"
            with pytest.raises(OpError, match=only):
                await _op(s, "persona_hire", name="auditor", task="t", tools=["files", "kv"])
            with pytest.raises(OpError, match="write_paths: persona 'auditor' may not write"):
                await _op(s, "persona_hire", name="auditor", task="t", write_paths=["src"])
            with pytest.raises(OpError, match="persona: no persona named 'ghost' \\(known: "):
                await _op(s, "persona_hire", name="ghost", task="t")
            with pytest.raises(OpError, match="task: blank"):
                await _op(s, "persona_hire", name="auditor", task="  ")
            with pytest.raises(ValueError, match="must be from 0 to 20"):
                await _op(s, "persona_hire", name="auditor", task="t", k=21)
            assert len(s.agents) == 1  # the refusals started nothing

            # a persona that may write gets write access only where the hire grants it
            wrote = await _op(
                s,
                "persona_hire",
                name="test-writer",
                task="write tests",
                write_paths=["src"],
                provider="anthropic",
            )
            assert (await _op(s, "wait", pids=[wrote.pid], timeout_s=10)).done
            granted = {t["name"] for t in fake.requests[-1].body.get("tools", [])}
            assert {"read_file", "write_file"} <= granted
            assert "delegate" not in granted  # test-writer's tools are files and write only

    asyncio.run(main())


def test_spawn_with_a_persona_uses_the_registry_including_claude_agent_files(
    tmp_path: Path,
) -> None:
    ws, pol = _workspace(tmp_path), _policy(tmp_path)
    _agent_file(ws, "helper", "HELPER-PROMPT")

    async def main() -> None:
        async with (
            FakeProvider([Turn.say("ok")]) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            pid = (await _op(s, "spawn", task="go", persona="helper", provider="anthropic")).pid
            await _op(s, "wait", pids=[pid], timeout_s=10)
            assert _system(fake.requests[0]) == "HELPER-PROMPT"
            with pytest.raises(OpError, match="persona: no persona named 'nobody'"):
                await _op(s, "spawn", task="go", persona="nobody")

    asyncio.run(main())


# -- lessons --------------------------------------------------------------------------------

SQL_LESSON = (
    "When migrating a large SQL table, add the new column as nullable and backfill in batches."
)
INDEX_LESSON = "Create SQL indexes concurrently so the migration does not lock writes."
OFF_TOPIC = "Run the CSS linter before committing stylesheet changes."


def test_a_hire_injects_only_the_lessons_relevant_to_its_task_and_names_them(
    tmp_path: Path,
) -> None:
    ws, pol = _workspace(tmp_path), _policy(tmp_path)
    other = tmp_path / "other-ws"
    other.mkdir()
    _agent_file(ws, "dba", "DBA-PROMPT.", where=".yool/personas", domain="databases")
    elsewhere = "Drop SQL tables only after a migration backup: learnt in another workspace."

    async def main() -> None:
        async with Session.open(pol, workspace=other, environ={}) as s:
            await s.lessons.remember(elsewhere)  # another workspace's: never recalled here
        async with (
            FakeProvider([Turn.say("migrated")]) as fake,
            Session.open(pol, workspace=ws, environ=_env(fake)) as s,
        ):
            sql, _ = await s.lessons.remember(SQL_LESSON, tags=["sql"])
            index, _ = await s.lessons.remember(INDEX_LESSON)
            await s.lessons.remember(OFF_TOPIC)
            hire = {"name": "dba", "provider": "anthropic"}
            task = "Migrate the users SQL table to add a nullable column"
            hired = await _op(s, "persona_hire", task=task, **hire)
            assert set(hired.lessons) == {sql.id, index.id}
            await _op(s, "wait", pids=[hired.pid], timeout_s=10)
            system = _system(fake.requests[-1])
            assert system.startswith("DBA-PROMPT.\n\nLessons from past work")
            assert SQL_LESSON in system and INDEX_LESSON in system
            assert OFF_TOPIC not in system and elsewhere not in system
            assert s.record(hired.pid).origin == {"persona": "dba", "lessons": hired.lessons}

            one = await _op(s, "persona_hire", task=task, k=1, **hire)
            assert one.lessons == [sql.id]  # the best match: it shares the most words
            await _op(s, "wait", pids=[one.pid], timeout_s=10)
            assert INDEX_LESSON not in _system(fake.requests[-1])

            none = await _op(s, "persona_hire", task=task, k=0, **hire)
            await _op(s, "wait", pids=[none.pid], timeout_s=10)
            assert none.lessons == [] and _system(fake.requests[-1]) == "DBA-PROMPT."

            unrelated = await _op(s, "persona_hire", task="Fix the typo in the README", **hire)
            assert unrelated.lessons == []  # nothing about it was learnt: nothing injected
            await _op(s, "wait", pids=[unrelated.pid], timeout_s=10)

    asyncio.run(main())
