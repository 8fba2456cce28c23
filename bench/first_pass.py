"""The first pass over 1 563 batches of 64 rows, ours and pyarrow's C round trip, in one
process: for profiles, whose counts do not depend on the machine's load.

    python bench/first_pass.py COLUMNS ROUNDS [ours|pyarrow|both]
    valgrind --tool=callgrind python bench/first_pass.py 3 2 ours

Prints the median microseconds per batch of each side. Under callgrind, read the
inclusive count of pyarrow's `ReadNext` divided by the batches read (1 563 x ROUNDS).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workloads import once, tiny_columns  # noqa: E402

from batchcorder import StreamCache  # noqa: E402


def main() -> None:
    columns, rounds = int(sys.argv[1]), int(sys.argv[2])
    which = sys.argv[3] if len(sys.argv) > 3 else "both"
    batches = tiny_columns(1_563, columns)

    def ours() -> None:
        for _ in StreamCache(once(batches)):
            pass

    def pyarrow() -> None:
        for _ in pa.RecordBatchReader.from_stream(once(batches)):
            pass

    sides = {"ours": ours, "pyarrow": pyarrow}
    if which != "both":
        sides = {which: sides[which]}
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, run in sides.items():
            start = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - start) / len(batches) * 1e6)
    for name, values in samples.items():
        print(f"{name}: {statistics.median(values):.2f} us per batch (median of {rounds})")


if __name__ == "__main__":
    main()
