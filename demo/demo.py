"""batchcorder demo: cache a single-use Parquet scan once, replay it through DuckDB and pyarrow.

Run with `make demo`. Writes a Parquet file of a few million rows to a temporary
directory and opens it as a once-only stream. On the bare stream, a second DuckDB query
fails: the first consumed it. Through a StreamCache, two DuckDB queries and a pyarrow
replay all see every row, and the file is read exactly once.
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
            raise AssertionError("a second query on a bare single-use stream worked")
        except duckdb.Error as err:
            print(f"bare stream, second DuckDB query fails: {str(err).splitlines()[0]}")

        batches_read = 0

        def scan_once():
            nonlocal batches_read
            for batch in parquet.iter_batches(batch_size=65_536):
                batches_read += 1
                yield batch

        once = pa.RecordBatchReader.from_batches(parquet.schema_arrow, scan_once())
        with batchcorder.StreamCache(once) as trades:
            print(f"cached lazily: {trades!r}")

            started = time.perf_counter()
            joined = duckdb.sql(
                "SELECT count(*), round(sum(a.price - b.price), 6) "
                "FROM trades a JOIN trades b ON a.id = b.id"
            ).fetchall()[0]
            print(
                f"DuckDB self-join: {joined[0]:,} rows, sum of differences {joined[1]} "
                f"in {time.perf_counter() - started:.2f} s"
            )

            started = time.perf_counter()
            table = pa.table(trades)
            print(f"pyarrow replay: {table.num_rows:,} rows in {time.perf_counter() - started:.3f} s")

            started = time.perf_counter()
            per_symbol = duckdb.sql(
                "SELECT symbol, count(*) AS n FROM trades GROUP BY symbol ORDER BY symbol"
            ).fetchall()
            print(f"DuckDB group-by replay: {per_symbol} in {time.perf_counter() - started:.3f} s")

            stats = trades.stats()
            print(
                f"Parquet batches read from the file: {batches_read} "
                f"(once: {batches_read == stats.batches_ingested}); "
                f"replays served from the cache: {stats.readers_created}; "
                f"memory held: {stats.memory_bytes / 2**20:.1f} MiB"
            )
            assert joined[0] == ROWS and table.num_rows == ROWS
            assert batches_read == stats.batches_ingested


if __name__ == "__main__":
    main()
