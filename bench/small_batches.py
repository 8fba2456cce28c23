"""Small batches read from a save (issue 30, item 4): per batch, ours against
`pa.memory_map` + `ipc.open_file` reading the same data file.

    python bench/small_batches.py [--quick] [--out FILE] [--batches N] [--rounds N] [--before DIR]

Two saves of N batches (10 and 64 rows; five columns: int64, float64, int32, a short
string and a dictionary-free category string), opened with the default verification as
every process after the first finds them (the validation noted in validated.json). Each
side opens the file and reads every batch, in two forms:

- `iterate`: Python iteration of the batches (`for b in cache.reader()`; pyarrow's
  `reader.get_batch(i)` for every i), touching each batch's `num_rows`;
- `read_all`: one table (`pa.RecordBatchReader.from_stream(cache).read_all()`;
  pyarrow's `reader.read_all()`).

`fresh`: each round in a new process (imports before the clock); `long-lived`: every
round in one process, each opening the save again. Rounds interleave the sides; figures
are medians per batch. The reference release (batchcorder 0.1.3) has no saves, so it has
no side here. `--before DIR` adds another build of batchcorder installed in DIR (`pip
install --target DIR <wheel>`), in fresh processes only (one process imports one build).
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

HERE = Path(__file__).resolve().parent
SIDES = ["pyarrow", "ours"]
FORMS = ["iterate", "read_all"]


def batches(count: int, rows: int):
    """`count` batches of `rows` rows, made as they are asked for."""
    rng = np.random.default_rng(5)
    names = np.array([f"user-{i:05d}" for i in range(997)], dtype=object)
    kinds = np.array(["click", "view", "purchase", "refund"], dtype=object)
    for b in range(count):
        ids = np.arange(b * rows, (b + 1) * rows)
        yield pa.record_batch({
            "id": ids,
            "x": rng.random(rows),
            "n": rng.integers(0, 1000, rows).astype(np.int32),
            "name": pa.array(names[ids % len(names)], pa.string()),
            "kind": pa.array(kinds[ids % len(kinds)], pa.string()),
        })


def make_save(path: Path, count: int, rows: int) -> None:
    from batchcorder import StreamCache

    first = next(batches(1, rows))
    reader = pa.RecordBatchReader.from_batches(first.schema, batches(count, rows))
    with StreamCache(reader) as cache:
        cache.persist(path)


def read_once(side: str, form: str, path: str) -> tuple[float, int]:
    """Seconds to open the save at `path` and read every batch, and the rows read."""
    started = time.perf_counter()
    if side == "pyarrow":
        with pa.memory_map(os.path.join(path, "data.arrow")) as source:
            reader = pa.ipc.open_file(source)
            if form == "iterate":
                rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
            else:
                rows = reader.read_all().num_rows
    else:
        from batchcorder import StreamCache

        with StreamCache.open(path) as cache:
            if form == "iterate":
                rows = sum(batch.num_rows for batch in cache.reader())
            else:
                rows = pa.RecordBatchReader.from_stream(cache).read_all().num_rows
    return time.perf_counter() - started, rows


def warm_up(path: str) -> None:
    """Load what the first call of each side loads (cffi's types, pyarrow's IPC reader)."""
    for side in SIDES:
        for form in FORMS:
            read_once(side, form, path)


def fresh(side: str, form: str, path: str, before: str | None = None) -> dict:
    code = (
        "import sys; sys.path.insert(0, sys.argv[4]); import small_batches as s, json, batchcorder; "
        "print(json.dumps(s.read_once(sys.argv[1], sys.argv[2], sys.argv[3])))"
    )
    env = dict(os.environ, PYTHONPATH=before) if before else None
    out = subprocess.run([sys.executable, "-c", code, "ours" if before else side, form, path,
                          str(HERE)], capture_output=True, text=True, check=True, env=env).stdout
    seconds, rows = json.loads(out)
    return {"seconds": seconds, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(HERE.parent / "build" / "bench-small-batches.md"))
    parser.add_argument("--batches", type=int, help="batches per save (default 10 000)")
    parser.add_argument("--rounds", type=int, help="rounds per figure (default 9, 3 quick)")
    parser.add_argument("--before", help="a directory holding another build of batchcorder")
    args = parser.parse_args()
    count = args.batches or (1000 if args.quick else 10_000)
    rounds = args.rounds or (3 if args.quick else 9)
    work = HERE.parent / "build" / "bench-small-batches"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    saves = {}
    for rows in (10, 64):
        saves[rows] = work / f"rows-{rows}"
        make_save(saves[rows], count, rows)
    # A process notes its validation once the data file is 3 s old: wait, then one full
    # read writes the note that later openers find.
    time.sleep(max(0.0, max(s.joinpath("data.arrow").stat().st_ctime for s in saves.values())
                   + 3.2 - time.time()))
    from batchcorder import StreamCache

    for save in saves.values():
        with StreamCache.open(save) as cache:
            for _ in cache:
                pass
        assert (save / "validated.json").exists(), "no validation note was written"
        with StreamCache.open(save) as cache:
            assert cache.stats().validation == "noted", cache.stats()
        warm_up(str(save))

    load_before = os.getloadavg()
    results: dict = {}
    for round_ in range(rounds):
        for rows, save in saves.items():
            for form in FORMS:
                for side in SIDES:
                    fresh_run = fresh(side, form, str(save))
                    seconds, rows_read = read_once(side, form, str(save))
                    assert fresh_run["rows"] == rows_read == rows * count
                    results.setdefault((rows, form, side, "fresh"), []).append(fresh_run["seconds"])
                    results.setdefault((rows, form, side, "long-lived"), []).append(seconds)
                if args.before:
                    before_run = fresh("before", form, str(save), args.before)
                    assert before_run["rows"] == rows * count
                    results.setdefault((rows, form, "before", "fresh"), []).append(
                        before_run["seconds"])
        print(f"round {round_ + 1}/{rounds} done", file=sys.stderr)

    def per_batch_us(key) -> float:
        return statistics.median(results[key]) / count * 1e6

    lines = [
        f"# Small batches from a save ({count} batches per save, median of {rounds} rounds)",
        "",
        "| rows per batch | read form | process | pyarrow us/batch | ours us/batch | ours / pyarrow "
        "| before us/batch | before / pyarrow |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rows in saves:
        for form in FORMS:
            for process in ("fresh", "long-lived"):
                theirs = per_batch_us((rows, form, "pyarrow", process))
                ours = per_batch_us((rows, form, "ours", process))
                before = "| - | - |"
                if (rows, form, "before", process) in results:
                    then = per_batch_us((rows, form, "before", process))
                    before = f"| {then:.2f} | {then / theirs:.2f}x |"
                lines.append(f"| {rows} | {form} | {process} | {theirs:.2f} | {ours:.2f} "
                             f"| {ours / theirs:.2f}x {before}")
    lines += [
        "",
        "Target: ours at most 1.5x pyarrow per batch, for both batch sizes, fresh and "
        "long-lived. Each figure: open the save, then read every batch (the reference "
        "release 0.1.3 has no saves: no side).",
        "",
        f"Load average (1 min) before the rounds {load_before[0]:.2f}, after them "
        f"{os.getloadavg()[0]:.2f}, on {os.cpu_count()} cores."
        + (f" `before`: the build in {args.before}." if args.before else ""),
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
