"""The README and docs/*.md are tests: every code block runs, compiles or is listed here
as not run with its reason, and what a block prints is what its page shows.

The conventions, for whoever edits a page:

- A ```python block runs as its own script, in a fresh folder, in a virtualenv that holds
  only what its page says to install above it (below). What it prints on stdout must be
  the ```text block right after it, line for line; ``...`` in that block stands for any
  text (a port, a duration). A block that prints nothing has no ```text block after it.
- A ```text block that is not a python block's output names what it is the output of in
  ``OUTPUT_OF`` (a C example, built and run here against the package's library).
- ```c and ```cpp blocks compile against include/ with every warning an error.
- Install lines: every ``pip install ...`` of a page, in a ```sh block or in `inline
  code`. A block's virtualenv holds what the page's install lines above it name, taken
  together, as a reader who follows the page has installed them: ``batchcorder`` (with
  its extras) is the wheel in target/wheels, and the rest comes from the package index
  (or pip's cache). The block's imports are checked against those lines too.
- Any other block (a shell session that builds or serves, CMake, R, Julia, a recipe that
  needs a cluster) is not run here, and ``NOT_RUN`` below says why and what tests it
  instead. Entries name a block by its page and first line; the list is kept short:
  ``MAX_NOT_RUN`` fails a page that adds one without a look at this file.

``BC_DOCS_VENVS=0`` (or no wheel in target/wheels; ``BC_DOCS_WHEEL`` names another) runs
the blocks with this interpreter instead: the import check then stands for the
virtualenvs. When the package under test is not the wheel's copy (a source checkout
with its native module copied in), the virtualenv imports it in place of the wheel's,
while the wheel still brings the dependencies a user gets.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from conftest import posix_only

import batchcorder

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VENVS = ROOT / "build" / "doc-venvs"

# Blocks that are not run, by (page, first line): why, and what tests them instead.
NOT_RUN: dict[tuple[str, str], str] = {
    ("README.md", "make demo   # builds the wheel, caches a real Parquet scan, replays it through DuckDB and pyarrow"):
        "the build itself: make demo and make test are what run every test",
    ("README.md", "make wheel                       # target/wheels/batchcorder-*.whl, manylinux_2_17 (zig links it)"):
        "builds and installs the wheel and sdist: make test-wheel and test-sdist do it",
    ("README.md", "make install PREFIX=$HOME/.local        # DESTDIR=... stages a package"):
        "installs the C library: make test-examples installs and uninstalls it",
    ("c-users.md", "make install                          # into /usr/local (as root; then run ldconfig)"):
        "installs the C library: make test-examples installs and uninstalls it",
    ("c-users.md", "export PKG_CONFIG_PATH=$HOME/.local/lib/pkgconfig       # only for a non-standard prefix"):
        "builds against an installed library: make test-examples does, with pkg-config",
    ("c-users.md", "find_package(batchcorder 0.2 REQUIRED)        # -DCMAKE_PREFIX_PATH=$HOME/.local if needed"):
        "a CMake fragment: make test-examples builds examples/cpp with find_package",
    ("c-users.md", "cp -r examples/c myreplay && cd myreplay"):
        "make test-examples builds and runs examples/c; OUTPUT_OF checks what it prints",
    ("c-users.md", "export PKG_CONFIG_PATH=$HOME/.local/lib/pkgconfig    # only for a non-standard prefix"):
        "the R recipe: make test-r builds and runs it",
    ("c-users.md", "library(nanoarrow)"):
        "needs nanoarrow from CRAN, out of reach here (the page says so)",
    ("c-users.md", "library(arrow)"):
        "needs arrow from CRAN, out of reach here (the page says so)",
    ("c-users.md", 'const libbc = "libbatchcorder"   # or the full path: "/usr/local/lib/libbatchcorder.so.0"'):
        "Julia cannot be installed here: tests/abi/check-julia.py checks every ccall",
    ("c-users.md", "using PythonCall"):
        "Julia cannot be installed here: tests/abi/check-julia.py checks the calls",
    ("flight.md", "batchcorder-flight trades.parquet events=/data/saved-events --max-readers 16"):
        "serves until stopped: test_flight.py runs the command on real files",
    ("flight.md", '{"batches": 10, "rows": 100000, "finished": true, "readers_live": 0,'):
        "a format, not code: the ticket block prints the same app_metadata",
    ("flight.md", "from batchcorder.flight import CacheServer, connect, ticket"):
        "needs certificate files and a host name: test_flight.py serves TLS with trustme",
    ("processes.md", "import torch"):
        "torch is too large for the test run: the block after it runs the same pattern",
    ("training.md", "import torch"):
        "torch with CUDA is gigabytes: make test-torch runs this dataset with DataLoader(num_workers=2)",
}
MAX_NOT_RUN = 18

# ```text blocks that show what a program of the repository prints, by (page, first line).
OUTPUT_OF: dict[tuple[str, str], str] = {
    ("c-users.md", "libbatchcorder 0.2.0 (header 0.2.0)"): "examples/c/replay.c",
    ("training.md", "epoch 0: order [9, 7, 3, 4, 10, 5, 8, 0, 1, 11, 2, 6]"): "examples/training_loop.py",
}


# Import names whose distribution is not the import name, and what brings them.
PROVIDED_BY = {
    "pyarrow": "batchcorder",  # a dependency of batchcorder
    "cffi": "batchcorder",
    "tqdm": "batchcorder[progress]",
    "yaml": "pyyaml",
    "sklearn": "scikit-learn",
    "ray": "batchcorder[ray]",
    "dask": "batchcorder[dask]",
    "distributed": "batchcorder[dask]",
    "pandas": "batchcorder[dask]",
}

# Pages whose blocks need Ray and Dask, which `make test` does not install: they run in
# `make test-engines` (mk/engines.mk), which sets BC_DOCS_ENGINES=1.
ENGINE_PAGES = {"engines.md"}
WITH_ENGINES = os.environ.get("BC_DOCS_ENGINES") == "1"


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    requirements: frozenset[str] = field(default_factory=frozenset)
    output: Optional["Block"] = None  # the ```text block right after a python block

    @property
    def first_line(self) -> str:
        return self.code.split("\n", 1)[0].rstrip()

    @property
    def key(self) -> tuple[str, str]:
        return (self.page, self.first_line)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


_FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_PIP = re.compile(r"pip install ([^`\n#]+)")
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)(\[[\w,\s-]+\])?([<>=!~].*)?$")


def requirement(token: str) -> Optional[str]:
    """One argument of ``pip install`` as a requirement: batchcorder itself for a wheel,
    an sdist or a checkout; None for an option."""
    token = token.strip("'\"")
    if not token or token.startswith("-"):
        return None
    matched = _NAME.match(token)
    if matched is None or token.endswith((".whl", ".tar.gz")) or token.startswith("batchcorder-"):
        return "batchcorder"  # target/wheels/batchcorder-*.whl, ., <checkout>, the sdist
    return token


def merge(requirements: set[str]) -> frozenset[str]:
    """Requirements with batchcorder's extras gathered into one ``batchcorder[a,b]``."""
    extras: set[str] = set()
    rest = set()
    for req in requirements:
        matched = _NAME.match(req)
        assert matched is not None, req
        if matched.group(1) == "batchcorder":
            extras |= {e.strip() for e in (matched.group(2) or "[]")[1:-1].split(",") if e.strip()}
        else:
            rest.add(req)
    bc = "batchcorder" + (f"[{','.join(sorted(extras))}]" if extras else "")
    return frozenset({bc, *rest})


def page_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, each python block with the requirements of the
    install lines above it and its ```text output block."""
    text = page.read_text()
    name = page.name
    installs = [(m.start(), m.group(1)) for m in _PIP.finditer(text)]
    blocks: list[Block] = []
    previous_end = 0
    for match in _FENCE.finditer(text):
        start = match.start()
        named: set[str] = set()
        for at, args in installs:
            if at < start:
                named |= {r for r in map(requirement, args.split()) if r is not None}
        block = Block(name, text.count("\n", 0, start) + 1, match.group(1), match.group(2),
                      merge(named) if named else frozenset())
        previous = blocks[-1] if blocks else None
        if block.lang == "text" and previous is not None and previous.lang == "python" \
                and not text[previous_end:start].strip():
            previous.output = block
        blocks.append(block)
        previous_end = match.end()
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in page_blocks(page)]
PYTHON = [b for b in ALL_BLOCKS if b.lang == "python"]
COMPILED = [b for b in ALL_BLOCKS if b.lang in ("c", "cpp")]


def is_install_block(block: Block) -> bool:
    lines = [line.split("#")[0].strip() for line in block.code.splitlines()]
    return block.lang == "sh" and all(not line or line.startswith("pip install ") for line in lines)


def is_output_block(block: Block) -> bool:
    return block.lang == "text" and (
        any(b.output is block for b in PYTHON) or block.key in OUTPUT_OF
    )


def test_every_block_runs_compiles_or_says_why_not():
    unaccounted = [
        f"{b.where} ```{b.lang} {b.first_line!r}"
        for b in ALL_BLOCKS
        if b.lang not in ("python", "c", "cpp")
        and not is_install_block(b)
        and not is_output_block(b)
        and b.key not in NOT_RUN
    ]
    assert not unaccounted, (
        "blocks that neither run nor say why (see this module's docstring): add a ```text "
        "block after the python block whose output it is, or an entry to NOT_RUN:\n"
        + "\n".join(unaccounted)
    )


def test_the_not_run_list_is_short_current_and_justified():
    keys = {b.key for b in ALL_BLOCKS}
    stale = [key for key in [*NOT_RUN, *OUTPUT_OF] if key not in keys]
    assert not stale, f"entries naming no block (a page changed; update them): {stale}"
    assert len(NOT_RUN) <= MAX_NOT_RUN, (
        f"{len(NOT_RUN)} blocks are not run (at most {MAX_NOT_RUN}): make the new one run"
    )
    assert all(len(reason.split()) >= 6 for reason in NOT_RUN.values())
    assert len(NOT_RUN) * 3 < len(ALL_BLOCKS), "most blocks must run"
    # A python block is never exempt: it runs, or is shown as ```py (a recipe).
    assert not [b.where for b in PYTHON if b.key in NOT_RUN]


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.where)
def test_imports_are_on_the_pages_install_lines(block):
    named = {(_NAME.match(r) or _NAME.match("x")).group(1).lower() for r in block.requirements}
    extras = next((r for r in block.requirements if r.startswith("batchcorder")), "")
    missing = []
    for module in imported_modules(block.code):
        if module in sys.stdlib_module_names:
            continue
        needs = PROVIDED_BY.get(module, module)
        if module in ("batchcorder.flight", "pyarrow.flight"):
            needs = "batchcorder[flight]"
        name, _, extra = needs.partition("[")
        if name.lower() not in named or (extra and extra.rstrip("]") not in extras):
            missing.append(f"{module} (needs {needs})")
    assert not missing, (
        f"{block.where} imports what its page's install lines above it do not install: "
        f"{missing}; the lines say {sorted(block.requirements) or 'nothing'}"
    )


def imported_modules(code: str) -> set[str]:
    """Top-level modules a block imports; ``batchcorder.flight`` and ``pyarrow.flight``
    kept whole, since they need an extra."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            found.add(".".join(parts[:2]) if parts[1:2] == ["flight"] else parts[0])
    return found


# -- virtualenvs ----------------------------------------------------------------------


def wheel() -> Optional[Path]:
    if os.environ.get("BC_DOCS_VENVS", "1") == "0":
        return None
    named = os.environ.get("BC_DOCS_WHEEL")
    if named:
        return Path(named)
    found = sorted((ROOT / "target" / "wheels").glob("batchcorder-*.whl"))
    return found[-1] if found else None


def package_digest(folder: Path) -> str:
    """A digest of a batchcorder package folder's Python files and native library."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".so"):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


_made: dict[frozenset[str], tuple[Path, dict[str, str]]] = {}


def interpreter(requirements: frozenset[str]) -> tuple[Path, dict[str, str]]:
    """The python of a virtualenv holding ``requirements`` (made once, and kept across
    runs while the requirements and the wheel are the same), and the environment to
    run it in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    built = wheel()
    if built is None:
        return Path(sys.executable), {**env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    if requirements in _made:
        return _made[requirements]
    installs = sorted(
        f"{built}{r.removeprefix('batchcorder')}" if r.startswith("batchcorder") else r
        for r in requirements
    )
    stamp = "\n".join([*installs, str(built.stat().st_size), str(built.stat().st_mtime_ns)])
    venv = VENVS / hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()[:12]
    python = venv / ("Scripts" if sys.platform == "win32" else "bin") / "python"
    if not (venv / "stamp").is_file() or (venv / "stamp").read_text() != stamp:
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--no-compile", *installs],
            capture_output=True, text=True, env=env,
        )
        assert result.returncode == 0, (
            f"pip install {' '.join(installs)} failed (BC_DOCS_VENVS=0 runs the blocks "
            f"with this interpreter instead):\n{result.stderr[-3000:]}"
        )
        (venv / "stamp").write_text(stamp)
    # The package under test, in place of the wheel's copy when they differ.
    tested = Path(batchcorder.__file__).parent
    installed = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('batchcorder').origin)"],
        capture_output=True, text=True, check=True, env=env, cwd=tempfile.gettempdir(),
    ).stdout.strip()
    if package_digest(Path(installed).parent) != package_digest(tested):
        overlay = venv / "under-test"
        shutil.rmtree(overlay, ignore_errors=True)
        overlay.mkdir()
        (overlay / "batchcorder").symlink_to(tested)
        env = {**env, "PYTHONPATH": str(overlay)}
    _made[requirements] = (python, env)
    return python, env


# -- running and comparing ---------------------------------------------------------------


def matches(expected: str, actual: str) -> bool:
    """``actual`` is ``expected``, where ``...`` stands for any text."""
    def tidy(text: str) -> str:
        return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())

    pattern = "".join(
        "[\\s\\S]*?" if part == "..." else re.escape(part)
        for part in re.split(r"(\.\.\.)", tidy(expected))
    )
    return re.fullmatch(pattern, tidy(actual)) is not None


def test_the_comparison_is_exact_but_for_ellipses():
    assert matches("grpc://127.0.0.1:...\n3\n", "grpc://127.0.0.1:40123\n3\n")
    assert matches("a  \nb", "a\nb\n")  # trailing blanks and newlines do not count
    assert not matches("3", "3\n4")
    assert not matches("", "printed")
    assert not matches("grpc://...:1", "grpc://x:2")


def test_install_lines_are_read_as_a_reader_would():
    assert requirement("target/wheels/batchcorder-*.whl") == "batchcorder"
    assert requirement(".") == "batchcorder" and requirement("--no-deps") is None
    assert requirement("'batchcorder[flight]'") == "batchcorder[flight]"
    assert merge({"batchcorder", "batchcorder[flight]", "batchcorder[progress]", "duckdb"}) \
        == frozenset({"batchcorder[flight,progress]", "duckdb"})
    readme = {b.first_line: b for b in PYTHON if b.page == "README.md"}
    assert readme["import duckdb"].requirements == frozenset({"batchcorder", "duckdb", "polars"})


def test_engine_pages_run_under_make_test_engines():
    """The engine pages' blocks are left out here only because make test-engines runs them."""
    recipe = (ROOT / "mk" / "engines.mk").read_text()
    assert "BC_DOCS_ENGINES=1" in recipe and "tests/python/test_docs.py" in recipe
    assert all(f"-k {page}" in recipe for page in ENGINE_PAGES)
    assert all(any(b.page == page for b in PYTHON) for page in ENGINE_PAGES)
    # An install line naming an engine's extra on another page would put Ray or Dask
    # into make test's virtualenvs: every block below it would install them.
    engines = re.compile(r"batchcorder\[[^\]]*\b(ray|dask)\b")
    assert not [b.where for b in PYTHON
                if b.page not in ENGINE_PAGES and any(engines.search(r) for r in b.requirements)]


@pytest.mark.parametrize(
    "block", [b for b in PYTHON if WITH_ENGINES or b.page not in ENGINE_PAGES], ids=lambda b: b.where
)
def test_python_block_prints_what_its_page_shows(block, tmp_path):
    python, env = interpreter(block.requirements)
    # A script file, not `-c`: spawned workers import functions from __main__ by path.
    script = tmp_path / "example.py"
    script.write_text(block.code)
    result = subprocess.run(
        [str(python), str(script)], cwd=tmp_path, capture_output=True, text=True,
        timeout=300, env=env,
    )
    assert result.returncode == 0, f"{block.where} failed:\n{result.stderr}"
    shown = block.output.code if block.output is not None else ""
    if "has already been consumed" in shown:
        found = subprocess.run([str(python), "-c", "import duckdb; print(duckdb.__version__)"],
                               capture_output=True, text=True, env=env, check=True).stdout.strip()
        if int(found.split(".")[0]) < 2:
            pytest.skip(f"{block.where} shows DuckDB 2's refusal of a consumed stream; this "
                        f"interpreter has DuckDB {found} (the newest for its Python), which "
                        "answers a second query itself. The block ran without error above")
    assert matches(shown, result.stdout), (
        f"{block.where} prints what its page does not show.\n--- the page shows:\n{shown}"
        f"--- it prints:\n{result.stdout}"
    )


# -- C and C++ ------------------------------------------------------------------------


@posix_only("compiled with the system's cc; tests/c runs under wine (make test-c-windows)")
@pytest.mark.parametrize("block", COMPILED, ids=lambda b: b.where)
def test_c_block_compiles(block, tmp_path):
    source = tmp_path / ("block.c" if block.lang == "c" else "block.cpp")
    source.write_text(block.code)
    compiler = ["cc", "-std=c11"] if block.lang == "c" else ["c++", "-std=c++17"]
    result = subprocess.run(
        [*compiler, "-Wall", "-Wextra", "-Werror", f"-I{ROOT / 'include'}", "-c", str(source),
         "-o", str(tmp_path / "block.o")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, f"{block.where} does not compile:\n{result.stderr}"


@pytest.mark.parametrize("key", sorted(OUTPUT_OF), ids=lambda k: f"{k[0]}:{OUTPUT_OF[k]}")
def test_a_programs_output_is_what_its_page_shows(key, tmp_path):
    [block] = [b for b in ALL_BLOCKS if b.key == key]
    program = ROOT / OUTPUT_OF[key]
    if program.suffix == ".py":  # a Python example, run as a user runs it
        result = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, check=True)
        assert matches(block.code, result.stdout), f"{block.where} is not what {OUTPUT_OF[key]} prints:\n{result.stdout}"
        return
    if sys.platform == "win32":
        pytest.skip("POSIX only: a C program linked by the system's cc (tests/c runs under wine)")
    # The library the Python package loads is libbatchcorder under another file name; the
    # program finds it by its SONAME (Linux) or install name (macOS, build.rs).
    [native] = [p for p in (Path(batchcorder.__file__).parent / "_native").iterdir()
                if p.suffix in (".so", ".dylib")]
    names = ("libbatchcorder.0.dylib", "libbatchcorder.dylib") if native.suffix == ".dylib" \
        else ("libbatchcorder.so.0", "libbatchcorder.so")
    for name in names:
        (tmp_path / name).symlink_to(native)
    subprocess.run(
        ["cc", "-std=c11", "-pthread", str(program), f"-I{ROOT / 'include'}", f"-L{tmp_path}",
         "-lbatchcorder", f"-Wl,-rpath,{tmp_path}", "-o", str(tmp_path / "program")],
        check=True,
    )
    result = subprocess.run([str(tmp_path / "program")], capture_output=True, text=True, check=True)
    assert matches(block.code, result.stdout), (
        f"{block.where} is not what {OUTPUT_OF[key]} prints:\n{result.stdout}"
    )
