"""Persisted caches across processes (issue 18): N worker processes replay one save,
against the same processes reading the same Arrow file through `pa.memory_map`; and the
time to open a save of 10 000 batches.

    python bench/processes.py [--quick] [--out FILE] [--before DIR] [--rounds N]

`ours` opens with the default verification (checksums only for a data file modified
since its save: not this one) a save whose validation a process already noted
(validated.json), as for every process after the first that reads a save; `ours-first`
deletes the note before its round, so that every worker validates in full (the UTF-8
pass included) as the first processes to read a new save do; `ours-verify-always`
checks every batch's checksum. `--before DIR` adds the same two
sides for another build of batchcorder installed in DIR (`pip install --target DIR
<wheel>`), interleaved with the others: a before-and-after in one run.
Workers are fresh processes that import everything, then wait until all have, and start
their timed part (open, read every batch, sum its columns) together; each reports that
part's wall-clock span, CPU time and peak RSS growth. Total time is from the first
worker's start to the last one's end; CPU is the sum over the workers. Rounds
interleave the sides; the figures are medians. The page cache is warm for both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workloads import generated_batches, proc_status_bytes, reset_peak_rss  # bench/ is the script's folder

HERE = Path(__file__).resolve().parent
WORKERS = 4


def consume(batches) -> int:
    """What a replaying worker does with each batch: touch every numeric value."""
    total = 0
    for batch in batches:
        for column in batch.columns:
            if pa.types.is_string(column.type):
                total += pc.sum(pc.binary_length(column)).as_py() or 0
            else:
                total += int(pc.sum(column).as_py() or 0)
    return total


def worker(side: str, path: str) -> None:
    import batchcorder  # noqa: F401 - imported before the clock, as pyarrow is

    consume([pa.record_batch({"i": [1], "s": ["a"]})])  # load the compute kernels first
    reset_peak_rss()
    start_rss = proc_status_bytes("VmRSS") / (1 << 20)
    print("ready", flush=True)
    sys.stdin.readline()  # the go, once every worker has imported
    start, start_cpu = time.time(), time.process_time()
    if side == "mmap":
        with pa.memory_map(os.path.join(path, "data.arrow")) as source:
            reader = pa.ipc.open_file(source)
            total = consume(reader.get_batch(i) for i in range(reader.num_record_batches))
    else:
        from batchcorder import StreamCache

        verify = True if side.endswith("verify-always") else None
        with StreamCache.open(path, verify=verify) as cache:
            total = consume(cache)
    end, cpu = time.time(), time.process_time() - start_cpu
    peak = proc_status_bytes("VmHWM") / (1 << 20)
    print(json.dumps({"start": start, "end": end, "cpu": cpu, "rss_growth_mib": peak - start_rss,
                      "sum": total}))


def make_save(path: Path, gib: float) -> pa.Schema:
    from batchcorder import StreamCache

    rows_per_batch = 1 << 16
    bytes_per_row = 8 + 8 + 8 + 4 + 12  # int64, float64, int64, string offsets + ~12 chars
    batches = int(gib * (1 << 30) / (bytes_per_row * rows_per_batch))

    def produce():
        return generated_batches(batches, rows_per_batch)

    first = next(produce())
    reader = pa.RecordBatchReader.from_batches(first.schema, produce())
    started = time.perf_counter()
    saved = StreamCache(reader, max_readers=1).persist(path)
    took = time.perf_counter() - started
    size = os.path.getsize(path / "data.arrow")
    print(f"saved {saved.batches} batches, {size / (1 << 30):.2f} GiB in {took:.1f} s", file=sys.stderr)
    return first.schema


def run_workers(side: str, path: Path, before: str | None) -> dict:
    if side == "ours-first":
        (path / "validated.json").unlink(missing_ok=True)
    command = [sys.executable, __file__, "--worker", side, str(path)]
    # numpy's OpenBLAS threads spin for a while after import; on 2 cores, four workers'
    # spinning threads would take turns from the timed parts, on either side.
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    if side.startswith("before"):
        env["PYTHONPATH"] = before
    procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env=env)
             for _ in range(WORKERS)]
    # Imports take longer than the timed part; workers whose clocks ran while others
    # imported would time the imports' contention, not the reads'.
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{side} worker failed before its timed part")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{side} worker failed")
        results.append(json.loads(out))
    assert len({r["sum"] for r in results}) == 1, results
    return {
        "seconds": max(r["end"] for r in results) - min(r["start"] for r in results),
        "cpu_seconds": sum(r["cpu"] for r in results),
        "rss_growth_mib": sum(r["rss_growth_mib"] for r in results),
        "sum": results[0]["sum"],
    }


def open_times(path: Path, fresh_runs: int) -> tuple[float, float]:
    """Median ms to open a save: in this (long-lived) process, and in fresh processes."""
    from batchcorder import StreamCache

    inside = []
    for _ in range(21):
        started = time.perf_counter()
        StreamCache.open(path).close()
        inside.append((time.perf_counter() - started) * 1000)
    code = (
        "import time, sys; from batchcorder import StreamCache; t = time.perf_counter(); "
        "StreamCache.open(sys.argv[1]).close(); print((time.perf_counter() - t) * 1000)"
    )
    fresh = [
        float(subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                             text=True, check=True).stdout)
        for _ in range(fresh_runs)
    ]
    return statistics.median(inside), statistics.median(fresh)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", nargs=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE.parent / "build" / "bench-processes.md"))
    parser.add_argument("--before", help="a directory holding another build of batchcorder")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 7, 1 quick)")
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    from batchcorder import StreamCache

    work = HERE.parent / "build" / "bench-processes"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    gib = 0.0625 if args.quick else 2.0
    save = work / "big"
    make_save(save, gib)
    data_bytes = os.path.getsize(save / "data.arrow")
    subprocess.run(["cat", str(save / "data.arrow")], stdout=subprocess.DEVNULL, check=True)
    # A process notes its validation only once the data file is 3 s old; one untimed
    # round then writes the note that `ours` finds.
    time.sleep(max(0.0, (save / "data.arrow").stat().st_ctime + 3.2 - time.time()))
    run_workers("ours", save, None)
    assert (save / "validated.json").exists()

    rounds = args.rounds or (1 if args.quick else 7)
    sides = ["mmap", "ours", "ours-first", "ours-verify-always"]
    if args.before:
        sides += ["before", "before-verify-always"]
    results: dict[str, list[dict]] = {side: [] for side in sides}
    load_before = os.getloadavg()
    for round_ in range(rounds):
        for side in sides:
            results[side].append(run_workers(side, save, args.before))
        print(f"round {round_ + 1}/{rounds} done", file=sys.stderr)

    small = work / "small"
    table = pa.table({"id": np.arange(100_000), "x": np.random.default_rng(1).random(100_000),
                      "s": pc.cast(pa.array(np.arange(100_000)), pa.string())})
    StreamCache(table.to_reader(max_chunksize=10)).persist(small)
    inside_ms, fresh_ms = open_times(small, 3 if args.quick else 11)

    med = {side: {k: statistics.median(r[k] for r in results[side])
                  for k in ("seconds", "cpu_seconds", "rss_growth_mib")}
           for side in sides}
    budget = 0.10 * WORKERS * data_bytes / (1 << 20)
    lines = [
        f"# Persisted caches across processes ({WORKERS} workers, "
        f"{data_bytes / (1 << 30):.2f} GiB save, median of {rounds} rounds)",
        "",
        "| side | total s | vs pa.memory_map | CPU s, all workers | vs pa.memory_map "
        "| sum of RSS growth MiB |",
        "|---|---|---|---|---|---|",
    ]
    for side in sides:
        m = med[side]
        lines.append(f"| {side} | {m['seconds']:.3f} | {m['seconds'] / med['mmap']['seconds']:.2f}x "
                     f"| {m['cpu_seconds']:.3f} | {m['cpu_seconds'] / med['mmap']['cpu_seconds']:.2f}x "
                     f"| {m['rss_growth_mib']:.0f} |")
    lines += [
        "",
        f"Targets: total at most 1.0x of pa.memory_map (issue 30); RSS growth under {budget:.0f} MiB "
        f"(10% of {WORKERS} x the data).",
        "",
        f"Load average (1 min) before the rounds {load_before[0]:.2f}, after them "
        f"{os.getloadavg()[0]:.2f}, on {os.cpu_count()} cores."
        + (f" `before`: the build in {args.before}." if args.before else ""),
        "",
        f"Opening a save of 10 000 batches: {inside_ms:.2f} ms in a long-lived process, "
        f"{fresh_ms:.2f} ms in a fresh one (median; target under 10 ms).",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
