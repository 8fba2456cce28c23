"""`make demo` shows the point: a second query fails on a bare single-use stream and works
on the cache, the file is read once, and the run ends with what to try next."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "demo" / "demo.py"


def test_the_demo_shows_the_failure_the_cache_and_what_next(tmp_path):
    result = subprocess.run(
        [sys.executable, str(DEMO)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "bare stream, first DuckDB query: 3,000,000 rows" in out
    import duckdb  # the demo's, since it runs in this interpreter

    if int(duckdb.__version__.split(".")[0]) >= 2:
        assert "second DuckDB query fails: Invalid Input Error: This RecordBatchReader has " \
            "already been consumed" in out
    else:
        assert f"second DuckDB query: DuckDB {duckdb.__version__} answered it too" in out
    assert "DuckDB self-join over the cache: 3,000,000 rows matched" in out
    read = re.search(r"the file was read once: (\d+) batches pulled from it, (\d+) cached; "
                     r"(\d+) readers created", out)
    assert read is not None, out
    assert read.group(1) == read.group(2) == "46"  # 3,000,000 rows in batches of 65,536
    assert int(read.group(3)) >= 3  # the join, the table, the group-by: one scan at least each
    table_ms = re.search(r"pyarrow table from the cache: 3,000,000 rows in ([\d.]+) ms", out)
    assert table_ms is not None and float(table_ms.group(1)) > 0, out
    assert out.rstrip().splitlines()[-6] == "What to try next:", out
