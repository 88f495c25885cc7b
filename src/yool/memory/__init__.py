"""Long-term memory: lessons (short reusable tactics and gotchas) and their distillation.

`Lessons` keeps them in the store's SQLite file (FTS5, BM25 ranking), or in memory when a
session has no store; `distill` turns a finished agent's transcript into at most three.
"""

from yool.memory.lessons import (
    ImportReport,
    Lesson,
    LessonError,
    LessonImportError,
    Lessons,
    MemoryDB,
    normalise,
)

__all__ = [
    "ImportReport",
    "Lesson",
    "LessonError",
    "LessonImportError",
    "Lessons",
    "MemoryDB",
    "normalise",
]
