"""Ray Data and Dask reading a cache (issue 31): a ~1 GiB stream read over Flight and from
a save, against the same engine reading the same rows from uncompressed Parquet.

    python bench/engines.py [--gib 1.0] [--repeats 3] [--shards 4] [--out FILE]

Before the clock: the stream (bench/workloads.py's generated batches: an id, two
numbers, a string) is cached and saved, and written as `shards` uncompressed Parquet
files. Each sample then reads every column of every row on the engine's workers, and
touches every value (`touch`: a sum of each number column and of the strings' lengths,
the same work on every side: a save is mapped, and a read that touched nothing would
cost nothing), sending back only those sums:

- Ray (`ray.init(num_cpus=2)`): `map_batches(touch)` over `batchcorder.ray.read_cache(...)`
  or `ray.data.read_parquet(dir)`;
- Dask (`LocalCluster(n_workers=2, processes=True)`): `map_partitions(touch)` over
  `batchcorder.dask.read_cache(...)` or `dd.read_parquet(dir, dtype_backend="pyarrow")`.

The workers' memory is the largest RSS of one worker process (Ray's `ray::` processes,
Dask's worker processes), sampled every 20 ms from outside during the sample.

Over Flight, every sample starts a fresh `batchcorder-flight` process serving the save
(one cache, read from its file), so its peak RSS (VmHWM) is that sample's. Sides
interleave within a round, after one untimed round; the figures are medians. The bar (issue 31): a save read in
at most 1.0x the time of Parquet, Flight in at most 1.2x.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import threading

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workloads import generated_batches, proc_status_bytes  # bench/ is the script's folder

ROWS_PER_BATCH = 1 << 16
BAR = {"save": 1.0, "flight": 1.2}


def batch_count(gib: float) -> int:
    bytes_per_row = 8 + 8 + 8 + 4 + 12  # as bench/flight.py counts them
    return max(1, int(gib * (1 << 30) / (bytes_per_row * ROWS_PER_BATCH)))


def prepare(folder: Path, batches: int, shards: int) -> tuple[Path, Path]:
    """The save and a folder of `shards` uncompressed Parquet files, of the same rows."""
    from batchcorder import StreamCache

    first = next(generated_batches(1, ROWS_PER_BATCH))
    with StreamCache(pa.RecordBatchReader.from_batches(
            first.schema, generated_batches(batches, ROWS_PER_BATCH))) as cache:
        saved = cache.persist(folder / "save").path
    parquet = folder / "parquet"
    parquet.mkdir()
    with StreamCache.open(saved) as cache:
        for shard in range(shards):  # contiguous row ranges, one file each
            start, stop = batches * shard // shards, batches * (shard + 1) // shards
            with pq.ParquetWriter(parquet / f"part-{shard}.parquet", first.schema,
                                  compression="none") as writer:
                for index in range(start, stop):
                    writer.write_batch(cache[index], row_group_size=ROWS_PER_BATCH)
    return saved, parquet


def touch(table: pa.Table) -> pa.Table:
    """Every value of every column read once: the sums of the numbers and string lengths."""
    sums = [pc.sum(table.column(name)).as_py() or 0 for name in ("id", "x", "y")]
    return pa.table({"rows": [table.num_rows], "sum": [float(sum(sums))],
                     "chars": [pc.sum(pc.utf8_length(table.column("s"))).as_py() or 0]})


class Peak:
    """The largest RSS of one of the processes `pids()` names, sampled every 20 ms."""

    def __init__(self, pids) -> None:
        self.pids, self.peak, self.done = pids, 0, threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(0.02):
            for pid in self.pids():
                try:
                    self.peak = max(self.peak, psutil.Process(pid).memory_info().rss)
                except psutil.Error:
                    pass  # a worker that ended

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.peak


def ray_workers() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("ray::")]


class Server:
    """`batchcorder-flight` serving the save, in a process of its own."""

    def __init__(self, saved: Path) -> None:
        command = [sys.executable, "-m", "batchcorder.flight", f"data={saved}"]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in self.process.stdout:  # type: ignore[union-attr]
            found = re.match(r"listening at (\S+)", line)
            if found:
                self.location = found.group(1)
                return
        raise RuntimeError("batchcorder-flight did not start")

    def stop(self) -> int:
        """Stop it; its peak RSS in bytes."""
        peak = proc_status_bytes("VmHWM", self.process.pid)
        self.process.terminate()
        self.process.wait(60)
        return peak


def ray_sample(side: str, saved: Path, parquet: Path, shards: int) -> dict:
    import ray

    from batchcorder.ray import read_cache

    server = Server(saved) if side == "flight" else None
    workers = Peak(ray_workers)
    start = time.perf_counter()
    if side == "parquet":
        dataset = ray.data.read_parquet(str(parquet), override_num_blocks=shards)
    else:
        dataset = read_cache(server.location if server else saved, "data" if server else None, shards=shards)
    rows = dataset.map_batches(touch, batch_format="pyarrow", batch_size=None).sum("rows")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": rows, "server_peak": server.stop() if server else None,
            "worker_peak": workers.stop()}


def dask_sample(client, side: str, saved: Path, parquet: Path, shards: int) -> dict:
    import dask.dataframe as dd
    import pandas as pd

    from batchcorder.dask import read_cache

    pids = list(client.run(os.getpid).values())
    server = Server(saved) if side == "flight" else None
    workers = Peak(lambda: pids)
    start = time.perf_counter()
    if side == "parquet":
        frame = dd.read_parquet(str(parquet), dtype_backend="pyarrow")
    else:
        frame = read_cache(server.location if server else saved, "data" if server else None, shards=shards)
    meta = pd.DataFrame({"rows": pd.Series([], dtype="int64"), "sum": pd.Series([], dtype="float64"),
                         "chars": pd.Series([], dtype="int64")})
    touched = frame.map_partitions(lambda df: touch(pa.Table.from_pandas(df, preserve_index=False)).to_pandas(),
                                   meta=meta)
    rows = int(touched["rows"].sum().compute())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": rows, "server_peak": server.stop() if server else None,
            "worker_peak": workers.stop()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    batches = batch_count(args.gib)
    sides = ["parquet", "save", "flight"]
    results: dict[str, dict[str, list[dict]]] = {"ray": {s: [] for s in sides}, "dask": {s: [] for s in sides}}
    with tempfile.TemporaryDirectory() as tmp:
        saved, parquet = prepare(Path(tmp), batches, args.shards)
        size = (saved / "data.arrow").stat().st_size
        print(f"{batches} batches, {size / 2**30:.2f} GiB saved; {args.shards} shards", flush=True)

        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        for side in sides:  # untimed: Ray Data's first execution starts its own actors
            ray_sample(side, saved, parquet, args.shards)
        for _ in range(args.repeats):
            for side in sides:
                results["ray"][side].append(ray_sample(side, saved, parquet, args.shards))
                print("ray", side, results["ray"][side][-1], flush=True)
        ray.shutdown()

        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            for _ in range(args.repeats):
                for side in sides:
                    results["dask"][side].append(dask_sample(client, side, saved, parquet, args.shards))
                    print("dask", side, results["dask"][side][-1], flush=True)

    summary = {}
    for engine, by_side in results.items():
        parquet_time = statistics.median(r["seconds"] for r in by_side["parquet"])
        for side, samples in by_side.items():
            assert all(r["rows"] == batches * ROWS_PER_BATCH for r in samples), (engine, side)
            seconds = statistics.median(r["seconds"] for r in samples)
            row = {"seconds": round(seconds, 2), "ratio": round(seconds / parquet_time, 2)}
            if side in BAR:
                row["meets_bar"] = seconds / parquet_time <= BAR[side]
            for key in ("server_peak", "worker_peak"):
                peaks = [r[key] for r in samples if r.get(key)]
                if peaks:
                    row[key + "_mib"] = round(statistics.median(peaks) / 2**20)
            summary[f"{engine}/{side}"] = row
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"gib": args.gib, "shards": args.shards, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
