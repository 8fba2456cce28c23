"""prefetch=N: a background thread reads a Python source ahead of the readers."""

from __future__ import annotations

import threading
import time

import duckdb
import pyarrow as pa
import pytest

import batchcorder
from batchcorder import StreamCache

SCHEMA = pa.schema([("x", pa.int64())])


def eventually(done, seconds: float = 10.0) -> bool:
    """Wait until `done()` holds, at most `seconds`; a wait, not a measurement."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(0.002)
    return False


class Source:
    """A Python generator source that counts the batches it made, on which threads."""

    def __init__(self, batches: int, fail_at: int | None = None) -> None:
        self.made_on: list[str] = []  # the thread that made each batch
        self.batches, self.fail_at = batches, fail_at

    @property
    def made(self) -> int:
        return len(self.made_on)

    def reader(self) -> pa.RecordBatchReader:
        def produce():
            for i in range(self.batches):
                if i == self.fail_at:
                    raise RuntimeError(f"sensor {i} offline")
                self.made_on.append(threading.current_thread().name)
                yield pa.record_batch({"x": [i]})

        return pa.RecordBatchReader.from_batches(SCHEMA, produce())


def test_a_python_source_is_read_ahead_on_another_thread() -> None:
    source = Source(100)
    cache = StreamCache(source.reader(), prefetch=4)
    assert "prefetch=4" in repr(cache)
    assert eventually(lambda: cache.ingested_count == 4), cache.ingested_count
    time.sleep(0.05)
    assert source.made == 4, "no further than 4 ahead of the readers"
    main = threading.current_thread().name
    assert main not in source.made_on, f"made on {source.made_on} before any reader"
    reader = cache.reader()
    assert [next(reader).column(0)[0].as_py() for _ in range(10)] == list(range(10))
    assert eventually(lambda: cache.ingested_count == 14)
    assert pa.table(cache).column("x").to_pylist() == list(range(100))
    assert source.made == 100


def test_an_error_reaches_readers_at_its_batch_with_its_type() -> None:
    source = Source(50, fail_at=6)
    cache = StreamCache(source.reader(), prefetch=20)
    assert eventually(lambda: cache.ingested_count == 6)
    for _ in range(2):
        reader = cache.reader()
        assert [next(reader).column(0)[0].as_py() for _ in range(6)] == list(range(6))
        with pytest.raises(RuntimeError, match="sensor 6 offline") as info:
            next(reader)
        assert isinstance(info.value, batchcorder.UpstreamError)


def test_duckdb_scans_a_prefetching_cache_twice() -> None:
    source = Source(300)
    cache = StreamCache(source.reader(), prefetch=16)
    for _ in range(2):
        assert duckdb.sql("SELECT count(*), sum(x) FROM cache").fetchall() == [(300, sum(range(300)))]
    assert source.made == 300


def test_close_stops_reading_ahead() -> None:
    source = Source(10_000)
    cache = StreamCache(source.reader(), prefetch=8)
    assert eventually(lambda: cache.ingested_count == 8)
    cache.close()
    made = source.made
    time.sleep(0.05)
    assert source.made == made <= 9
    with pytest.raises(batchcorder.CacheClosedError):
        cache.reader()


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-1, ValueError), (1.5, TypeError)])
def test_prefetch_must_be_a_positive_int(value, error) -> None:
    reader = pa.table({"x": [1]}).to_reader()
    with pytest.raises(error, match="prefetch"):
        StreamCache(reader, prefetch=value)
    assert reader.read_all().num_rows == 1, "a refused option leaves the source unread"
