"""batchcorder.ray and batchcorder.dask without their engines (make test installs neither;
make test-engines tests them with the engines): importing them works, and using them
raises ImportError naming the extra to install. Each check runs in a fresh interpreter
in which the engine cannot be imported, whether or not this venv has it."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROGRAM = """
import sys
sys.modules[{blocked!r}] = None  # as if not installed: importing it raises ImportError
import batchcorder
assert {blocked!r} not in [m for m in sys.modules if sys.modules[m] is not None]
import batchcorder.{module} as engine
try:
    engine.read_cache("grpc://127.0.0.1:1", "x")
except ImportError as err:
    print(err)
"""


@pytest.mark.parametrize("module, blocked", [("ray", "ray"), ("dask", "dask")])
def test_using_an_engine_module_without_its_engine_names_the_extra(module, blocked):
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM.format(module=module, blocked=blocked)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"pip install 'batchcorder[{module}]'" in result.stdout


def test_import_batchcorder_imports_neither_engine():
    result = subprocess.run(
        [sys.executable, "-c", "import sys, batchcorder; print(sorted({'ray', 'dask'} & set(sys.modules)))"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.stdout.strip() == "[]", result.stderr
