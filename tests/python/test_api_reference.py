"""The API reference that `make docs` builds from the docstrings (tools/apidocs.py, pdoc)
has no warning and an entry for every public name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import batchcorder
import batchcorder.flight

TOOL = Path(__file__).resolve().parents[2] / "tools" / "apidocs.py"


def test_the_reference_builds_without_warnings_and_names_everything_public(tmp_path):
    result = subprocess.run(
        [sys.executable, str(TOOL), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    main = (tmp_path / "batchcorder.html").read_text()
    flight = (tmp_path / "batchcorder" / "flight.html").read_text()
    for name in batchcorder.__all__:
        assert f'id="{name}"' in main, name
    for name in batchcorder.flight.__all__:
        assert f'id="{name}"' in flight, name
    # Sphinx roles are shown as code names, not as ":meth:" text.
    assert ":meth:" not in main and ":class:" not in flight
