"""Shared fixtures of `make test-engines`: a local Ray (two CPUs) and a Dask cluster of two
worker processes, started once per run; a time limit on every test (BC_TEST_TIMEOUT
seconds, default 300), so a hang fails with every thread's stack.

The type catalogue is tests/python/test_types.py's, imported from there."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

# The tests' own modules, for this process and (through PYTHONPATH) Ray's workers.
TEST_PATHS = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "python")]
sys.path.insert(0, TEST_PATHS[1])

TEST_TIMEOUT = float(os.environ.get("BC_TEST_TIMEOUT", "300"))
WAIT = 120.0  # seconds a worker may take to start, finish or be noticed gone


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    limit = pytest.mark.timeout(TEST_TIMEOUT, method="thread")
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(limit)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    # Workers started without pytest's variable: under it, Ray's table pickler raises for
    # the view types (binary_view, string_view) where a user's Ray falls back to Arrow IPC.
    under_test = os.environ.pop("PYTEST_CURRENT_TEST", None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False, object_store_memory=400 * 1024 * 1024,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(TEST_PATHS)}})
    if under_test is not None:
        os.environ["PYTEST_CURRENT_TEST"] = under_test
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def dask_client() -> Iterator[object]:
    import dask
    from distributed import Client, LocalCluster

    # A task whose worker dies is not run again: the tests see each failure once.
    dask.config.set({"distributed.scheduler.allowed-failures": 0})
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=40) as cluster:
        with Client(cluster, timeout=WAIT) as client:
            yield client


def wait_until(condition: Callable[[], bool], what: str, seconds: float = WAIT) -> None:
    """Poll `condition` until it holds; fail saying `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not so after {seconds} s")
        time.sleep(0.05)
