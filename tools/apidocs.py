"""The API reference, built from the docstrings with pdoc: ``make docs`` writes it to
build/docs. Fails on any warning, and when a public name (``batchcorder.__all__``,
``batchcorder.flight.__all__``) has no entry in it.

    python tools/apidocs.py [OUTPUT_DIRECTORY]
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
import warnings
from pathlib import Path

MODULES = ["batchcorder", "batchcorder.flight"]
# The docstrings use Sphinx roles, which help() shows as they are; pdoc shows them as
# code, so that it links the names it knows.
_ROLE = re.compile(r":(?:class|meth|func|data|attr|mod|exc|obj):`~?([^`]+)`")


def build(output: Path) -> list[str]:
    """Write the reference to ``output``; the problems found, none when all is well."""
    try:
        import pdoc
        import pdoc.docstrings
        import pdoc.render
    except ImportError:
        return ["pdoc is not installed: pip install 'batchcorder[docs]' (make venv-test does)"]
    convert = pdoc.docstrings.convert

    @functools.lru_cache
    def without_roles(docstring: str, docformat: str, source_file: Path | None) -> str:
        return convert(_ROLE.sub(r"`\1`", docstring), docformat, source_file)

    problems = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.docstrings.convert = without_roles
        try:
            pdoc.render.configure(docformat="numpy", show_source=False)
            pdoc.pdoc(*MODULES, output_directory=output)
        finally:
            pdoc.docstrings.convert = convert
    problems += [f"warning: {w.category.__name__}: {w.message}" for w in caught]
    for name in MODULES:
        page = output / (name.replace(".", "/") + ".html")
        html = page.read_text() if page.is_file() else ""
        public = importlib.import_module(name).__all__
        problems += [f"{name}.{p} is not in {page}" for p in public if f'id="{p}"' not in html]
        shown = set(re.findall(r":(?:class|meth|func|data|attr|mod|exc|obj):<code>[^<]*", html))
        problems += [f"{page} shows a Sphinx role: {r}" for r in sorted(shown)]
    return problems


def main() -> int:
    output = Path(sys.argv[1] if len(sys.argv) > 1 else "build/docs")
    problems = build(output)
    for problem in problems:
        print(f"apidocs: {problem}", file=sys.stderr)
    if not problems:
        print(f"apidocs: the API reference is in {output}/index.html")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
