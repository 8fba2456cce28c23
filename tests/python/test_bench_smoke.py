"""The benchmark harness stays importable and every workload runs, on tiny sizes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import posix_only

BENCH = Path(__file__).resolve().parents[2] / "bench" / "workloads.py"


def load():
    spec = importlib.util.spec_from_file_location("bench_workloads", BENCH)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    from batchcorder import StreamCache

    module.StreamCache = StreamCache  # what main() does before timing
    return module


@pytest.mark.parametrize("impl", ["ours", "pyarrow"])
@pytest.mark.parametrize(
    "workload",
    ["memory", "disk", "disk-ingest", "tiny-batches", "tiny-batches-3", "tiny-batches-10", "4-threads",
     "duckdb-selfjoin", pytest.param("bounded", marks=posix_only("its peak RSS is getrusage's")),
     "sliced", "prefetch", "first-pass-1", "first-pass-3", "first-pass-10"],
)
def test_workload_runs_on_tiny_sizes(impl, workload):
    result = load().WORKLOADS[workload](impl, True)
    assert result["seconds"] is not None and result["seconds"] > 0
    if workload.startswith("tiny-batches"):
        assert result["us_per_batch"] > 0
    if workload == "bounded":
        assert result["rss_growth_mib"] >= 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallinfo2 and /proc")
@pytest.mark.parametrize("impl", ["ours", "pyarrow"])
def test_the_memory_per_batch_workload_splits_its_bytes(impl):
    result = load().WORKLOADS["one-row-batches"](impl, True)
    # Holding 20 000 batches costs malloc heap on either side; only pyarrow's list keeps
    # the batches' buffers in its pool (the cache copies one-row batches).
    assert result["heap_bytes_per_batch"] > 0
    if impl == "pyarrow":
        assert result["pool_bytes_per_batch"] > 0
    else:
        assert result["pool_bytes_per_batch"] < 64


def test_a_long_lived_run_reports_the_median_after_the_first():
    import json
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(BENCH), "--impl", "ours", "--workload", "first-pass-1", "--quick",
         "--repeat", "3"],
        capture_output=True, text=True, check=True, timeout=120,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["first_seconds"] > 0 and result["seconds"] > 0
