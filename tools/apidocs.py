"""The API reference, built from the docstrings with pdoc: ``make docs`` writes it to
build/docs. Fails on any warning, and when a public name (``batchcorder.__all__``,
``batchcorder.flight.__all__``) has no entry in it.

    python tools/apidocs.py [OUTPUT_DIRECTORY]
"""

from __future__ import annotations

import functools
import importlib
import inspect
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

    own_members = pdoc.doc.Class.__dict__["own_members"]
    exported = {name for module in MODULES for name in importlib.import_module(module).__all__}

    def with_private_bases(cls: pdoc.doc.Class) -> list:
        # A public class that takes methods from a private mixin shows them as its own:
        # pdoc would only link them to a base that has no page.
        members = list(own_members.func(cls))
        for (_, qualname), found in cls._members_by_origin.items():
            if qualname != cls.qualname and qualname.split(".")[-1] not in exported:
                members += [m for m in found if m not in members]
        return members

    problems = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.docstrings.convert = without_roles
        patched = functools.cached_property(with_private_bases)
        patched.__set_name__(pdoc.doc.Class, "own_members")
        pdoc.doc.Class.own_members = patched
        try:
            pdoc.render.configure(docformat="numpy", show_source=False)
            pdoc.pdoc(*MODULES, output_directory=output)
        finally:
            pdoc.docstrings.convert = convert
            pdoc.doc.Class.own_members = own_members
    problems += [f"warning: {w.category.__name__}: {w.message}" for w in caught]
    for name in MODULES:
        page = output / (name.replace(".", "/") + ".html")
        html = page.read_text() if page.is_file() else ""
        public = importlib.import_module(name).__all__
        problems += [f"{name}.{p} is not in {page}" for p in public if f'id="{p}"' not in html]
        problems += [
            f"{name}.{member} is not in {page}"
            for member in public_members(importlib.import_module(name), public)
            if f'id="{member}"' not in html
        ]
        shown = set(re.findall(r":(?:class|meth|func|data|attr|mod|exc|obj):<code>[^<]*", html))
        problems += [f"{page} shows a Sphinx role: {r}" for r in sorted(shown)]
    return problems


def public_members(module: object, public: list[str]) -> list[str]:
    """``Class.method`` for every public method and property of the module's public
    classes, wherever in the class's bases it is defined (dunders, which pdoc hides, are
    named in their class's docstring)."""
    found = []
    for name in public:
        cls = getattr(module, name)
        if not isinstance(cls, type) or issubclass(cls, BaseException):
            continue
        for attr in sorted(set(dir(cls)) - set(dir(object))):
            if attr.startswith("_"):
                continue
            if callable(getattr(cls, attr, None)) or isinstance(
                inspect.getattr_static(cls, attr), property
            ):
                found.append(f"{name}.{attr}")
    return found


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
