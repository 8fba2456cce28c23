"""A process killed while its cache spills, or while it saves, leaves its folder behind
(whenever it is killed: while making the folder, using it, committing a save or cleaning
up); the next cache or save in the same folder removes it, and nothing that belongs to a
live process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from conftest import STRESS_SCALE, posix_only, wait_for_child

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


# kill: SIGKILL, terminate: SIGTERM; on Windows both are TerminateProcess.
@pytest.mark.parametrize("how", ["kill", "terminate"])
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
        getattr(child, how)()
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


@posix_only("os.fork")
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


def ours(parent: Path) -> list[str]:
    """Every folder a cache or a save makes for itself: a disk tier's, a save's staging."""
    return sorted(p.name for p in parent.iterdir()
                  if p.name.startswith(("batchcorder-", ".batchcorder-save-")))


CHURN_TABLE = pa.table({"x": range(200), "s": [str(i) for i in range(200)]})


def churn(directory: Path, rounds: int) -> None:
    """Make, fill and drop a disk-tier cache and a save in `directory`, `rounds` times
    (forever when 0), checking what each reads back; exits 1 on any difference."""
    n = 0
    while rounds == 0 or n < rounds:
        with StreamCache(CHURN_TABLE.to_reader(max_chunksize=50), memory_capacity=0,
                         disk_path=directory, disk_capacity=1 << 20) as spilled:
            if not pa.table(spilled).equals(CHURN_TABLE):
                os._exit(1)
        saved = directory / f"save-{os.getpid()}-{n}"
        StreamCache(CHURN_TABLE.to_reader(max_chunksize=50)).persist(saved)
        if not pa.table(StreamCache.open(saved)).equals(CHURN_TABLE):
            os._exit(1)
        n += 1


@posix_only("os.fork: hundreds of children killed within milliseconds of their start")
def test_a_process_killed_at_any_instant_leaves_nothing_the_next_cache_keeps(tmp_path):
    """Children making caches and saves are killed at random instants, hundreds of times,
    while a live cache and a live churning child share the folder: every folder the
    killed ones left is removed by the next cache, the live ones are never touched, and
    every save that finished opens whole."""
    live = StreamCache(CHURN_TABLE.to_reader(max_chunksize=50), memory_capacity=0,
                       disk_path=tmp_path, disk_capacity=1 << 20)
    live.ingest_all()
    [live_folder] = ours(tmp_path)
    survivor = os.fork()
    if survivor == 0:  # sweeps run under it all along: it must never lose a folder
        try:
            churn(tmp_path, rounds=150 * STRESS_SCALE)
        except BaseException:
            os._exit(1)
        os._exit(0)
    rng = random.Random(26)
    left_behind = 0
    try:
        for _ in range(300 * STRESS_SCALE):
            pid = os.fork()
            if pid == 0:
                try:
                    churn(tmp_path, rounds=0)
                finally:
                    os._exit(1)
            # Within the first milliseconds: folder creation, the first spill, the save
            # and its commit, at every instant in between. Up to 10 ms: a fork of a large
            # test process can take a few before the child runs at all.
            time.sleep(rng.uniform(0, 0.010))
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            left_behind = max(left_behind, len(ours(tmp_path)))
    finally:
        assert wait_for_child(survivor, seconds=240) == 0, "the live churning child lost a folder"
    assert left_behind > 2, "no kill left a folder behind: the test no longer reaches the windows"
    assert live_folder in ours(tmp_path)

    with StreamCache(pa.table({"y": [1]}), memory_capacity=0, disk_path=tmp_path,
                     disk_capacity=1 << 20) as sweeper:
        sweeper.ingest_all()
        after = ours(tmp_path)
        assert live_folder in after and len(after) == 2, after  # the live one and its own
    assert ours(tmp_path) == [live_folder]
    assert pa.table(live).equals(CHURN_TABLE)
    saves = [p for p in tmp_path.iterdir() if p.name not in ours(tmp_path)]
    assert saves, "no save finished"
    for save in saves:  # a save either finished whole or left only a staging folder
        assert pa.table(StreamCache.open(save, verify=True)).equals(CHURN_TABLE), save
    live.close()
    assert ours(tmp_path) == []
