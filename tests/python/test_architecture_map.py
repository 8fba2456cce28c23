"""docs/architecture.md is a true map: its "Who owns what" table names every source file
of each crate and package, in that crate's or package's rows, and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAP = ROOT / "docs" / "architecture.md"

# Where each group of rows lives: the folder its first cell names, and its source files.
FOLDERS = {
    "core/": ROOT / "core" / "src",
    "core/src/save/": ROOT / "core" / "src" / "save",
    "core/src/platform/": ROOT / "core" / "src" / "platform",
    "cdata/": ROOT / "cdata" / "src",
    "src/": ROOT / "src",
    "python/batchcorder/flight": ROOT / "python" / "batchcorder" / "flight",
    "python/batchcorder": ROOT / "python" / "batchcorder",
}


def sources(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file() and p.suffix in (".rs", ".py")}


def rows_by_folder() -> dict[str, set[str]]:
    """The file names (in backticks) of each group's module column, by the folder its
    first row names."""
    table = MAP.read_text().split("## Who owns what", 1)[1].split("\n## ", 1)[0]
    named: dict[str, set[str]] = {}
    current = ""
    for line in table.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "crate / package" or not cells[1].strip("-"):
            continue  # the header and its rule
        if cells[0]:
            current = next(key for key in FOLDERS if f"`{key}`" in cells[0] or f"(`{key}`" in cells[0])
        named.setdefault(current, set()).update(re.findall(r"`([\w.]+\.(?:rs|py))`", cells[1]))
    return named


@pytest.mark.skipif(not (ROOT / "core" / "src").is_dir(), reason="run from a source checkout: the map describes its files")
def test_the_architecture_map_names_every_source_file_and_no_other():
    named = rows_by_folder()
    assert set(named) == set(FOLDERS), f"groups of rows missing from {MAP.name}: {set(FOLDERS) - set(named)}"
    for key, folder in FOLDERS.items():
        files = sources(folder)
        assert files - named[key] == set(), f"{MAP.name} does not name these files of {key}: {sorted(files - named[key])}"
        assert named[key] - files == set(), f"{MAP.name} names files {key} does not have: {sorted(named[key] - files)}"


@pytest.mark.skipif(not (ROOT / "core" / "src").is_dir(), reason="run from a source checkout: the map describes its files")
def test_no_python_module_is_over_400_lines():
    package = ROOT / "python" / "batchcorder"
    long = {str(p.relative_to(package)): n for p in package.rglob("*.py")
            if "_native" not in p.parts and (n := len(p.read_text().splitlines())) > 400}
    assert long == {}, f"split these modules (a room each, at most 400 lines): {long}"
