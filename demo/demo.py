"""batchcorder demo: cache a single-use Parquet scan once, replay it through DuckDB and pyarrow.

Run with `make demo`. Writes a Parquet file of a few million rows to a temporary
directory and opens it as a once-only stream. On the bare stream, a second DuckDB query
fails: the first consumed it. Through a StreamCache, two DuckDB queries and a pyarrow
table all see every row, and the file is read exactly once. Ends with what to try next.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import batchcorder

ROWS = 3_000_000


def write_parquet(path: Path) -> None:
    rng = np.random.default_rng(7)
    table = pa.table(
        {
            "id": np.arange(ROWS, dtype=np.int64),
            "price": rng.uniform(1, 100, ROWS),
            "symbol": pa.array(rng.choice(["AAPL", "MSFT", "NVDA", "ARM"], ROWS)),
        }
    )
    pq.write_table(table, path, row_group_size=250_000)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trades.parquet"
        started = time.perf_counter()
        write_parquet(path)
        print(f"wrote {ROWS:,} rows to {path.name} in {time.perf_counter() - started:.2f} s")

        parquet = pq.ParquetFile(path)
        bare = pa.RecordBatchReader.from_batches(
            parquet.schema_arrow, parquet.iter_batches(batch_size=65_536)
        )
        first = duckdb.sql("SELECT count(*) FROM bare").fetchall()[0][0]
        print(f"bare stream, first DuckDB query: {first:,} rows")
        try:
            duckdb.sql("SELECT count(*) FROM bare").fetchall()
            # DuckDB before 2.0 (the newest on Python 3.10) answers it from its own copy.
            print(f"bare stream, second DuckDB query: DuckDB {duckdb.__version__} answered "
                  "it too; DuckDB 2 refuses a consumed stream")
        except duckdb.Error as err:
            print(f"bare stream, second DuckDB query fails: {str(err).split('. ')[0]}")

        batches_read = 0

        def scan_once():  # the file's batches, counted as they are read
            nonlocal batches_read
            for batch in parquet.iter_batches(batch_size=65_536):
                batches_read += 1
                yield batch

        # A generator is a source as it is: its first batch is read now, for the schema.
        with batchcorder.StreamCache(scan_once()) as trades:
            print(f"cached lazily: {trades!r}")

            started = time.perf_counter()
            joined = duckdb.sql(
                "SELECT count(*) FROM trades a JOIN trades b ON a.id = b.id"
            ).fetchall()[0]
            print(
                f"DuckDB self-join over the cache: {joined[0]:,} rows matched in "
                f"{time.perf_counter() - started:.2f} s (this first query reads the file)"
            )

            started = time.perf_counter()
            table = pa.table(trades)
            print(
                f"pyarrow table from the cache: {table.num_rows:,} rows in "
                f"{(time.perf_counter() - started) * 1000:.2f} ms (no copy: its arrays are "
                "the cached buffers)"
            )

            started = time.perf_counter()
            per_symbol = duckdb.sql(
                "SELECT symbol, count(*) AS n FROM trades GROUP BY symbol ORDER BY symbol"
            ).fetchall()
            print(
                f"DuckDB group-by over the cache: {per_symbol} in "
                f"{(time.perf_counter() - started) * 1000:.0f} ms"
            )

            stats = trades.stats()
            print(
                f"the file was read once: {batches_read} batches pulled from it, "
                f"{stats.batches_ingested} cached; {stats.readers_created} readers created "
                f"over the cache (one per scan an engine opened); "
                f"{stats.memory_bytes / 2**20:.1f} MiB held in memory"
            )
            assert joined[0] == ROWS and table.num_rows == ROWS
            assert batches_read == stats.batches_ingested
        parquet.close()  # Windows deletes no file that is still open, the folder's included

    print(
        "\nWhat to try next:\n"
        "  - a generator, a ParquetFile or a pyarrow dataset is a source as it is: "
        "StreamCache(pq.ParquetFile(path))\n"
        "  - a stream larger than memory: StreamCache(source, disk_path=..., "
        "disk_capacity=...), or max_readers=N to drop what every reader has passed\n"
        "  - keep it for other processes: cache.persist(path), then "
        "StreamCache.open(path) anywhere\n"
        "  - serve it to other machines: batchcorder-flight trades.parquet "
        "(pip install 'batchcorder[flight]')\n"
        "  - the README's quickstart, and help(batchcorder.StreamCache)"
    )


if __name__ == "__main__":
    main()
