"""Random access (issue 30, item 3): ``cache[i]`` and ``cache.take(rows)`` on live streams,
under ``max_readers``, from threads and from another process, with every refusal a user
can meet. The type matrix (test_surfaces.py) reads every type case through both."""

from __future__ import annotations

import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import pyarrow as pa
import pytest

from batchcorder import (
    BatchEvictedError,
    CacheClosedError,
    CapacityError,
    OutOfRangeError,
    StreamCache,
    UpstreamError,
)

SCHEMA = pa.schema([("id", pa.int64()), ("word", pa.string())])


class Counted:
    """A single-use source of `batches` batches of `rows` rows (ids 0, 1, 2, ... over the
    stream), counting the batches handed out; `fail_at` raises there instead."""

    def __init__(self, batches: int, rows: int = 10, fail_at: int = -1) -> None:
        self.pulled = 0
        self._batches, self._rows, self._fail_at = batches, rows, fail_at

    def __iter__(self):
        for index in range(self._batches):
            if index == self._fail_at:
                raise RuntimeError(f"the feed broke at batch {index}")
            self.pulled += 1
            ids = list(range(index * self._rows, (index + 1) * self._rows))
            yield pa.record_batch([ids, [f"w{i}" for i in ids]], schema=SCHEMA)


def ids(batch: pa.RecordBatch) -> list:
    return batch.column("id").to_pylist()


def test_an_index_pulls_the_source_up_to_its_batch_and_no_further():
    source = Counted(6)
    cache = StreamCache(iter(source), schema=SCHEMA)
    assert source.pulled == 0
    assert ids(cache[2]) == list(range(20, 30))
    assert (source.pulled, cache.ingested_count) == (3, 3)
    assert ids(cache[np.int64(0)]) == list(range(10))  # any integer, NumPy's too
    assert source.pulled == 3
    assert cache[2].schema.equals(SCHEMA, check_metadata=True)


def test_a_negative_index_reads_the_whole_source_and_counts_from_the_end():
    source = Counted(4)
    cache = StreamCache(iter(source), schema=SCHEMA)
    assert ids(cache[-1]) == list(range(30, 40))
    assert source.pulled == 4 and cache.upstream_exhausted
    assert ids(cache[-4]) == ids(cache[0])
    with pytest.raises(IndexError, match=r"batch index -5 is out of range: the stream has 4 batches"):
        cache[-5]


def test_an_index_past_the_end_is_an_index_error_with_the_count():
    cache = StreamCache(pa.table({"x": [1, 2, 3]}).to_reader(max_chunksize=1))
    with pytest.raises(IndexError, match=r"batch index 3 is out of range: the stream has 3 batches") as err:
        cache[3]
    assert isinstance(err.value, OutOfRangeError) and isinstance(err.value, ValueError)
    with pytest.raises(IndexError, match="exceeds 2"):
        cache[1 << 64]


@pytest.mark.parametrize("index", ["0", 1.0, True, None, slice(0, 2)])
def test_an_index_that_is_not_an_integer_is_a_type_error(index):
    cache = StreamCache(pa.table({"x": [1, 2]}))
    with pytest.raises(TypeError, match="indices must be integers") as err:
        cache[index]
    assert "range(a, b)" in str(err.value) and "take" in str(err.value)
    assert cache.ingested_count == 0


def test_random_access_is_no_reader_under_max_readers():
    cache = StreamCache(pa.table({"x": list(range(6))}).to_reader(max_chunksize=2), max_readers=1)
    assert cache[1].column("x").to_pylist() == [2, 3]
    assert cache.take([5, 0]).column("x").to_pylist() == [5, 0]
    assert cache.stats().readers_created == 0
    assert pa.table(cache).column("x").to_pylist() == list(range(6))  # the one reader


def test_a_batch_every_reader_passed_is_evicted_and_says_so():
    cache = StreamCache(pa.table({"x": list(range(6))}).to_reader(max_chunksize=2), max_readers=1)
    assert pa.table(cache).num_rows == 6
    with pytest.raises(BatchEvictedError, match=r"batch 0 was evicted.*max_readers"):
        cache[0]
    with pytest.raises(BatchEvictedError, match=r"batch 2 was evicted"):
        cache.take([5])


def test_a_closed_cache_refuses_random_access():
    cache = StreamCache(pa.table({"x": [1, 2]}))
    kept = cache.take([1])
    cache.close()
    with pytest.raises(CacheClosedError):
        cache[0]
    with pytest.raises(CacheClosedError):
        cache.take([0])
    assert kept.column("x").to_pylist() == [2]  # what was handed out stays valid


def test_failures_reach_random_access_at_their_batch():
    cache = StreamCache(iter(Counted(5, fail_at=3)), schema=SCHEMA)
    assert ids(cache[2])[0] == 20
    with pytest.raises(UpstreamError, match="the feed broke at batch 3"):
        cache[3]
    with pytest.raises(UpstreamError):
        cache.take([35])
    halves = [pa.record_batch({"x": list(range(500))}) for _ in range(2)]  # 4000 bytes each
    small = StreamCache(iter(halves), memory_capacity=6000)
    assert len(small[0]) == 500
    with pytest.raises(CapacityError, match="memory_capacity"):
        small[1]


@pytest.mark.parametrize(
    "rows",
    [
        [37, 0, 12, 12, 39],
        np.array([37, 0, 12, 12, 39], dtype=np.int32),
        np.array([37, 0, 12, 12, 39], dtype=np.uint64),
        pa.array([37, 0, 12, 12, 39], pa.int16()),
        pa.chunked_array([[37, 0], [12, 12, 39]], pa.int64()),
        pa.array([99, 37, 0, 12, 12, 39, 98], pa.int64()).slice(1, 5),
        range(37, 40),
    ],
    ids=["list", "numpy-int32", "numpy-uint64", "pyarrow-int16", "chunked", "sliced", "range"],
)
def test_take_gives_the_rows_in_order_as_table_take_does(rows):
    cache = StreamCache(iter(Counted(4)), schema=SCHEMA)
    expected = pa.Table.from_batches(Counted(4), SCHEMA).take(pa.array(list(rows) if isinstance(rows, range) else rows))
    taken = cache.take(rows)
    taken.validate(full=True)
    assert taken.schema.equals(SCHEMA, check_metadata=True)
    assert pa.Table.from_batches([taken]).equals(expected)


def test_take_pulls_only_as_far_as_the_largest_row():
    source = Counted(10)
    cache = StreamCache(iter(source), schema=SCHEMA)
    assert ids(cache.take([25, 3, 11])) == [25, 3, 11]
    assert source.pulled == 3
    assert ids(cache.take([])) == [] and source.pulled == 3
    assert cache.take([]).schema.equals(SCHEMA)


@pytest.mark.parametrize(
    "rows, error, message",
    [
        ([3, -1], IndexError, r"negative row -1 \(at position 1\)"),
        ([40], IndexError, r"row 40 is out of range: the stream has 40 rows"),
        (pa.array([1, None]), ValueError, r"1 nulls \(the first at position 1\)"),
        ([1.5], TypeError, "must hold integers, got double"),
        ([True], TypeError, "must hold integers, got bool"),
        ("12", TypeError, "got str"),
        (12, TypeError, r"got int; for one batch by its index use cache\[i\]"),
        ([{"a": 1}], TypeError, "must hold integers"),
    ],
)
def test_take_refuses_what_table_take_refuses_and_says_why(rows, error, message):
    cache = StreamCache(iter(Counted(4)), schema=SCHEMA)
    with pytest.raises(error, match=message):
        cache.take(rows)


def test_take_merges_dictionaries_that_differ_between_batches():
    def batch(words, codes):
        dictionary = pa.DictionaryArray.from_arrays(pa.array(codes, pa.int8()), pa.array(words, pa.string()))
        return pa.record_batch([dictionary], names=["d"])

    batches = [
        batch(["red", "green"], [0, 1, 1, None]),
        batch(["blue", "red", "cyan"], [2, 0, 1]),
        batch([], []),
        batch(["green"], [0, 0]),
    ]
    cache = StreamCache(iter(batches), schema=batches[0].schema)
    rows = [8, 0, 6, 3, 5, 1, 4, 7, 2]
    taken = cache.take(rows)
    taken.validate(full=True)
    assert taken.schema.equals(batches[0].schema)
    expected = pa.Table.from_batches(batches).take(rows).column("d")
    assert taken.column("d").to_pylist() == expected.to_pylist()
    assert taken.column("d").to_pylist() == ["green", "red", "red", None, "blue", "green", "cyan", "green", "green"]
    assert ids_of_each_batch_intact(cache, batches)


def ids_of_each_batch_intact(cache: StreamCache, batches) -> bool:
    """Random access leaves the cached batches as they were: each equals its source."""
    return all(cache[i].equals(batch) for i, batch in enumerate(batches))


def test_threads_share_one_pass_over_the_source():
    source = Counted(50)
    cache = StreamCache(iter(source), schema=SCHEMA)
    errors, results = [], {}

    def work(seed: int) -> None:
        try:
            rows = np.random.default_rng(seed).permutation(500)
            results[seed] = (rows, ids(cache.take(rows)), ids(cache[seed * 7]))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for seed, (rows, taken, batch) in results.items():
        assert taken == rows.tolist()
        assert batch == list(range(seed * 70, seed * 70 + 10))
    assert source.pulled == 50


def take_from_a_save(path: str) -> tuple:
    """In another process: a batch and rows of the save at `path`."""
    with StreamCache.open(path) as cache:
        return ids(cache[3]), ids(cache.take([99, 0, 55])), cache.stats().readers_created


def test_an_opened_save_learns_its_rows_and_serves_another_process(tmp_path):
    with StreamCache(iter(Counted(10)), schema=SCHEMA) as cache:
        saved = cache.persist(tmp_path / "saved")
    with StreamCache.open(saved.path) as opened:
        assert ids(opened.take([99, 0])) == [99, 0]
        assert ids(opened[-1])[0] == 90
        with pytest.raises(IndexError, match="the stream has 100 rows"):
            opened.take([100])
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        batch, rows, readers = pool.submit(take_from_a_save, str(saved.path)).result(timeout=120)
    assert (batch[0], rows, readers) == (30, [99, 0, 55], 0)
