"""A training loop's data: three shuffled epochs over a single-use Parquet scan, read by
four worker processes through shards of one save (docs/training.md).

The scan runs once: the cache reads it as the first epoch needs it and saves it as it
goes; every worker of every epoch opens the save and reads its shard of that epoch's
order. Run it with ``python examples/training_loop.py``; ``make test`` checks what it
prints against docs/training.md.
"""

from __future__ import annotations

import tempfile
from multiprocessing import get_context
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batchcorder import StreamCache

BATCHES, ROWS, WORKERS, EPOCHS = 12, 4, 4, 3


class CountingScan:
    """The batches of a real Parquet scan, counting scans and batches as they are read."""

    def __init__(self, path: Path) -> None:
        self.path, self.scans, self.batches = path, 0, 0

    def __iter__(self):
        self.scans += 1
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=ROWS):
            self.batches += 1
            yield batch


def read_shard(save: str, seed: int, index: int) -> list[int]:
    """One worker's epoch: its shard of the seed's order, from the save (a new process)."""
    cache = StreamCache.open(save)
    reader = cache.reader(shuffle=seed, shard=(index, WORKERS))
    return [batch.column("batch")[0].as_py() for batch in reader]


def main(folder: Path) -> None:
    samples = pa.table({
        "batch": [b for b in range(BATCHES) for _ in range(ROWS)],
        "feature": [float(i) for i in range(BATCHES * ROWS)],
    })
    pq.write_table(samples, folder / "samples.parquet", row_group_size=ROWS)
    scan = CountingScan(folder / "samples.parquet")

    # The cache reads the scan once, saving it as it goes; the workers read the save.
    save = folder / "samples.save"
    cache = StreamCache(iter(scan), persist_path=save)
    cache.ingest_all()

    spawn = get_context("spawn")
    with spawn.Pool(WORKERS) as pool:
        for epoch in range(EPOCHS):
            shards = pool.starmap(read_shard, [(str(save), epoch, i) for i in range(WORKERS)])
            order = [batch for step in zip(*shards) for batch in step]
            assert sorted(order) == list(range(BATCHES)), "every batch once per epoch"
            print(f"epoch {epoch}: order {order}")
            for index, shard in enumerate(shards):
                print(f"  worker {index} read {shard}")
    assert scan.scans == 1 and scan.batches == BATCHES
    print(f"the Parquet file was read once: {scan.scans} scan, {scan.batches} batches, "
          f"for {EPOCHS} epochs x {WORKERS} workers")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="training-loop-") as tmp:
        main(Path(tmp))
