"""The repository's rooms keep to their side: the light producer imports no worker and no model stack, the
worker imports no producer, the runtime path imports no test scaffolding, and scripts import nothing from tests.

The modules are read, not imported, so a violation anywhere is found even in code no test runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "transformers", "av", "numpy", "PIL", "cv2"}


def imported_modules(folder: str) -> dict[str, set[str]]:
    """Every module each file under `folder` imports (top level or inside functions)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(ROOT))] = names
    return found


def offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{path}: {name}" for path, names in imported_modules(folder).items() for name in names
                  if name.startswith(forbidden) or name.split(".")[0] in forbidden)


def test_the_producer_imports_neither_the_worker_nor_the_model_stack() -> None:
    assert offenders("producer", ("videoscore.worker", *HEAVY)) == []


def test_the_worker_never_imports_the_producer() -> None:
    assert offenders("worker", ("videoscore.producer",)) == []


@pytest.mark.parametrize("room", ["worker/service", "worker/model", "worker/video"])
def test_the_runtime_path_imports_no_test_scaffolding(room: str) -> None:
    assert offenders(room, ("videoscore.worker.testing", "tests")) == []


@pytest.mark.parametrize("folder", ["bench", "reference", "scripts"])
def test_scripts_import_nothing_from_the_test_suite(folder: str) -> None:
    assert offenders(folder, ("tests",)) == []


@pytest.mark.parametrize("room", ["core", "db", "api", "producer", "worker"])
def test_every_room_is_imported_by_its_one_name_only(room: str) -> None:
    """Inside the project, `videoscore.<room>`: a bare `import db` would load a second copy of the module."""
    bare = ("core", "db", "api", "producer", "worker")
    for folder in ("core", "db", "api", "producer", "worker", "videoscore", "tests", "bench", "reference", "scripts"):
        hits = [hit for hit in offenders(folder, bare) if hit.split(": ")[1].split(".")[0] == room]
        assert hits == [], hits


def test_each_room_is_linked_into_the_namespace() -> None:
    for room in ("core", "db", "api", "producer", "worker"):
        link = ROOT / "videoscore" / room
        assert link.is_symlink() and link.resolve() == (ROOT / room).resolve()
