"""A process killed while its cache spills leaves its folder behind; the next cache on
the same disk_path removes it, and nothing that belongs to a live process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import wait_for_child

from batchcorder import StreamCache

CHILD = r"""
import sys, time
import pyarrow as pa
from batchcorder import StreamCache
table = pa.table({"x": range(100_000)})
cache = StreamCache(table.to_reader(max_chunksize=1_000), memory_capacity=0,
                    disk_path=sys.argv[1], disk_capacity=1 << 30)
cache.ingest_all()
print("ready", flush=True)
time.sleep(60)
"""


def folders(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("batchcorder-"))


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_process_folder_is_removed_by_the_next_cache(tmp_path, how):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        left = folders(tmp_path)
        assert len(left) == 1
        # While the child lives, its folder is not touched.
        with StreamCache(pa.table({"y": [1]}), disk_path=tmp_path, disk_capacity=1 << 20) as live:
            assert left[0] in folders(tmp_path)
            assert pa.table(live).num_rows == 1
        os.kill(child.pid, how)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert folders(tmp_path) == left, "killed before it could clean up"
    with StreamCache(pa.table({"y": [1]}), disk_path=tmp_path, disk_capacity=1 << 20) as cache:
        assert left[0] not in folders(tmp_path)
        assert len(folders(tmp_path)) == 1  # this cache's own
        assert pa.table(cache).num_rows == 1
    assert folders(tmp_path) == []


def test_a_forked_childs_exit_leaves_the_parents_folder(tmp_path):
    cache = StreamCache(pa.table({"x": list(range(10))}).to_reader(max_chunksize=2),
                        memory_capacity=0, disk_path=tmp_path, disk_capacity=1 << 20)
    cache.ingest_all()
    mine = folders(tmp_path)
    pid = os.fork()
    if pid == 0:  # the child reads its parent's finished cache, then exits at once
        ok = pa.table(cache).column("x").to_pylist() == list(range(10))
        os._exit(0 if ok else 1)
    assert wait_for_child(pid) == 0
    # A new cache in the same folder: the parent still owns its folder.
    with StreamCache(pa.table({"y": [1]}), disk_path=tmp_path, disk_capacity=1 << 20):
        assert set(mine) <= set(folders(tmp_path))
    assert pa.table(cache).column("x").to_pylist() == list(range(10))
    cache.close()
    assert folders(tmp_path) == []
