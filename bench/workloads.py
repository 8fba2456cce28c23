"""One benchmark workload in a fresh process: prints one JSON line.

    python bench/workloads.py --impl ours|ref|pyarrow --workload NAME [--quick]

`ours` and `ref` both import the package named `batchcorder` (run each in its own
virtualenv); `pyarrow` is the best plain-pyarrow way to do the same job. Source data is
built before the clock starts; the timed part starts from a fresh single-use reader.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

BATCH_ROWS = 65_536


def owned_batches(rows: int, seed: int = 1) -> list[pa.RecordBatch]:
    """Batches that own their buffers (as read from Parquet): int64, float64, short string."""
    rng = np.random.default_rng(seed)
    pool = pa.array([f"s{i:04d}" for i in range(10_000)])
    out = []
    for start in range(0, rows, BATCH_ROWS):
        n = min(BATCH_ROWS, rows - start)
        labels = pool.take(pa.array(rng.integers(0, 10_000, n)))  # a fresh allocation
        out.append(
            pa.record_batch({"id": np.arange(start, start + n), "x": rng.random(n), "s": labels})
        )
    return out


def generated_batches(batches: int, rows: int = 1 << 16):
    """`batches` batches of an id, two numbers and a string of about 12 characters, each
    made as it is asked for, so that the source holds no memory."""
    import pyarrow.compute as pc

    rng = np.random.default_rng(7)
    for b in range(batches):
        ids = np.arange(b * rows, (b + 1) * rows)
        yield pa.record_batch(
            {
                "id": ids,
                "x": rng.random(rows),
                "y": rng.integers(0, 1 << 40, rows),
                "s": pc.cast(pa.array(ids * 7919), pa.string()),
            }
        )


def once(batches: list[pa.RecordBatch]) -> pa.RecordBatchReader:
    return pa.RecordBatchReader.from_batches(batches[0].schema, iter(batches))


def replay_rows(source) -> int:
    return pa.RecordBatchReader.from_stream(source).read_all().num_rows


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def memory(impl: str, quick: bool) -> dict:
    batches = owned_batches(200_000 if quick else 20_000_000)
    rows = sum(b.num_rows for b in batches)

    def run():
        if impl == "pyarrow":
            table = once(batches).read_all()
            for _ in range(3):  # consumed the same way as the cache
                assert replay_rows(table) == rows
        else:
            cache = StreamCache(once(batches))
            for _ in range(3):
                assert replay_rows(cache) == rows

    return {"seconds": timed(run), "bytes": sum(b.nbytes for b in batches)}


def disk(impl: str, quick: bool) -> dict:
    batches = owned_batches(200_000 if quick else 20_000_000)
    rows = sum(b.num_rows for b in batches)
    tmp = tempfile.mkdtemp(prefix="bc-bench-")
    try:

        def run():
            if impl == "pyarrow":
                path = os.path.join(tmp, "stream.arrow")
                with ipc.new_file(path, batches[0].schema) as writer:
                    for batch in once(batches):
                        writer.write_batch(batch)
                for _ in range(3):
                    with pa.memory_map(path) as source:
                        assert ipc.open_file(source).read_all().num_rows == rows
            else:
                cache = StreamCache(
                    once(batches), memory_capacity=1, disk_path=tmp, disk_capacity=1 << 36
                )
                for _ in range(3):
                    assert replay_rows(cache) == rows
                cache.close()

        return {"seconds": timed(run)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def disk_ingest(impl: str, quick: bool) -> dict:
    """Ingest alone into the disk tier, against pyarrow's IPC file writer."""
    batches = owned_batches(200_000 if quick else 20_000_000)
    tmp = tempfile.mkdtemp(prefix="bc-bench-")
    try:

        def run():
            if impl == "pyarrow":
                with ipc.new_file(os.path.join(tmp, "s.arrow"), batches[0].schema) as writer:
                    for batch in once(batches):
                        writer.write_batch(batch)
            else:
                cache = StreamCache(
                    once(batches), memory_capacity=1, disk_path=tmp, disk_capacity=1 << 36
                )
                cache.ingest_all()
                cache.close()

        return {"seconds": timed(run)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tiny_columns(count: int, columns: int) -> list[pa.RecordBatch]:
    """`count` batches of 64 rows with `columns` columns (int64, float64 and string in
    turn), built by pyarrow, so each batch owns buffers from pyarrow's memory pool, as a
    Parquet read gives (a numpy-backed batch would leave the pool untouched, and its first
    use, about 0.1 to 9 ms of fresh pages on a VM, would land in the clock)."""
    kinds = [
        lambda i: pa.array(range(i * 64, i * 64 + 64), pa.int64()),
        lambda i: pa.array([float(v) for v in range(64)], pa.float64()),
        lambda i: pa.array([f"s{i}-{v}" for v in range(64)], pa.string()),
    ]
    names = ["id"] + [f"c{c}" for c in range(1, columns)]
    return [
        pa.record_batch({names[c]: kinds[c % 3](i) for c in range(columns)})
        for i in range(count)
    ]


def tiny_batches(columns: int):
    """Ingest 1 563 batches of 64 rows, then replay them from Python (3 passes in all)."""

    def workload(impl: str, quick: bool) -> dict:
        batches = tiny_columns(1_563, columns)
        passes = 3

        def run():
            if impl == "pyarrow":
                table = once(batches).read_all()
                for _ in range(passes):
                    for _batch in table.to_reader():
                        pass
            else:
                cache = StreamCache(once(batches))
                for _ in range(passes):
                    for _batch in cache:
                        pass

        seconds = timed(run)
        result = {"seconds": seconds, "us_per_batch": seconds / (passes * len(batches)) * 1e6}
        if impl == "pyarrow":
            # Context, after the clock: one pass of the same single-use source through the
            # C stream interface and back into pyarrow, which any first pass that caches
            # outside pyarrow pays at least once.
            crossed = timed(lambda: [None for _ in pa.RecordBatchReader.from_stream(once(batches))])
            result["c_roundtrip_us_per_batch"] = crossed / len(batches) * 1e6
        return result

    return workload


def four_threads(impl: str, quick: bool) -> dict:
    batches = owned_batches(200_000 if quick else 20_000_000)
    rows = sum(b.num_rows for b in batches)

    def run():
        if impl == "pyarrow":
            table = once(batches).read_all()
            make = table.to_reader
        else:
            cache = StreamCache(once(batches))
            cache.ingest_all()
            make = cache.reader
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(replay_rows(make()))) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [rows] * 4

    return {"seconds": timed(run)}


class TableStreams:
    """A table seen only through the C stream interface: a fresh export per call."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table

    def __arrow_c_stream__(self, requested_schema=None):
        return self._table.__arrow_c_stream__(requested_schema)


def duckdb_selfjoin(impl: str, quick: bool) -> dict:
    import duckdb

    batches = owned_batches(100_000 if quick else 2_000_000)
    rows = sum(b.num_rows for b in batches)

    query = "SELECT count(*), sum(a.x + b.x) FROM ds a JOIN ds b ON a.id = b.id"

    def joined_rows(ds) -> int:  # noqa: ARG001 - DuckDB finds `ds` by name
        return duckdb.sql(query).fetchall()[0][0]

    # DuckDB's first query in a process starts its threads and its Arrow scan (about
    # 0.1 s): done before the clock for every side, on a table and on a C stream.
    warm = pa.table({"id": [1], "x": [1.0]})
    joined_rows(warm)
    joined_rows(TableStreams(warm) if impl == "pyarrow" else StreamCache(once(warm.to_batches())))

    def run():
        source = once(batches)
        assert joined_rows(source.read_all() if impl == "pyarrow" else StreamCache(source)) == rows

    result = {"seconds": timed(run)}
    if impl == "pyarrow":
        # Context, after the clock and so both warm: the query again on the table, and on
        # the same table handed over as a plain C stream (a fresh pyarrow export per
        # scan, nothing cached), the path DuckDB takes for any `__arrow_c_stream__` object.
        table = once(batches).read_all()
        result["warm_table_seconds"] = timed(lambda: joined_rows(table))
        result["warm_c_stream_seconds"] = timed(lambda: joined_rows(TableStreams(table)))
    return result


def bounded(impl: str, quick: bool) -> dict:
    chunk = 1 << 20  # 8 MiB float64 batches made on the fly: 4 GiB in all
    count = 16 if quick else 512
    schema = pa.schema([("x", pa.float64())])

    def produce():
        for i in range(count):
            yield pa.record_batch([pa.array(np.full(chunk, float(i)))], schema=schema)

    before = peak_rss_bytes()

    def run():
        source = pa.RecordBatchReader.from_batches(schema, produce())
        if impl == "pyarrow":
            rows = sum(b.num_rows for b in source)
        else:
            cache = StreamCache(source, max_readers=1)
            rows = sum(b.num_rows for b in cache.reader())
        assert rows == chunk * count

    seconds = timed(run)
    return {"seconds": seconds, "rss_growth_mib": (peak_rss_bytes() - before) / (1 << 20)}


def sliced(impl: str, quick: bool) -> dict:
    rows = 200_000 if quick else 17_500_000  # about 400 MiB with the three columns
    whole = pa.Table.from_batches(owned_batches(rows))
    whole = whole.combine_chunks()

    def run():
        source = whole.to_reader(max_chunksize=BATCH_ROWS)
        if impl == "pyarrow":
            table = source.read_all()
            for _ in range(3):
                assert replay_rows(table) == rows
        else:
            cache = StreamCache(source)
            for _ in range(3):
                assert replay_rows(cache) == rows

    try:
        return {"seconds": timed(run), "bytes": whole.nbytes}
    except MemoryError as err:
        return {"seconds": None, "error": f"MemoryError: {err}"[:200]}


def first_pass(columns: int):
    """The first pass over 1 563 batches of 64 rows with `columns` columns (see
    `tiny_columns`). pyarrow's side is its own round trip of the same source through the
    C stream interface, the floor of any cache outside pyarrow."""

    def workload(impl: str, quick: bool) -> dict:
        count = 100 if quick else 1_563
        batches = tiny_columns(count, columns)

        def run():
            if impl == "pyarrow":
                for _batch in pa.RecordBatchReader.from_stream(once(batches)):
                    pass
            else:
                for _batch in StreamCache(once(batches)):
                    pass

        seconds = timed(run)
        return {"seconds": seconds, "us_per_batch": seconds / count * 1e6}

    return workload


def proc_status_bytes(field: str, pid: int | str = "self") -> int:
    """A size field of /proc/PID/status (VmRSS, VmHWM, RssAnon, ...), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def peak_rss_bytes() -> int:
    """This process's peak RSS. Linux's `ru_maxrss` would hold the peak of the process
    that forked this one, from before its exec: VmHWM does not."""
    if sys.platform.startswith("linux"):
        return proc_status_bytes("VmHWM")
    import resource  # POSIX's: the other workloads run on Windows too

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # macOS: in bytes


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM, the peak RSS, to the current RSS


def rss_bytes() -> int:
    return proc_status_bytes("VmRSS")


def malloc_heap_bytes() -> int:
    """Bytes in use in glibc's malloc heap (mallinfo2): where arrow-rs's structs and
    pyarrow's per-array C++ objects live. pyarrow's buffers come from its own pool."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def one_row_batches(impl: str, quick: bool) -> dict:
    """Memory per cached one-row batch (3 columns: int64, float64, string): RSS growth of
    holding 200 000 of them, against pyarrow holding the same batches in a list, split
    between pyarrow's buffer pool, the malloc heap and the rest. Not timed."""
    import gc

    count = 20_000 if quick else 200_000
    schema = pa.schema([("id", pa.int64()), ("x", pa.float64()), ("s", pa.string())])

    def produce():
        for i in range(count):
            yield pa.record_batch(
                [pa.array([i]), pa.array([float(i)]), pa.array([f"s{i}"])], schema=schema)

    gc.collect()
    before = (rss_bytes(), pa.total_allocated_bytes(), malloc_heap_bytes())
    source = pa.RecordBatchReader.from_batches(schema, produce())
    if impl == "pyarrow":
        held = list(source)
    else:
        held = StreamCache(source)
        if hasattr(held, "ingest_all"):
            held.ingest_all()
        else:  # the reference has no ingest_all: one pass reads everything
            for _ in held:
                pass
    del source
    gc.collect()
    after = (rss_bytes(), pa.total_allocated_bytes(), malloc_heap_bytes())
    rss, pool, heap = (a - b for a, b in zip(after, before))
    del held  # measured while held
    return {
        "seconds": None,
        "bytes_per_batch": rss / count,
        "pool_bytes_per_batch": pool / count,
        "heap_bytes_per_batch": heap / count,
    }


def prefetch_pipeline(impl: str, quick: bool) -> dict:
    """A source and a consumer that each take 1 ms per batch. pyarrow's side is the longer
    of the two alone (the consumer over batches at hand); ours reads ahead with
    prefetch=8, so the two overlap; the reference, which cannot, takes their sum."""
    count = 20 if quick else 200
    schema = pa.schema([("x", pa.int64())])
    ready = [pa.record_batch({"x": [i]}) for i in range(count)]

    def produce():
        for batch in ready:
            time.sleep(0.001)
            yield batch

    def consume(batches) -> None:
        for _ in batches:
            time.sleep(0.001)

    if impl == "pyarrow":
        run = lambda: consume(ready)  # noqa: E731
    else:
        extra = {"prefetch": 8} if impl == "ours" else {}

        def run():
            cache = StreamCache(pa.RecordBatchReader.from_batches(schema, produce()), **extra)
            consume(cache)

    return {"seconds": timed(run)}


WORKLOADS = {
    "memory": memory,
    "disk": disk,
    "disk-ingest": disk_ingest,
    "tiny-batches": tiny_batches(1),
    "tiny-batches-3": tiny_batches(3),
    "tiny-batches-10": tiny_batches(10),
    "4-threads": four_threads,
    "duckdb-selfjoin": duckdb_selfjoin,
    "bounded": bounded,
    "sliced": sliced,
    "prefetch": prefetch_pipeline,
    "first-pass-1": first_pass(1),
    "first-pass-3": first_pass(3),
    "first-pass-10": first_pass(10),
    "one-row-batches": one_row_batches,
}


StreamCache = None  # imported in main(), before any clock starts


def main() -> None:
    global StreamCache
    parser = argparse.ArgumentParser()
    parser.add_argument("--impl", choices=["ours", "ref", "pyarrow"], required=True)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the workload this many times in this one process (a "
                             "notebook or a service) and report the median of the runs "
                             "after the first")
    args = parser.parse_args()
    if args.impl != "pyarrow":
        from batchcorder import StreamCache as imported

        StreamCache = imported
    runs = [WORKLOADS[args.workload](args.impl, args.quick) for _ in range(args.repeat)]
    result = runs[-1]
    if args.repeat > 1:
        steady = runs[1:]
        for key, value in runs[0].items():
            if isinstance(value, float):
                result[key] = statistics.median(r[key] for r in steady)
        result["first_seconds"] = runs[0].get("seconds")
    print(json.dumps({"impl": args.impl, "workload": args.workload, **result}))


if __name__ == "__main__":
    main()
