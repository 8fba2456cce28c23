"""docs/engines.md's fan-out recipe at 64 MiB: one single-use source, cached once and served
once with max_readers equal to the read tasks of a Ray job and a Dask job that read it at
the same time. Every task sees every row of its shard, every batch is dropped once all
four passed it. How far apart the readers get depends on the scheduling, so the cache
has a memory capacity and a disk tier: the server's memory stays under the capacity
whatever the lag, and the disk holds only what some task has not passed yet.

That the jobs overlap is checked without a clock: the source holds its third batch back
until three tasks have opened their streams, and records the cache's counters then. Two
tasks are one job's at most, so both jobs were reading before either could finish (Ray
may run its two tasks one after the other: with two CPUs it does here). Were one job to
finish before the other began, the wait would end at its deadline and the test fail."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pyarrow as pa
from conftest import WAIT

from batchcorder import CacheStats, StreamCache
from batchcorder.flight import CacheServer

BATCHES = 64
ROWS = 131_072  # 1 MiB of int64 per batch
TOTAL_BYTES = BATCHES * ROWS * 8
CAPACITY = 8 << 20
GATE = 2  # the batch the source holds back until both jobs are reading


def rss_bytes() -> int:
    """This process's resident memory (the server runs here)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def test_a_ray_job_and_a_dask_job_share_one_single_use_source(ray_session, dask_client, tmp_path):
    from batchcorder.dask import read_cache as dask_read
    from batchcorder.ray import read_cache as ray_read

    pulled = []
    held_back: list[CacheStats] = []

    def single_use():
        for i in range(BATCHES):
            if i == GATE:
                # No raise here: the cache would pass it to the tasks. The assert below says.
                deadline = time.monotonic() + WAIT
                while cache.stats().readers_created < 3 and time.monotonic() < deadline:
                    time.sleep(0.01)
                held_back.append(cache.stats())
            pulled.append(i)
            yield pa.record_batch({"x": pa.array(range(i * ROWS, (i + 1) * ROWS), pa.int64())})

    schema = pa.schema({"x": pa.int64()})
    expected = sum(range(BATCHES * ROWS))
    peak = {"memory_bytes": 0, "disk_bytes": 0, "rss": 0}
    rss_before = rss_bytes()
    done = threading.Event()
    source = pa.RecordBatchReader.from_batches(schema, single_use())
    with StreamCache(source, memory_capacity=CAPACITY, disk_path=tmp_path,
                     disk_capacity=2 * TOTAL_BYTES, max_readers=4) as cache, \
            CacheServer({"numbers": cache}) as server:

        def watch() -> None:
            while not done.wait(0.01):
                now = cache.stats()
                peak["memory_bytes"] = max(peak["memory_bytes"], now.memory_bytes)
                peak["disk_bytes"] = max(peak["disk_bytes"], now.disk_bytes)
                peak["rss"] = max(peak["rss"], rss_bytes())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        results: dict[str, object] = {}
        ray_job = threading.Thread(
            target=lambda: results.update(ray=ray_read(server.location, "numbers", shards=2,
                                                      timeout=2 * WAIT).sum("x")),
            daemon=True,
        )
        ray_job.start()
        # Each job, and each task's wait for a batch, may outlast the source's hold (WAIT).
        frame = dask_read(server.location, "numbers", shards=2, timeout=2 * WAIT)
        results["dask"] = dask_client.compute(frame.x.sum()).result(timeout=2 * WAIT)
        ray_job.join(2 * WAIT)
        assert not ray_job.is_alive(), "the Ray job did not finish"
        done.set()
        watcher.join(WAIT)
        stats = cache.stats()
    assert results == {"ray": expected, "dask": expected}
    # Three tasks, so both jobs', were reading before the source passed its second batch:
    # neither job had finished before the other began.
    [seen] = held_back
    assert seen.readers_created >= 3 and seen.batches_ingested == GATE, seen
    assert pulled == list(range(BATCHES))  # the source was read once
    assert (stats.readers_created, stats.readers_live) == (4, 0)
    assert stats.batches_evicted == BATCHES
    assert stats.memory_bytes == 0  # the disk keeps the segment it was writing until close
    print(f"\nfan-out: {TOTAL_BYTES >> 20} MiB streamed; cache peak {peak['memory_bytes'] / 2**20:.1f} MiB "
          f"in memory, {peak['disk_bytes'] / 2**20:.1f} MiB on disk ({stats.disk_bytes / 2**20:.1f} at the end); "
          f"server RSS peak "
          f"{(peak['rss'] - rss_before) / 2**20:.0f} MiB over its start; {seen.readers_created} tasks reading "
          f"when the source passed batch {GATE - 1}")
    assert peak["memory_bytes"] <= CAPACITY
