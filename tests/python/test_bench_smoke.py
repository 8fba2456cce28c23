"""The benchmark harness stays importable and every workload runs, on tiny sizes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

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
    ["memory", "disk", "disk-ingest", "tiny-batches", "4-threads", "duckdb-selfjoin", "bounded", "sliced",
     "prefetch", "first-pass-1", "first-pass-3", "first-pass-10"],
)
def test_workload_runs_on_tiny_sizes(impl, workload):
    result = load().WORKLOADS[workload](impl, True)
    assert result["seconds"] is not None and result["seconds"] > 0
    if workload == "tiny-batches":
        assert result["us_per_batch"] > 0
    if workload == "bounded":
        assert result["rss_growth_mib"] >= 0
