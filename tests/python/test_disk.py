"""The disk tier of StreamCache (issue 3), tested end to end through the Python package.

Everything here is real: files in a temporary directory, memory maps seen through
/proc/self/maps, threads, DuckDB queries, a file-size limit in a child process. No mocks.
"""

from __future__ import annotations

import decimal
import errno
import gc
import json
import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import threading
from typing import List, Optional, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from conftest import posix_only

from batchcorder import StreamCache

# The mappings are read from /proc/self/maps, which only Linux has.
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")

BIG = 1 << 30  # a disk_capacity that never binds
SEGMENT_RE = re.compile(r"^segment-(\d+)\.arrows$")


# -- helpers ----------------------------------------------------------------------------


def one_shot(batches: Sequence[pa.RecordBatch], schema: Optional[pa.Schema] = None) -> pa.RecordBatchReader:
    """A single-use stream over `batches`, fed by a generator (the upstream runs once)."""
    schema = schema if schema is not None else batches[0].schema
    return pa.RecordBatchReader.from_batches(schema, (b for b in batches))


def int_batches(count: int, rows: int, start: int = 0) -> List[pa.RecordBatch]:
    """`count` batches of one int64 column, `rows * 8` bytes each, values distinct."""
    return [
        pa.record_batch({"x": np.arange(start + i * rows, start + (i + 1) * rows, dtype=np.int64)})
        for i in range(count)
    ]


def mixed_table(rows: int = 60_000, seed: int = 1) -> pa.Table:
    """Several column types, with nulls, strings and lists."""
    rng = np.random.default_rng(seed)
    ints = np.arange(rows, dtype=np.int64)
    floats = pa.array(rng.random(rows), mask=rng.random(rows) < 0.1)
    strings = pa.array([f"s{i % 977}-{'x' * (i % 7)}" for i in range(rows)])
    lists = pa.ListArray.from_arrays(
        pa.array(np.arange(0, 2 * rows + 1, 2, dtype=np.int32)),
        pa.array(rng.integers(0, 1000, 2 * rows, dtype=np.int32)),
    )
    flags = pa.array(rng.random(rows) < 0.5)
    return pa.table({"i": ints, "f": floats, "s": strings, "l": lists, "b": flags})


def private_dirs(disk_path: pathlib.Path) -> List[pathlib.Path]:
    return sorted(p for p in disk_path.iterdir() if p.name.startswith("batchcorder-"))


def private_dir(disk_path: pathlib.Path) -> pathlib.Path:
    dirs = private_dirs(disk_path)
    assert len(dirs) == 1, f"expected one private directory in {disk_path}, found {dirs}"
    return dirs[0]


def segment_files(directory: pathlib.Path) -> List[pathlib.Path]:
    return sorted(p for p in directory.iterdir() if SEGMENT_RE.match(p.name))


def mapped_ranges(path_fragment: str) -> List[tuple]:
    """(start, end) of every mapping in this process whose file path contains the fragment."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and path_fragment in parts[5]:
                start, end = parts[0].split("-")
                ranges.append((int(start, 16), int(end, 16)))
    return ranges


def buffer_addresses(batch: pa.RecordBatch) -> List[int]:
    """Addresses of every non-empty buffer of every column (children included)."""
    addresses = []
    for column in batch.columns:
        for buffer in column.buffers():
            if buffer is not None and buffer.size > 0:
                addresses.append(buffer.address)
    return addresses


def read_all_batches(cache: StreamCache) -> List[pa.RecordBatch]:
    return list(cache.reader())


def assert_batches_equal(got: Sequence[pa.RecordBatch], expected: Sequence[pa.RecordBatch]) -> None:
    assert len(got) == len(expected)
    for index, (a, b) in enumerate(zip(got, expected)):
        assert a.equals(b), f"batch {index} differs"


def run_child(script: str, *args: str, timeout: float = 60, wrap: list[str] = []) -> dict:
    """Run `script` in a fresh interpreter; it prints one JSON object as its last line."""
    done = subprocess.run(
        [*wrap, sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"child failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- parameter validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, missing",
    [
        ({"disk_path": "SET"}, "disk_capacity"),
        ({"disk_capacity": 1 << 20}, "disk_path"),
    ],
)
def test_disk_path_and_capacity_go_together(tmp_path, kwargs, missing):
    kwargs = {k: (tmp_path if v == "SET" else v) for k, v in kwargs.items()}
    source = pa.table({"x": [1, 2, 3]}).to_reader()
    with pytest.raises(ValueError) as info:
        StreamCache(source, **kwargs)
    message = str(info.value)
    assert re.search(rf"\b{missing}\b is missing|missing:? {missing}\b", message), message
    assert private_dirs(tmp_path) == []
    # A refused constructor leaves the source untouched.
    assert source.read_all().num_rows == 3


@pytest.mark.parametrize("capacity", [0, -5])
def test_disk_capacity_must_be_positive(tmp_path, capacity):
    with pytest.raises(ValueError, match="disk_capacity"):
        StreamCache(pa.table({"x": [1]}), disk_path=tmp_path, disk_capacity=capacity)
    assert private_dirs(tmp_path) == []


def test_disk_path_that_is_a_file(tmp_path):
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("hello")
    with pytest.raises(ValueError, match="disk_path"):
        StreamCache(pa.table({"x": [1]}), disk_path=a_file, disk_capacity=1 << 20)
    with pytest.raises(ValueError, match="disk_path"):
        StreamCache(pa.table({"x": [1]}), disk_path=str(a_file), disk_capacity=1 << 20)
    assert a_file.read_text() == "hello"


@pytest.mark.parametrize("with_disk", [True, False])
def test_bogus_write_policy(tmp_path, with_disk):
    disk = {"disk_path": tmp_path, "disk_capacity": 1 << 20} if with_disk else {}
    with pytest.raises(ValueError, match="write_policy"):
        StreamCache(pa.table({"x": [1]}), write_policy="bogus", **disk)
    assert private_dirs(tmp_path) == []


@pytest.mark.parametrize("policy", ["on_insertion", "on_eviction"])
def test_write_policy_accepted_without_disk(policy):
    table = pa.table({"x": list(range(10))})
    with StreamCache(table.to_reader(max_chunksize=3), write_policy=policy) as cache:
        assert pa.table(cache).equals(table)
        assert cache.stats().disk_bytes == 0


@pytest.mark.parametrize("as_type", [str, pathlib.Path])
def test_disk_path_str_and_pathlike(tmp_path, as_type):
    table = pa.table({"x": np.arange(1000)})
    with StreamCache(
        table.to_reader(max_chunksize=100), memory_capacity=1,
        disk_path=as_type(tmp_path), disk_capacity=BIG,
    ) as cache:
        assert pa.table(cache).equals(table)
        assert cache.stats().disk_bytes > 0
        assert len(segment_files(private_dir(tmp_path))) >= 1


def test_missing_nested_disk_path_is_created(tmp_path):
    nested = tmp_path / "a" / "b" / "c"
    table = pa.table({"x": np.arange(1000)})
    with StreamCache(
        table.to_reader(max_chunksize=100), memory_capacity=1, disk_path=nested, disk_capacity=BIG
    ) as cache:
        assert nested.is_dir()
        assert pa.table(cache).equals(table)
        assert segment_files(private_dir(nested))
    assert nested.is_dir()  # created for the user, and left for the user
    assert private_dirs(nested) == []


# -- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["on_insertion", "on_eviction"])
@pytest.mark.parametrize("hot_batches", [0, 3])
def test_round_trip_many_readers_many_threads(tmp_path, policy, hot_batches):
    table = mixed_table()
    # Each batch in its own allocation (not slices of one table), so the hot layer can
    # hold a few of them.
    batches = [
        pa.ipc.read_record_batch(b.serialize(), b.schema)
        for b in table.to_batches(max_chunksize=2_000)
    ]
    # 0: memory_capacity=1, everything is read back from disk; 3: a small hot layer.
    memory_capacity = 1 if hot_batches == 0 else hot_batches * batches[0].serialize().size
    cache = StreamCache(
        one_shot(batches), memory_capacity=memory_capacity, disk_path=tmp_path,
        disk_capacity=BIG, write_policy=policy,
    )
    threads_count = 6
    barrier = threading.Barrier(threads_count, timeout=30)
    results: List[Optional[List[pa.RecordBatch]]] = [None] * threads_count
    errors: List[BaseException] = []

    def work(slot: int) -> None:
        try:
            reader = cache.reader()
            barrier.wait()
            results[slot] = list(reader)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    # First pass: the threads race on ingestion; second pass: all replay from disk at once.
    for _ in range(2):
        threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        for got in results:
            assert got is not None
            assert_batches_equal(got, batches)
            assert pa.Table.from_batches(got).equals(table)

    stats = cache.stats()
    assert stats.batches_ingested == len(batches)
    assert stats.disk_bytes > 0
    if hot_batches == 0:
        assert stats.memory_bytes == 0
    else:
        assert 0 < stats.memory_bytes <= memory_capacity
    assert segment_files(private_dir(tmp_path))
    cache.close()
    if sys.platform == "win32":  # held batches map their files, which keep the folder there
        del results, got  # until the batches go (docs/processes.md, "Windows")
        gc.collect()
    assert private_dirs(tmp_path) == []


def test_on_eviction_stream_that_fits_never_touches_disk(tmp_path):
    table = mixed_table(rows=10_000)
    cache = StreamCache(
        table.to_reader(max_chunksize=1_000), memory_capacity=64 << 20,
        disk_path=tmp_path, disk_capacity=BIG, write_policy="on_eviction",
    )
    for _ in range(3):
        assert pa.table(cache).equals(table)
    stats = cache.stats()
    assert stats.upstream_exhausted
    assert stats.disk_bytes == 0
    assert stats.memory_bytes > 0
    assert segment_files(private_dir(tmp_path)) == []
    cache.close()
    assert private_dirs(tmp_path) == []


def test_on_insertion_writes_even_when_it_fits(tmp_path):
    table = mixed_table(rows=10_000)
    with StreamCache(
        table.to_reader(max_chunksize=1_000), memory_capacity=64 << 20,
        disk_path=tmp_path, disk_capacity=BIG, write_policy="on_insertion",
    ) as cache:
        assert pa.table(cache).equals(table)
        assert cache.stats().disk_bytes > 0
        assert segment_files(private_dir(tmp_path))


def typed_columns(n: int = 1000) -> dict:
    return {
        "string_view": pa.array([f"s{i}" * (i % 5) for i in range(n)], pa.string_view()),
        "large_string": pa.array([f"s{i}" if i % 9 else None for i in range(n)], pa.large_string()),
        "binary_view": pa.array([b"x" * (i % 20) for i in range(n)], pa.binary_view()),
        "decimal": pa.array([decimal.Decimal(i) / 100 for i in range(n)], pa.decimal128(10, 2)),
        "timestamp_tz": pa.array(np.arange(n), pa.timestamp("us", tz="Europe/Paris")),
        "struct": pa.StructArray.from_arrays(
            [pa.array(range(n)), pa.array([str(i) for i in range(n)])], ["a", "b"]
        ),
        "map": pa.array([[("k", i)] for i in range(n)], pa.map_(pa.string(), pa.int64())),
        "fixed_size_list": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(2 * n)), 2),
        "large_list": pa.array([[i] * (i % 3) for i in range(n)], pa.large_list(pa.int64())),
        "run_end_encoded": pa.RunEndEncodedArray.from_arrays(
            pa.array([n // 2, n], pa.int32()), pa.array([1, 2])
        ),
        "null": pa.nulls(n),
        "list_of_dictionary": pa.array(
            [[f"w{i % 3}"] for i in range(n)], pa.list_(pa.dictionary(pa.int32(), pa.string()))
        ),
        "dense_union": pa.UnionArray.from_dense(
            pa.array([i % 2 for i in range(n)], pa.int8()),
            pa.array([i // 2 for i in range(n)], pa.int32()),
            [pa.array(range(n)), pa.array([str(i) for i in range(n)])],
        ),
        "float16": pa.array(np.arange(n).astype(np.float16)),
        "list_view": pa.array([[i] for i in range(n)], pa.list_view(pa.int64())),
    }


@pytest.mark.parametrize("name", sorted(typed_columns(10)))
def test_column_types_round_trip_through_disk(tmp_path, name):
    table = pa.table({name: typed_columns()[name], "row": np.arange(1000)})
    with StreamCache(
        table.to_reader(max_chunksize=300), memory_capacity=1, disk_path=tmp_path,
        disk_capacity=BIG,
    ) as cache:
        for _ in range(2):
            assert pa.table(cache).equals(table)
        assert cache.stats().memory_bytes == 0 and cache.stats().disk_bytes > 0


def test_empty_batches_round_trip_through_disk(tmp_path):
    schema = pa.schema([("x", pa.int64()), ("s", pa.string())])
    empty = pa.record_batch([pa.array([], pa.int64()), pa.array([], pa.string())], schema=schema)
    full = pa.record_batch([pa.array([1, 2]), pa.array(["a", None])], schema=schema)
    batches = [empty, full, empty, empty, full]
    with StreamCache(
        one_shot(batches), memory_capacity=1, disk_path=tmp_path, disk_capacity=BIG
    ) as cache:
        for _ in range(2):
            got = read_all_batches(cache)
            assert [b.num_rows for b in got] == [0, 2, 0, 0, 2]
            assert_batches_equal(got, batches)


# -- DuckDB -----------------------------------------------------------------------------


def test_duckdb_self_join_and_asof_join_from_disk(tmp_path):
    rng = np.random.default_rng(7)
    n = 40_000
    table = pa.table({
        "id": np.arange(n, dtype=np.int64),
        "k": rng.integers(0, 500, n),
        "ts": np.sort(rng.integers(0, 10**6, n)),
        "v": rng.integers(0, 1000, n),
    })
    probes = pa.table({
        "pid": np.arange(1500, dtype=np.int64),
        "k2": rng.integers(0, 500, 1500),
        "ts2": rng.integers(0, 10**6, 1500),
    })
    self_join = (
        "SELECT a.k, count(*) AS n, sum(a.id * b.v) AS s, min(b.id) AS lo, max(a.id) AS hi "
        "FROM ds a JOIN ds b ON a.k = b.k AND a.id <> b.id GROUP BY a.k ORDER BY a.k"
    )
    asof_join = (
        "SELECT p.pid, ds.id, ds.ts, ds.v FROM probes p ASOF JOIN ds "
        "ON p.k2 = ds.k AND p.ts2 >= ds.ts ORDER BY p.pid"
    )
    con = duckdb.connect()

    def run(ds, probes):  # noqa: ANN001 - DuckDB finds both by name in this frame
        return con.sql(self_join).fetchall(), con.sql(asof_join).fetchall()

    expected = run(table, probes)
    assert len(expected[0]) > 100 and len(expected[1]) > 1000

    cache = StreamCache(
        table.to_reader(max_chunksize=3_000), memory_capacity=1,
        disk_path=tmp_path, disk_capacity=BIG,
    )
    got = run(cache, probes)
    assert got[0] == expected[0]
    assert got[1] == expected[1]
    # Run twice: the second time every batch comes back from disk, none from the upstream.
    assert run(cache, probes) == expected
    stats = cache.stats()
    assert stats.batches_ingested == len(table.to_batches(max_chunksize=3_000)) > 10
    assert stats.memory_bytes == 0 and stats.disk_bytes > 0
    cache.close()
    assert private_dirs(tmp_path) == []


# -- dictionaries -----------------------------------------------------------------------


def dictionary_batches(kind: str, second_dictionary: bool = False) -> List[pa.RecordBatch]:
    fields = [("k", pa.dictionary(pa.int32(), pa.string())), ("v", pa.int64())]
    if second_dictionary:
        fields.append(("k2", pa.dictionary(pa.int8(), pa.int64())))
    schema = pa.schema(fields)
    batches = []
    for i in range(8):
        if kind == "replace":  # a wholly new dictionary in every batch
            words = [f"batch{i}-word{j}" for j in range(3 + i)]
        elif kind == "grow":  # each dictionary extends the previous one (a delta)
            words = [f"word{j}" for j in range(3 + 2 * i)]
        else:  # "same": one dictionary for the whole stream
            words = [f"word{j}" for j in range(5)]
        indices = pa.array([(j * 7 + i) % len(words) for j in range(500)], pa.int32())
        columns = [
            pa.DictionaryArray.from_arrays(indices, pa.array(words)),
            pa.array(np.arange(500, dtype=np.int64) + 1000 * i),
        ]
        if second_dictionary:
            numbers = pa.array([100 * i + j for j in range(4)], pa.int64())
            codes = pa.array([j % 4 for j in range(500)], pa.int8())
            columns.append(pa.DictionaryArray.from_arrays(codes, numbers))
        batches.append(pa.record_batch(columns, schema=schema))
    return batches


def assert_dictionary_round_trip(cache: StreamCache, batches: List[pa.RecordBatch]) -> None:
    for _ in range(2):  # the ingest pass, then a pure replay from disk
        got = read_all_batches(cache)
        assert_batches_equal(got, batches)
        for a, b in zip(got, batches):
            for name in a.schema.names:
                if pa.types.is_dictionary(a.schema.field(name).type):
                    assert a.column(name).dictionary.equals(b.column(name).dictionary)
                    assert a.column(name).to_pylist() == b.column(name).to_pylist()


@pytest.mark.parametrize("kind", ["replace", "grow", "same"])
@pytest.mark.parametrize("policy", ["on_insertion", "on_eviction"])
@pytest.mark.parametrize("compression", [None, "zstd"])
def test_dictionary_replacement_round_trips(tmp_path, kind, policy, compression):
    batches = dictionary_batches(kind)
    cache = StreamCache(
        one_shot(batches), memory_capacity=1, disk_path=tmp_path, disk_capacity=BIG,
        write_policy=policy, compression=compression,
    )
    assert_dictionary_round_trip(cache, batches)
    stats = cache.stats()
    assert stats.disk_bytes > 0 and stats.memory_bytes == 0
    cache.close()


@pytest.mark.parametrize("kind", ["replace"])
def test_two_dictionary_columns_round_trip(tmp_path, kind):
    batches = dictionary_batches(kind, second_dictionary=True)
    cache = StreamCache(
        one_shot(batches), memory_capacity=1, disk_path=tmp_path, disk_capacity=BIG
    )
    try:
        assert_dictionary_round_trip(cache, batches)
    finally:
        cache.close()


def test_dictionary_in_a_reclaimed_segment_stays_readable(tmp_path):
    """The only dictionary message is in the first segment, which max_readers reclaims."""
    batches = dictionary_batches("same") * 6
    cache = StreamCache(
        one_shot(batches), memory_capacity=1, disk_path=tmp_path, disk_capacity=BIG,
        max_readers=1, segment_bytes=4096,
    )
    got = read_all_batches(cache)
    assert_batches_equal(got, batches)
    assert cache.stats().segments_deleted > 0
    cache.close()


# -- compression ------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compression_round_trip_and_smaller(tmp_path, codec):
    rows = 200_000
    table = pa.table({
        "x": np.arange(rows, dtype=np.int64) % 16,
        "s": pa.array(["repetitive text " * 3] * rows),
        "f": np.zeros(rows),
    })

    def disk_bytes(compression: Optional[str], where: pathlib.Path) -> int:
        where.mkdir()
        with StreamCache(
            table.to_reader(max_chunksize=20_000), memory_capacity=1, disk_path=where,
            disk_capacity=BIG, compression=compression,
        ) as cache:
            for _ in range(2):
                assert pa.table(cache).equals(table)
            return cache.stats().disk_bytes

    plain = disk_bytes(None, tmp_path / "plain")
    packed = disk_bytes(codec, tmp_path / codec)
    assert plain > table.nbytes * 0.9
    assert 0 < packed < plain / 4


# -- zero-copy --------------------------------------------------------------------------


@linux_only
@pytest.mark.parametrize("policy", ["on_insertion", "on_eviction"])
def test_uncompressed_reads_point_into_the_segment_mapping(tmp_path, policy):
    table = mixed_table(rows=20_000)
    cache = StreamCache(
        table.to_reader(max_chunksize=2_000), memory_capacity=1, disk_path=tmp_path,
        disk_capacity=BIG, write_policy=policy,
    )
    directory = str(private_dir(tmp_path))
    for replay in range(2):
        batches = read_all_batches(cache)
        assert pa.Table.from_batches(batches).equals(table)
        ranges = mapped_ranges(directory)
        assert ranges, "no segment file of the cache is mapped"
        checked = 0
        for batch in batches:
            for address in buffer_addresses(batch):
                assert any(lo <= address < hi for lo, hi in ranges), (
                    f"replay {replay}: buffer at {address:#x} is not inside a mapped segment"
                )
                checked += 1
        assert checked >= len(batches) * 4
    cache.close()


@linux_only
@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_reads_are_copies(tmp_path, codec):
    table = pa.table({"x": np.arange(50_000, dtype=np.int64) % 100})
    cache = StreamCache(
        table.to_reader(max_chunksize=5_000), memory_capacity=1, disk_path=tmp_path,
        disk_capacity=BIG, compression=codec,
    )
    directory = str(private_dir(tmp_path))
    batches = read_all_batches(cache)
    assert pa.Table.from_batches(batches).equals(table)
    ranges = mapped_ranges(directory)
    for batch in batches:
        for address in buffer_addresses(batch):
            assert not any(lo <= address < hi for lo, hi in ranges)
    cache.close()


# -- reclaiming segments ----------------------------------------------------------------


def test_max_readers_reclaims_passed_segments(tmp_path):
    segment = 64 << 10
    batches = int_batches(count=320, rows=2048)  # 16 KiB each, 5 MiB in all
    total = sum(b.nbytes for b in batches)
    cache = StreamCache(
        one_shot(batches), memory_capacity=1, disk_path=tmp_path, disk_capacity=BIG,
        max_readers=1, segment_bytes=segment,
    )
    directory = private_dir(tmp_path)
    most_files = most_bytes = 0
    deleted_seen = []
    for index, batch in enumerate(cache.reader()):
        assert batch.equals(batches[index])
        stats = cache.stats()
        most_files = max(most_files, len(list(directory.iterdir())))
        most_bytes = max(most_bytes, stats.disk_bytes)
        deleted_seen.append(stats.segments_deleted)
    stats = cache.stats()
    assert stats.upstream_exhausted and stats.batches_ingested == len(batches)
    # Segments went away during the pass, not all at the end.
    assert deleted_seen[len(batches) // 2] > 0
    assert deleted_seen == sorted(deleted_seen)
    assert stats.segments_deleted >= total // segment - 4
    assert most_files <= 4, most_files
    assert most_bytes <= 4 * segment, (most_bytes, total)
    assert total > 4 << 20
    cache.close()
    if sys.platform == "win32":  # held batches map their files, which keep the folder there
        del batch  # until the batches go (docs/processes.md, "Windows")
        gc.collect()
    assert private_dirs(tmp_path) == []


def test_max_readers_passes_a_stream_larger_than_disk_capacity(tmp_path):
    batches = int_batches(count=320, rows=2048)  # 5 MiB through a 512 KiB disk budget
    capacity = 512 << 10
    cache = StreamCache(
        one_shot(batches), memory_capacity=1, disk_path=tmp_path, disk_capacity=capacity,
        max_readers=1, segment_bytes=64 << 10,
    )
    assert_batches_equal(read_all_batches(cache), batches)
    stats = cache.stats()
    assert stats.upstream_exhausted and stats.disk_bytes <= capacity
    assert sum(b.nbytes for b in batches) > 8 * capacity
    cache.close()


def test_two_readers_on_two_threads_reclaim_behind_the_slower(tmp_path):
    batches = int_batches(count=256, rows=2048)
    cache = StreamCache(
        one_shot(batches), memory_capacity=1, disk_path=tmp_path, disk_capacity=BIG,
        max_readers=2, segment_bytes=64 << 10,
    )
    results: List[Optional[List[pa.RecordBatch]]] = [None, None]
    errors: List[BaseException] = []

    def work(slot: int) -> None:
        try:
            results[slot] = read_all_batches(cache)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    for got in results:
        assert got is not None
        assert_batches_equal(got, batches)
    stats = cache.stats()
    assert stats.segments_deleted > 0
    assert stats.disk_bytes < sum(b.nbytes for b in batches) // 4
    # The cap is reached: a third reader is refused rather than given a partial stream.
    with pytest.raises(ValueError, match="max_readers"):
        cache.reader()
    cache.close()


def test_without_max_readers_nothing_is_reclaimed(tmp_path):
    batches = int_batches(count=64, rows=2048)
    with StreamCache(
        one_shot(batches), memory_capacity=1, disk_path=tmp_path, disk_capacity=BIG,
        segment_bytes=64 << 10,
    ) as cache:
        assert_batches_equal(read_all_batches(cache), batches)
        stats = cache.stats()
        assert stats.segments_deleted == 0
        assert stats.disk_bytes >= sum(b.nbytes for b in batches)
        assert len(segment_files(private_dir(tmp_path))) >= 10
        assert_batches_equal(read_all_batches(cache), batches)


# -- capacity ---------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["on_insertion", "on_eviction"])
def test_disk_capacity_too_small(tmp_path, policy):
    batches = int_batches(count=20, rows=8192)  # 64 KiB each
    capacity = 5 * batches[0].nbytes + 2000
    cache = StreamCache(
        one_shot(batches), memory_capacity=1, disk_path=tmp_path, disk_capacity=capacity,
        write_policy=policy,
    )
    got = []
    with pytest.raises(MemoryError) as info:
        for batch in cache.reader():
            got.append(batch)
    assert isinstance(info.value, MemoryError)
    assert "disk_capacity" in str(info.value)
    assert 1 <= len(got) < len(batches)
    assert_batches_equal(got, batches[: len(got)])
    assert cache.stats().disk_bytes <= capacity

    # A new reader still gets every batch cached before, then the same error.
    again = cache.reader()
    replay = [next(again) for _ in range(len(got))]
    assert_batches_equal(replay, batches[: len(got)])
    with pytest.raises(MemoryError, match="disk_capacity"):
        next(again)
    cache.close()
    if sys.platform == "win32":  # held batches map their files, which keep the folder there
        del got, replay  # until the batches go (docs/processes.md, "Windows")
        gc.collect()
    assert private_dirs(tmp_path) == []


# -- faults -----------------------------------------------------------------------------


FULL_DISK_CHILD = r"""
import json, os, resource, signal, sys
import numpy as np, pyarrow as pa
from batchcorder import StreamCache

disk_path, policy, limit = sys.argv[1], sys.argv[2], sys.argv[3]
if limit == "file-size":
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

small = [pa.record_batch({"x": np.arange(i * 8192, (i + 1) * 8192, dtype=np.int64)})
         for i in range(40)]                                   # 64 KiB each
big = pa.record_batch({"x": np.arange(400_000, dtype=np.int64)})  # 3.2 MiB: over the limit
tail = [pa.record_batch({"x": np.arange(5, dtype=np.int64)})]
expected = small + [big] + tail
source = pa.RecordBatchReader.from_batches(big.schema, iter(expected))
cache = StreamCache(source, memory_capacity=1, disk_path=disk_path, disk_capacity=1 << 30,
                    write_policy=policy, segment_bytes=256 << 10)
private = [os.path.join(disk_path, d) for d in os.listdir(disk_path)]

def drain(reader):
    got = []
    try:
        for batch in reader:
            got.append(batch)
    except Exception as exc:
        return got, exc
    return got, None

def report(got, exc):
    return {
        "count": len(got),
        "prefix_ok": all(a.equals(b) for a, b in zip(got, expected)),
        "error_type": type(exc).__name__ if exc else None,
        "is_oserror": isinstance(exc, OSError),
        "errno": getattr(exc, "errno", None),
        "message": str(exc) if exc else None,
    }

first = report(*drain(cache.reader()))
second = report(*drain(cache.reader()))
via_pyarrow = None
try:
    pa.RecordBatchReader.from_stream(cache).read_all()
except Exception as exc:
    via_pyarrow = {"is_oserror": isinstance(exc, OSError), "message": str(exc)}
stats = cache.stats()
cache.close()
print(json.dumps({
    "first": first, "second": second, "via_pyarrow": via_pyarrow, "private": private,
    "disk_bytes": stats.disk_bytes, "left": os.listdir(disk_path),
}))
"""


# A 4 MiB tmpfs, mounted in a private mount namespace: a filesystem that really fills up.
TMPFS_4M = ["unshare", "--map-root-user", "--mount", "sh", "-c",
            'mount -t tmpfs -o size=4m batchcorder-full "$0" && exec "$@"']


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a tmpfs in a mount namespace, RLIMIT_FSIZE")
@pytest.mark.parametrize("policy", ["on_insertion", "on_eviction"])
@pytest.mark.parametrize(
    "limit, expected_errno",
    [("file-size", errno.EFBIG), ("full-filesystem", errno.ENOSPC)],
)
def test_full_disk_for_real(tmp_path, policy, limit, expected_errno):
    wrap = [*TMPFS_4M, str(tmp_path)] if limit == "full-filesystem" else []
    out = run_child(FULL_DISK_CHILD, str(tmp_path), policy, limit, wrap=wrap)
    (private,) = out["private"]
    assert private.startswith(str(tmp_path))
    for attempt in (out["first"], out["second"]):
        assert attempt["is_oserror"], attempt
        assert attempt["errno"] == expected_errno, attempt["message"]
        assert private in attempt["message"], attempt
        assert os.strerror(expected_errno) in attempt["message"], attempt
        # Everything before the failure was served, intact; nothing partial was returned.
        assert attempt["prefix_ok"]
        assert 40 <= attempt["count"] <= 41, attempt
    assert out["second"]["count"] == out["first"]["count"]
    assert out["via_pyarrow"]["is_oserror"]
    assert private in out["via_pyarrow"]["message"]
    assert out["disk_bytes"] >= 40 * 8192 * 8
    assert out["left"] == []


@posix_only("removes the folder of a live cache; Windows refuses to while its files are mapped")
@pytest.mark.parametrize("policy", ["on_insertion", "on_eviction"])
def test_vanished_directory(tmp_path, policy):
    batches = int_batches(count=40, rows=8192)
    cache = StreamCache(
        one_shot(batches), memory_capacity=1, disk_path=tmp_path, disk_capacity=BIG,
        write_policy=policy, segment_bytes=4096,
    )
    reader = cache.reader()
    got = [next(reader) for _ in range(5)]
    directory = private_dir(tmp_path)
    shutil.rmtree(directory)
    with pytest.raises(OSError) as info:
        for batch in reader:
            got.append(batch)
    assert str(directory) in str(info.value)
    assert os.strerror(errno.ENOENT) in str(info.value)
    assert_batches_equal(got, batches[: len(got)])
    assert 5 <= len(got) <= 6

    # Batches cached before (their files are gone, their mappings are not) stay readable.
    again = cache.reader()
    assert_batches_equal([next(again) for _ in range(len(got))], batches[: len(got)])
    with pytest.raises(OSError):
        next(again)
    cache.close()
    assert list(tmp_path.iterdir()) == []


# -- files and cleanup ------------------------------------------------------------------


@posix_only("file modes; the folder takes the user's ACL on Windows")
def test_private_directory_is_not_accessible_to_others(tmp_path):
    old = os.umask(0o022)  # the common default: what users get
    try:
        with StreamCache(
            pa.table({"x": np.arange(1000)}).to_reader(max_chunksize=100), memory_capacity=1,
            disk_path=tmp_path, disk_capacity=BIG,
        ) as cache:
            cache.ingest_all()
            mode = stat.S_IMODE(private_dir(tmp_path).stat().st_mode)
            assert mode & 0o700 == 0o700
            assert mode & 0o077 == 0, oct(mode)
    finally:
        os.umask(old)


@posix_only("file modes; the files take the user's ACL on Windows")
def test_segment_files_are_0600(tmp_path):
    old = os.umask(0o000)  # even the most permissive umask must not widen them
    try:
        with StreamCache(
            one_shot(int_batches(count=20, rows=4096)), memory_capacity=1,
            disk_path=tmp_path, disk_capacity=BIG, segment_bytes=64 << 10,
        ) as cache:
            cache.ingest_all()
            files = segment_files(private_dir(tmp_path))
            assert len(files) > 1
            for path in files:
                info = path.lstat()
                assert stat.S_ISREG(info.st_mode)
                assert stat.S_IMODE(info.st_mode) == 0o600, (path, oct(info.st_mode))
                assert info.st_uid == os.getuid()
    finally:
        os.umask(old)


def test_close_removes_only_its_own_directory(tmp_path):
    unrelated = tmp_path / "keep-me.txt"
    unrelated.write_text("user data")
    other_dir = tmp_path / "batchcorder-not-mine"
    other_dir.mkdir()
    (other_dir / "segment-000000.arrows").write_text("not a cache file")
    neighbour = StreamCache(
        pa.table({"x": np.arange(1000)}).to_reader(max_chunksize=100), memory_capacity=1,
        disk_path=tmp_path, disk_capacity=BIG,
    )
    neighbour.ingest_all()
    before = set(tmp_path.iterdir())
    cache = StreamCache(
        pa.table({"x": np.arange(1000)}).to_reader(max_chunksize=100), memory_capacity=1,
        disk_path=tmp_path, disk_capacity=BIG,
    )
    cache.ingest_all()
    (mine,) = set(tmp_path.iterdir()) - before
    assert mine.name.startswith("batchcorder-") and segment_files(mine)
    cache.close()
    cache.close()  # idempotent
    assert not mine.exists()
    assert set(tmp_path.iterdir()) == before
    assert unrelated.read_text() == "user data"
    assert (other_dir / "segment-000000.arrows").read_text() == "not a cache file"
    # The other cache in the same disk_path is untouched and still works.
    assert pa.table(neighbour).num_rows == 1000
    neighbour.close()
    assert set(tmp_path.iterdir()) == {unrelated, other_dir}


def test_del_and_gc_remove_the_directory(tmp_path):
    cache = StreamCache(
        one_shot(int_batches(count=10, rows=1000)), memory_capacity=1, disk_path=tmp_path,
        disk_capacity=BIG,
    )
    assert sum(b.num_rows for b in cache.reader()) == 10_000
    directory = private_dir(tmp_path)
    assert segment_files(directory)
    del cache
    gc.collect()
    assert not directory.exists()
    assert list(tmp_path.iterdir()) == []


def test_del_with_a_live_reader_keeps_it_working_until_it_goes(tmp_path):
    batches = int_batches(count=10, rows=1000)
    cache = StreamCache(
        one_shot(batches), memory_capacity=1, disk_path=tmp_path, disk_capacity=BIG
    )
    reader = cache.reader()
    first = next(reader)
    del cache
    gc.collect()
    # The reader keeps the cache alive: it finishes the pass correctly...
    assert_batches_equal([first] + list(reader), batches)
    del reader
    gc.collect()
    # ...and once it is gone, so is the directory.
    assert list(tmp_path.iterdir()) == []

    # The same for a reader exported to pyarrow through __arrow_c_stream__.
    cache = StreamCache(
        one_shot(batches), memory_capacity=1, disk_path=tmp_path, disk_capacity=BIG
    )
    exported = pa.RecordBatchReader.from_stream(cache)
    del cache
    gc.collect()
    assert len(private_dirs(tmp_path)) == 1
    assert exported.read_all().equals(pa.Table.from_batches(batches))
    del exported
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_context_manager_leaves_no_files(tmp_path):
    table = mixed_table(rows=5_000)
    with StreamCache(
        table.to_reader(max_chunksize=500), memory_capacity=1, disk_path=tmp_path,
        disk_capacity=BIG,
    ) as ds:
        assert pa.table(ds).equals(table)
        assert segment_files(private_dir(tmp_path))
    assert ds.closed
    assert list(tmp_path.iterdir()) == []


def test_context_manager_cleans_up_on_error(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with StreamCache(
            pa.table({"x": np.arange(1000)}).to_reader(max_chunksize=100), memory_capacity=1,
            disk_path=tmp_path, disk_capacity=BIG,
        ) as ds:
            ds.ingest_all()
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


EXIT_CHILD = r"""
import json, os, sys
import numpy as np, pyarrow as pa
from batchcorder import StreamCache

disk_path = sys.argv[1]
table = pa.table({"x": np.arange(100_000)})
# One cache with a reader still alive, one kept alive by a reference cycle; neither closed.
cache = StreamCache(table.to_reader(max_chunksize=10_000), memory_capacity=1,
                    disk_path=disk_path, disk_capacity=1 << 30)
reader = cache.reader()
rows = sum(next(reader).num_rows for _ in range(3))
cyclic = StreamCache(table.to_reader(max_chunksize=10_000), memory_capacity=1,
                     disk_path=disk_path, disk_capacity=1 << 30, write_policy="on_eviction")
cyclic.myself = cyclic
cyclic.ingest_all()
listing = {d: sorted(os.listdir(os.path.join(disk_path, d)))
           for d in os.listdir(disk_path) if d.startswith("batchcorder-")}
print(json.dumps({"rows": rows, "listing": listing}))
"""


def test_interpreter_exit_removes_the_directory(tmp_path):
    unrelated = tmp_path / "keep-me.txt"
    unrelated.write_text("user data")
    out = run_child(EXIT_CHILD, str(tmp_path))
    assert out["rows"] == 30_000
    dirs = {d: files for d, files in out["listing"].items() if d.startswith("batchcorder-")}
    assert len(dirs) == 2 and all(files for files in dirs.values()), out
    assert list(tmp_path.iterdir()) == [unrelated]
    assert unrelated.read_text() == "user data"


# -- arrays and readers around close() --------------------------------------------------


@pytest.mark.parametrize("compression", [None, "lz4"])
def test_arrays_still_valid_after_close(tmp_path, compression):
    table = mixed_table(rows=30_000)
    cache = StreamCache(
        table.to_reader(max_chunksize=3_000), memory_capacity=1, disk_path=tmp_path,
        disk_capacity=BIG, compression=compression,
    )
    batches = read_all_batches(cache)
    directory = private_dir(tmp_path)
    cache.close()
    # Windows keeps a mapped file's name: uncompressed batches, which map their segments,
    # keep the folder until the last of them goes (docs/processes.md, "Windows").
    assert directory.exists() == (sys.platform == "win32" and compression is None)
    gc.collect()
    table_ = table
    # The files are gone; the arrays (mapped or copied) still hold the right values.
    result = pa.Table.from_batches(batches)
    assert result.equals(table)
    assert result.column("i").to_numpy().sum() == np.arange(30_000).sum()
    assert result.column("s").to_pylist()[-1] == table.column("s").to_pylist()[-1]
    query = "SELECT sum(i), count(s), sum(len(l)), count(f) FROM {}"
    assert duckdb.sql(query.format("result")).fetchall() == (
        duckdb.sql(query.format("table_")).fetchall()
    )
    del batches, result
    gc.collect()
    assert not directory.exists()


def test_readers_handed_out_fail_cleanly_after_close(tmp_path):
    batches = int_batches(count=10, rows=1000)
    cache = StreamCache(
        one_shot(batches), memory_capacity=1, disk_path=tmp_path, disk_capacity=BIG
    )
    started = cache.reader()
    first = next(started)
    fresh = cache.reader()
    exported = pa.RecordBatchReader.from_stream(cache)
    exported.read_next_batch()
    cache.close()
    if sys.platform == "win32":  # held batches map their files, which keep the folder there
        del first  # until the batches go (docs/processes.md, "Windows")
        gc.collect()
    assert list(tmp_path.iterdir()) == []
    for reader in (started, fresh):
        with pytest.raises(ValueError, match="closed"):
            next(reader)
        with pytest.raises(ValueError, match="closed"):
            next(reader)  # and again: no crash, same clean error
    with pytest.raises(ValueError, match="closed"):
        exported.read_next_batch()
    with pytest.raises(ValueError, match="closed"):
        cache.reader()
    with pytest.raises(ValueError, match="closed"):
        cache.stats()
    assert first.equals(batches[0])


def test_close_while_threads_read_from_disk(tmp_path):
    batches = int_batches(count=200, rows=2048)
    cache = StreamCache(
        one_shot(batches), memory_capacity=1, disk_path=tmp_path, disk_capacity=BIG,
        segment_bytes=64 << 10,
    )
    cache.ingest_all()
    outcomes: List[tuple] = []
    lock = threading.Lock()
    some_progress = threading.Barrier(5, timeout=30)

    def work() -> None:
        got: List[pa.RecordBatch] = []
        error: Optional[BaseException] = None
        try:
            reader = cache.reader()
            got.append(next(reader))
            some_progress.wait()
            for _ in range(10_000):  # keep replaying from disk until close() stops us
                got = []
                for batch in cache.reader():
                    got.append(batch)
        except BaseException as exc:  # noqa: BLE001 - checked below
            error = exc
        with lock:
            outcomes.append((got, error))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    some_progress.wait()
    cache.close()
    for t in threads:
        t.join(timeout=60)
    assert len(outcomes) == 4
    for got, error in outcomes:
        assert isinstance(error, ValueError) and "closed" in str(error), repr(error)
        # Whatever a reader returned before the close is intact.
        assert_batches_equal(got, batches[: len(got)])
    if sys.platform == "win32":  # held batches map their files, which keep the folder there
        del outcomes, got  # until the batches go (docs/processes.md, "Windows")
        gc.collect()
    assert list(tmp_path.iterdir()) == []


# -- symlinks ---------------------------------------------------------------------------


def test_symlinks_in_disk_path_are_never_followed(tmp_path):
    disk_path = tmp_path / "cache"
    disk_path.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (disk_path / "evil").symlink_to(elsewhere, target_is_directory=True)
    (disk_path / "segment-000000.arrows").symlink_to(victim)

    batches = int_batches(count=30, rows=2048)
    cache = StreamCache(
        one_shot(batches), memory_capacity=1, disk_path=disk_path, disk_capacity=BIG,
        segment_bytes=16 << 10,
    )
    reader = cache.reader()
    got = [next(reader) for _ in range(3)]
    directory = private_dir(disk_path)
    assert not directory.is_symlink() and directory.parent == disk_path

    # Plant a symlink where the next segment file will be created: creation is exclusive and
    # does not follow it, so the cache reports an error instead of writing through it.
    numbers = [int(SEGMENT_RE.match(p.name).group(1)) for p in segment_files(directory)]
    planted = directory / f"segment-{max(numbers) + 1:06d}.arrows"
    planted.symlink_to(victim)
    with pytest.raises(OSError) as info:
        for batch in reader:
            got.append(batch)
    assert str(planted) in str(info.value)
    assert_batches_equal(got, batches[: len(got)])

    assert victim.read_text() == "precious"
    assert list(elsewhere.iterdir()) == []
    cache.close()
    # Cleanup removed the cache's own directory (and the link planted in it), nothing else.
    assert not directory.exists()
    assert sorted(p.name for p in disk_path.iterdir()) == ["evil", "segment-000000.arrows"]
    assert victim.read_text() == "precious"
    assert elsewhere.is_dir() and list(elsewhere.iterdir()) == []


def test_disk_path_may_itself_be_a_symlink_to_a_directory(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    table = pa.table({"x": np.arange(1000)})
    with StreamCache(
        table.to_reader(max_chunksize=100), memory_capacity=1, disk_path=link, disk_capacity=BIG
    ) as cache:
        assert pa.table(cache).equals(table)
        assert len(private_dirs(real)) == 1
    assert list(real.iterdir()) == []
    assert link.is_symlink()


# -- edge-shaped streams ------------------------------------------------------------------


def edge_streams() -> dict[str, tuple[pa.Schema, list[pa.RecordBatch]]]:
    int_schema = pa.schema([("x", pa.int64())])
    no_columns = pa.RecordBatch.from_struct_array(pa.array([{}] * 5, pa.struct([])))
    uuids = pa.ExtensionArray.from_storage(
        pa.uuid(), pa.array([bytes(range(16)), bytes(16)], pa.binary(16))
    )
    uuid_schema = pa.schema([("u", pa.uuid())])
    return {
        "zero-batches": (int_schema, []),
        "zero-rows": (int_schema, [pa.record_batch([pa.array([], pa.int64())], schema=int_schema)] * 3),
        "zero-columns": (no_columns.schema, [no_columns, no_columns]),
        "extension-type": (uuid_schema, [pa.record_batch([uuids], schema=uuid_schema)] * 2),
    }


@pytest.mark.parametrize("tier", ["memory", "disk"])
@pytest.mark.parametrize("shape", sorted(edge_streams()))
def test_edge_shaped_streams_replay_through_both_tiers(tmp_path, tier, shape):
    schema, batches = edge_streams()[shape]
    disk = {"memory_capacity": 1, "disk_path": tmp_path, "disk_capacity": BIG}
    source = pa.RecordBatchReader.from_batches(schema, iter(batches))
    with StreamCache(source, **(disk if tier == "disk" else {})) as cache:
        for _ in range(2):
            got = read_all_batches(cache)
            assert [b.num_rows for b in got] == [b.num_rows for b in batches]
            assert_batches_equal(got, batches)
            table = pa.table(cache)
            assert table.schema == schema
            assert table.num_rows == sum(b.num_rows for b in batches)
