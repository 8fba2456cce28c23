"""Concurrency and leak checks: many threads, DuckDB scans, a GIL-taking upstream.

Each batch carries a checksum column, so a reader that got a wrong, torn or reordered
batch fails. Deadlocks show up as threads still alive after a generous join timeout.
"""

from __future__ import annotations

import gc
import os
import random
import subprocess
import sys
import threading
import time

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from batchcorder import StreamCache
from conftest import STRESS_SCALE, windows_handle_count, windows_memory_kib

ROWS = 512
SCHEMA = pa.schema([("batch", pa.int64()), ("value", pa.int64()), ("check", pa.int64())])


def make_batch(index: int) -> pa.RecordBatch:
    values = np.arange(index * ROWS, (index + 1) * ROWS, dtype=np.int64)
    checks = values * 31 + index
    return pa.record_batch(
        [pa.array(np.full(ROWS, index, dtype=np.int64)), pa.array(values), pa.array(checks)],
        schema=SCHEMA,
    )


def generator_source(batches: int, pulls: list[int]) -> pa.RecordBatchReader:
    """A pyarrow reader over a Python generator: its get_next takes the GIL."""

    def produce():
        for index in range(batches):
            pulls.append(index)
            yield make_batch(index)

    return pa.RecordBatchReader.from_batches(SCHEMA, produce())


def verify(batch: pa.RecordBatch, expected_index: int) -> None:
    columns = batch.to_pydict()
    assert columns["batch"][0] == expected_index
    value = np.asarray(batch.column(1))
    assert value[0] == expected_index * ROWS and len(value) == ROWS
    assert np.array_equal(np.asarray(batch.column(2)), value * 31 + expected_index)


def run_threads(targets, timeout: float = 120.0) -> None:
    errors: list[BaseException] = []

    def guarded(target):
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    alive = [t for t in threads if t.is_alive()]
    assert not alive, f"{len(alive)} threads still running: deadlock"
    if errors:
        raise errors[0]


@pytest.mark.parametrize("round", range(STRESS_SCALE))
@pytest.mark.parametrize("tier", ["memory", "disk"])
def test_sixteen_threads_and_duckdb_over_an_ingesting_generator(tier, round, tmp_path):
    batches = 120
    pulls: list[int] = []
    disk = {"disk_path": tmp_path, "disk_capacity": 1 << 30, "memory_capacity": 64 << 10}
    cache = StreamCache(generator_source(batches, pulls), **(disk if tier == "disk" else {}))
    total = sum(range(batches * ROWS))
    rng = random.Random(7 + round)

    def full_reader():
        for index, batch in enumerate(cache.reader()):
            verify(batch, index)
        assert index == batches - 1

    def partial_reader():
        reader = cache.reader(from_start=True)
        for index in range(rng.randrange(1, batches)):
            verify(next(reader), index)
        reader.close()

    def duckdb_scan():
        con = duckdb.connect()
        con.register("ds", cache)
        rows = con.sql('SELECT count(*), sum(value), sum("check" - "value" * 31 - "batch") FROM ds')
        assert rows.fetchall() == [(batches * ROWS, total, 0)]
        con.close()

    targets = [full_reader] * 8 + [partial_reader] * 4 + [duckdb_scan] * 4
    run_threads(targets)
    assert pulls == list(range(batches)), "the upstream was read once, in order"
    cache.close()


@pytest.mark.parametrize("round", range(STRESS_SCALE))
def test_one_reader_shared_by_eight_threads_hands_each_batch_out_once(round):
    batches = 400
    cache = StreamCache(generator_source(batches, []))
    reader = cache.reader()
    seen: list[list[int]] = [[] for _ in range(8)]

    def take(mine: list[int]):
        for batch in reader:
            verify(batch, batch.column(0)[0].as_py())
            mine.append(batch.column(0)[0].as_py())

    run_threads([lambda mine=mine: take(mine) for mine in seen])
    handed_out = sorted(index for mine in seen for index in mine)
    assert handed_out == list(range(batches))
    assert reader.closed
    with pytest.raises(StopIteration):
        next(reader)
    cache.close()


@pytest.mark.parametrize("round", range(STRESS_SCALE))
def test_closing_a_reader_while_other_threads_read_through_it_stops_them_cleanly(round):
    cache = StreamCache(generator_source(2_000, []))
    reader = cache.reader()
    twenty_read = threading.Event()
    counts: list[int] = []

    def read():
        count = 0
        for _batch in reader:
            count += 1
            if reader.position >= 20:
                twenty_read.set()
            time.sleep(0.001)  # slower than the close below
        counts.append(count)

    def close():
        assert twenty_read.wait(60)
        reader.close()

    run_threads([read] * 4 + [close])
    assert reader.closed and 20 <= sum(counts) < 2_000
    with pytest.raises(StopIteration):
        next(reader)
    assert cache.reader().read_all().num_rows == 2_000 * ROWS
    cache.close()


def test_duckdb_limit_releases_half_read_streams_without_leaking_readers():
    cache = StreamCache(pa.Table.from_batches([make_batch(i) for i in range(50)]))
    con = duckdb.connect()
    con.register("ds", cache)
    for _ in range(200):
        assert len(con.sql("SELECT * FROM ds LIMIT 3").fetchall()) == 3
    gc.collect()
    stats = cache.stats()
    assert stats.readers_created >= 200
    assert stats.readers_live == 0, "every half-read stream was released"
    assert con.sql("SELECT count(*) FROM ds").fetchall() == [(50 * ROWS,)]


def _rss_kib() -> int:
    if sys.platform == "win32":
        return windows_memory_kib()
    if not sys.platform.startswith("linux"):
        # No /proc (macOS): ps tells the resident set in KiB too.
        ps = subprocess.run(["ps", "-o", "rss=", "-p", str(os.getpid())], capture_output=True, text=True, check=True)
        return int(ps.stdout.split()[0])
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _open_fds() -> int:
    if sys.platform == "win32":
        return windows_handle_count()  # files and mappings are handles there
    if not sys.platform.startswith("linux"):
        return len(os.listdir("/dev/fd"))  # macOS: this process's descriptors
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


def test_unconsumed_capsules_do_not_leak():
    cache = StreamCache(pa.Table.from_batches([make_batch(0)]))
    for _ in range(5_000):  # warm up allocators
        cache.__arrow_c_stream__()
    gc.collect()
    before = _rss_kib()
    for _ in range(100_000):
        cache.__arrow_c_stream__()
    gc.collect()
    grown = _rss_kib() - before
    assert cache.stats().readers_live == 0
    assert cache.stats().readers_created == 105_000
    assert grown < 8 * 1024, f"RSS grew {grown} KiB over 100 000 dropped capsules"


def test_caches_created_and_closed_in_a_loop_keep_rss_and_fds_flat(tmp_path):
    table = pa.Table.from_batches([make_batch(i) for i in range(20)])

    def cycle():
        with StreamCache(table, disk_path=tmp_path, disk_capacity=1 << 26, memory_capacity=1) as c:
            assert pa.table(c).num_rows == table.num_rows

    for _ in range(50):
        cycle()
    gc.collect()
    rss, fds = _rss_kib(), _open_fds()
    for _ in range(300):
        cycle()
    gc.collect()
    assert _open_fds() <= fds, "file descriptors leaked"
    assert _rss_kib() - rss < 16 * 1024, "RSS grew over 300 caches"
    assert os.listdir(tmp_path) == [], "every cache directory was removed"
