"""Caches served over Arrow Flight (issue 19): 16 concurrent remote readers of a ~1 GiB
stream on loopback, against pyarrow.flight serving the same data from a `pa.Table`; the
first-byte latency of DoGet; and the server's memory while 16 clients read at different
speeds under `max_readers`.

    python bench/flight.py [--quick] [--out FILE]

Every sample starts a fresh server process and a fresh client process. The client
process runs 16 threads, each with its own connection, that start together and read
every batch (counting rows and summing one column); total time is from their common
start to the last one's end. Before that, one client alone measures the first-byte
latency: DoGet until the first batch arrives, then cancel (11 times; median). Rounds
interleave the sides; the figures are medians.

Sides:
- `pyarrow`: a minimal `FlightServerBase` whose DoGet returns `RecordBatchStream(table)`.
- `ours`: `CacheServer` over a `StreamCache` of the same table, ingested before the
  clock (every DoGet a reader of the cache).
- `ours-bounded` (memory only): a `StreamCache(max_readers=16)` over a source generated
  batch by batch as the readers ask (no table anywhere), its 16 readers paced at
  different speeds; the server's RSS is sampled from outside (VmRSS every 20 ms; VmHWM
  after a reset once the server is up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from workloads import generated_batches, proc_status_bytes  # bench/ is the script's folder

HERE = Path(__file__).resolve().parent
READERS = 16
ROWS_PER_BATCH = 1 << 16


# -- the data -----------------------------------------------------------------------------


def batch_count(gib: float) -> int:
    bytes_per_row = 8 + 8 + 8 + 4 + 12  # int64, float64, int64, string offsets + ~12 chars
    return max(1, int(gib * (1 << 30) / (bytes_per_row * ROWS_PER_BATCH)))


def generate(batches: int):
    """The stream: batches of an id, two numbers and a string, made as they are asked for."""
    return generated_batches(batches, ROWS_PER_BATCH)


def schema() -> pa.Schema:
    return next(generate(1)).schema


# -- the server process -------------------------------------------------------------------


def serve(side: str, gib: float) -> None:
    """Serve one side until stdin closes; print the location once ready."""
    import pyarrow.flight as flight

    from batchcorder import StreamCache
    from batchcorder.flight import CacheServer

    batches = batch_count(gib)
    cache = None
    if side == "pyarrow":
        table = pa.Table.from_batches(list(generate(batches)))

        class TableServer(flight.FlightServerBase):
            def do_get(self, context, ticket):
                return flight.RecordBatchStream(table)

        server = TableServer("grpc://127.0.0.1:0")
        location = f"grpc://127.0.0.1:{server.port}"
    else:
        if side == "ours":
            table = pa.Table.from_batches(list(generate(batches)))
            cache = StreamCache(table.to_reader())
            cache.ingest_all()
        else:  # ours-bounded
            cache = StreamCache(pa.RecordBatchReader.from_batches(schema(), generate(batches)),
                                max_readers=READERS)
        server = CacheServer({"data": cache})
        location = server.location
    peak_cache, peak_pool = [0], [0]
    stop = threading.Event()

    def watch_cache() -> None:
        while cache is not None and not stop.wait(0.02):
            peak_cache[0] = max(peak_cache[0], cache.stats().memory_bytes)
            peak_pool[0] = max(peak_pool[0], pa.total_allocated_bytes())

    watcher = threading.Thread(target=watch_cache, daemon=True)
    watcher.start()
    print(json.dumps({"location": location}), flush=True)
    sys.stdin.read()  # until the orchestrator closes it
    stop.set()
    watcher.join()
    print(json.dumps({"peak_cache_mib": peak_cache[0] / (1 << 20),
                      "peak_pool_mib": peak_pool[0] / (1 << 20)}), flush=True)
    server.shutdown()


# -- the client process -------------------------------------------------------------------


def first_byte_ms(location: str, probes: int) -> list[float]:
    import pyarrow.flight as flight

    from batchcorder.flight import ticket

    client = flight.connect(location)
    times = []
    for _ in range(probes):
        started = time.perf_counter()
        reader = client.do_get(ticket("data"))
        reader.read_chunk()
        times.append((time.perf_counter() - started) * 1000)
        reader.cancel()
    client.close()
    return times


def read_concurrently(location: str, pace_ms: float, spread: float) -> dict:
    """16 threads, one connection each, read every batch; thread i waits for a period of
    pace_ms * (1 + spread * i / 15) per batch (nothing when pace_ms is 0)."""
    import pyarrow.flight as flight

    from batchcorder.flight import ticket

    clients = [flight.connect(location) for _ in range(READERS)]
    start = threading.Barrier(READERS + 1)
    results: list[dict] = [{} for _ in range(READERS)]

    def read(index: int) -> None:
        period = pace_ms / 1000 * (1 + spread * index / (READERS - 1))
        start.wait()
        began = time.perf_counter()
        rows = total = 0
        next_at = began
        for chunk in clients[index].do_get(ticket("data")):
            rows += chunk.data.num_rows
            total += pc.sum(chunk.data.column("id")).as_py()
            if period:
                next_at += period
                time.sleep(max(0.0, next_at - time.perf_counter()))
        results[index] = {"began": began, "ended": time.perf_counter(), "rows": rows, "sum": total}

    threads = [threading.Thread(target=read, args=(i,)) for i in range(READERS)]
    for thread in threads:
        thread.start()
    start.wait()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    assert len({(r["rows"], r["sum"]) for r in results}) == 1, results
    return {
        "seconds": max(r["ended"] for r in results) - min(r["began"] for r in results),
        "fastest": min(r["ended"] - r["began"] for r in results),
        "rows": results[0]["rows"],
        "sum": results[0]["sum"],
    }


def clients(location: str, probes: int, pace_ms: float, spread: float) -> None:
    latency = first_byte_ms(location, probes) if probes else []
    result = read_concurrently(location, pace_ms, spread)
    print(json.dumps({**result, "first_byte_ms": latency}), flush=True)


# -- the orchestrator ---------------------------------------------------------------------


def sample(side: str, gib: float, probes: int, pace_ms: float = 0.0, spread: float = 0.0) -> dict:
    """One fresh server and one fresh client process: the client's figures and the
    server's memory."""
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", side, str(gib)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        location = json.loads(server.stdout.readline())["location"]
        base_rss = proc_status_bytes("VmRSS", server.pid) // 1024
        with open(f"/proc/{server.pid}/clear_refs", "w") as refs:
            refs.write("5")  # VmHWM := VmRSS, so the peak is the serving's own
        peak_rss = [base_rss]
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.02):
                peak_rss[0] = max(peak_rss[0], proc_status_bytes("VmRSS", server.pid) // 1024)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        command = [sys.executable, __file__, "--clients", location, str(probes), str(pace_ms), str(spread)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        done.set()
        watcher.join()
        hwm = proc_status_bytes("VmHWM", server.pid) // 1024
        server.stdin.close()
        extra = json.loads(server.stdout.readline())
        server.wait(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    result = json.loads(out)
    result.update(extra)
    result["base_rss_mib"] = base_rss / 1024
    result["rss_growth_mib"] = (max(hwm, peak_rss[0]) - base_rss) / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", nargs=2)
    parser.add_argument("--clients", nargs=4)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE.parent / "build" / "bench-flight.md"))
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], float(args.serve[1]))
        return
    if args.clients:
        location, probes, pace, spread = args.clients
        clients(location, int(probes), float(pace), float(spread))
        return

    gib = 0.0625 if args.quick else 1.0
    rounds = 1 if args.quick else 5
    batches = batch_count(gib)
    data_mib = batches * ROWS_PER_BATCH * 40 / (1 << 20)
    sides = ["pyarrow", "ours"]
    results: dict[str, list[dict]] = {side: [] for side in sides}
    for round_ in range(rounds):
        for side in sides:
            results[side].append(sample(side, gib, probes=11))
        print(f"round {round_ + 1}/{rounds}: "
              + ", ".join(f"{s} {results[s][-1]['seconds']:.2f} s" for s in sides), file=sys.stderr)
    assert len({(r["rows"], r["sum"]) for side in sides for r in results[side]}) == 1

    # Paced readers: the fastest takes about pace x batches, the slowest 1 + spread times that.
    pace_ms, spread = (2.0, 0.2) if args.quick else (15.0, 0.2)
    bounded = []
    for round_ in range(1 if args.quick else 3):
        bounded.append(sample("ours-bounded", gib, probes=0, pace_ms=pace_ms, spread=spread))
        print(f"bounded {round_ + 1}: growth {bounded[-1]['rss_growth_mib']:.0f} MiB", file=sys.stderr)

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side])

    def latency(side: str) -> float:
        return statistics.median(t for r in results[side] for t in r["first_byte_ms"])

    ratio = med("ours", "seconds") / med("pyarrow", "seconds")
    lines = [
        f"# Caches over Arrow Flight ({READERS} concurrent remote readers, {data_mib:.0f} MiB "
        f"in {batches} batches of {ROWS_PER_BATCH} rows, loopback, median of {rounds} rounds)",
        "",
        "| side | total s | vs pyarrow | GiB/s to all readers | first byte ms (alone) "
        "| server RSS MiB: ready / growth while serving |",
        "|---|---|---|---|---|---|",
    ]
    for side in sides:
        seconds = med(side, "seconds")
        lines.append(
            f"| {side} | {seconds:.2f} | {seconds / med('pyarrow', 'seconds'):.2f}x "
            f"| {READERS * data_mib / 1024 / seconds:.2f} | {latency(side):.2f} "
            f"| {med(side, 'base_rss_mib'):.0f} / {med(side, 'rss_growth_mib'):.0f} |"
        )

    def spread_of(key: str) -> str:
        values = sorted(r[key] for r in bounded)
        return f"{statistics.median(values):.0f} ({values[0]:.0f}-{values[-1]:.0f})"

    lines += [
        "",
        f"Target: total within 1.1x of pyarrow: {'met' if ratio <= 1.1 else 'MISSED'} ({ratio:.2f}x).",
        "",
        f"Bounded fan-out: `max_readers={READERS}` over a source generated as it is read "
        f"({data_mib:.0f} MiB, never held whole), {READERS} readers paced from {pace_ms:g} "
        f"to {pace_ms * (1 + spread):g} ms per batch, median (range) of {len(bounded)} runs:",
        "",
        f"- server RSS when ready: {spread_of('base_rss_mib')} MiB; growth while serving: "
        f"{spread_of('rss_growth_mib')} MiB",
        f"- the cache's own peak (`memory_bytes`): {spread_of('peak_cache_mib')} MiB; "
        f"pyarrow's pool peak: {spread_of('peak_pool_mib')} MiB",
        f"- slowest reader's time over the fastest's: "
        f"{statistics.median(r['seconds'] / r['fastest'] for r in bounded):.2f}; "
        f"total {statistics.median(r['seconds'] for r in bounded):.1f} s",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
