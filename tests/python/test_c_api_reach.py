"""Every function of the C header is reachable from Python and from the C++ wrapper, and
the package decides nothing from an error's text (issue 27, item 3).

A function added to include/batchcorder.h fails the first test until the Python package
calls it (``lib.bc_name``) and include/batchcorder.hpp wraps it, or until EXEMPT says
why one of them has no use for it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import batchcorder
from batchcorder._native import lib

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "include" / "batchcorder.h"
WRAPPER = ROOT / "include" / "batchcorder.hpp"
PACKAGE = Path(batchcorder.__file__).parent

# (function, binding) -> why that binding does not call it. The only exemptions.
EXEMPT = {
    ("bc_reader_next", "python"): "Python reads through bc_reader_view with pyarrow's C++ "
    "import, which is faster, and bc_reader_failure gives a failed read's status",
    ("bc_capsule_adopt_stream", "c++"): "PyCapsule ownership, for Python bindings",
    ("bc_capsule_release_stream", "c++"): "a PyCapsule destructor, for Python bindings",
    ("bc_stream_new", "c++"): "a heap-allocated stream for bindings that need a stable "
    "address (a PyCapsule, an R external pointer); Reader and Stream hold theirs by value",
    ("bc_stream_free", "c++"): "frees what bc_stream_new made, which the wrapper never makes",
}


def _without_comments(text: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.DOTALL)


def header_functions() -> set[str]:
    """The functions the public header declares: outside comments, a ``bc_`` name is
    followed by a parenthesis only where it is declared."""
    return set(re.findall(r"\b(bc_\w+)\s*\(", _without_comments(HEADER.read_text())))


def python_references() -> set[str]:
    """The functions the installed package calls (``lib.bc_x``, ``_lib.bc_x``) or takes
    the address of."""
    found: set[str] = set()
    for source in PACKAGE.rglob("*.py"):
        text = source.read_text()
        found.update(re.findall(r"\b_?lib\.(bc_\w+)", text))
        found.update(re.findall(r"addressof\(_?lib,\s*\"(bc_\w+)\"\)", text))
    return found


def wrapper_references() -> set[str]:
    """The functions batchcorder.hpp uses, called or passed (a deleter)."""
    return set(re.findall(r"\b(bc_\w+)\b", _without_comments(WRAPPER.read_text())))


pytestmark = pytest.mark.skipif(not HEADER.exists(), reason="needs the checkout's include/")


def test_the_header_parse_finds_what_cffi_declares():
    declared = {name for name in dir(lib) if name.startswith("bc_")}
    assert header_functions() == declared


@pytest.mark.parametrize(
    "binding, references",
    [("python", python_references), ("c++", wrapper_references)],
)
def test_every_header_function_is_reachable(binding, references):
    functions = header_functions()
    used = references()
    exempt = {name for name, where in EXEMPT if where == binding}
    missing = sorted(functions - used - exempt)
    assert not missing, f"{binding} cannot reach {missing}: wrap each, or add it to EXEMPT with why"
    stale = sorted(exempt & used) + sorted(exempt - functions)
    assert not stale, f"EXEMPT lists {stale} for {binding}, which uses them or no longer exist"


# -- no decision from an error's text ----------------------------------------------------

# An upstream's message is the only channel a pyarrow producer gives for the Python
# exception it carries, so _upstream.py reads it; nothing else reads a message.
READS_UPSTREAM_TEXT = {"_upstream.py"}
TEXT_TESTS = {"startswith", "endswith", "find", "rfind", "index", "count", "search", "match", "fullmatch"}


def _is_str_call(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "str"
        and len(node.args) == 1
    )


def text_decisions(tree: ast.AST) -> list[int]:
    """Lines that test ``str(x)``: ``... in str(err)``, ``str(err).startswith(...)``,
    ``re.search(..., str(err))``."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
            if any(_is_str_call(side) for side in [node.left, *node.comparators]):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in TEXT_TESTS and (
                _is_str_call(node.func.value) or any(_is_str_call(arg) for arg in node.args)
            ):
                lines.append(node.lineno)
    return lines


def test_the_package_decides_nothing_from_an_error_text():
    found = {}
    for source in sorted(PACKAGE.rglob("*.py")):
        if source.name in READS_UPSTREAM_TEXT:
            continue
        lines = text_decisions(ast.parse(source.read_text()))
        if lines:
            found[str(source.relative_to(PACKAGE))] = lines
    assert not found, f"decided from an error's text (use its class, status or kind): {found}"


def test_the_text_check_catches_the_old_reader_cap_test():
    old = 'if isinstance(err, InvalidArgumentError) and "max_readers" in str(err): pass'
    assert text_decisions(ast.parse(old)) == [1]
    assert text_decisions(ast.parse("ok = str(err).startswith('x')")) == [1]
    assert text_decisions(ast.parse("ok = isinstance(err, ReaderCapError)")) == []
