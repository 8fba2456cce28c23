"""The Python API of issue 2, as a user sees it: construction, laziness, readers,
interop with pyarrow, DuckDB, Polars, DataFusion and nanoarrow, errors and max_readers."""

from __future__ import annotations

import gc
import os
import re
import textwrap
import threading

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from conftest import run_child

import batchcorder
from batchcorder import CastingStreamCache, StreamCache, StreamCacheReader, UpstreamError

SCHEMA = pa.schema([("id", pa.int64()), ("x", pa.float64()), ("s", pa.string())])


def batch(index: int, rows: int = 100) -> pa.RecordBatch:
    ids = np.arange(index * rows, (index + 1) * rows, dtype=np.int64)
    return pa.record_batch(
        [pa.array(ids), pa.array(ids / 2), pa.array([f"r{i}" for i in ids])], schema=SCHEMA
    )


class Counting:
    """A single-use pyarrow reader over a Python generator that counts its pulls."""

    def __init__(self, batches: int = 10, fail_at: int | None = None, exc: Exception | None = None):
        self.pulls = 0
        self.batches = batches
        self.fail_at = fail_at
        self.exc = exc or ValueError("x-marker from the producer")

    def reader(self) -> pa.RecordBatchReader:
        def produce():
            for index in range(self.batches):
                if index == self.fail_at:
                    raise self.exc
                self.pulls += 1
                yield batch(index)

        return pa.RecordBatchReader.from_batches(SCHEMA, produce())


def expected_table(batches: int = 10) -> pa.Table:
    return pa.Table.from_batches([batch(i) for i in range(batches)], schema=SCHEMA)


# -- construction -----------------------------------------------------------------------


def test_accepts_every_kind_of_stream_source():
    import arro3.core
    import nanoarrow
    import polars as pl

    table = expected_table(3)
    source_table = table  # noqa: F841 - DuckDB finds it by name
    sources = [
        table,
        table.to_reader(),
        pl.from_arrow(table),
        duckdb.sql("SELECT * FROM source_table ORDER BY id"),
        nanoarrow.c_array_stream(table),
        arro3.core.Table.from_arrow(table),
    ]
    for source in sources:
        cache = StreamCache(source)
        assert pa.table(cache).to_pydict() == table.to_pydict(), type(source)
        # The cache keeps each batch's columns and releases the producer's root array at
        # once: memory reused after that must not show through in a replay.
        churn = [(pa.array(range(i, i + 1000)), np.full(1000, i)) for i in range(200)]
        del churn
        assert pa.table(cache).to_pydict() == table.to_pydict(), type(source)


@pytest.mark.parametrize("bad", [5, [1, 2], {"a": [1]}, "text", None])
def test_non_stream_source_is_a_type_error(bad):
    with pytest.raises(TypeError, match="__arrow_c_stream__"):
        StreamCache(bad)


def test_constructor_parameters_in_order(tmp_path):
    def positional(memory_capacity):
        source = expected_table(3).to_reader(max_chunksize=100)
        cache = StreamCache(source, memory_capacity, tmp_path, 1 << 30, "on_eviction", 3)
        cache.ingest_all()
        return cache

    roomy, tight = positional(1 << 20), positional(1)
    assert roomy.max_readers == tight.max_readers == 3
    # on_eviction: a stream that fits memory_capacity never reaches disk_path; one that
    # does not goes there.
    assert roomy.stats().disk_bytes == 0 and roomy.stats().memory_bytes > 0
    assert tight.stats().disk_bytes > 0
    assert pa.table(tight).equals(expected_table(3))


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"max_readers": 0}, ValueError, "max_readers"),
        ({"memory_capacity": 0}, ValueError, "memory_capacity"),
        ({"memory_capacity": -1}, ValueError, "memory_capacity"),
        ({"max_readers": 1.5}, TypeError, "max_readers"),
        ({"memory_capacity": "big"}, TypeError, "memory_capacity"),
        ({"max_readers": True}, TypeError, "max_readers"),
        ({"write_policy": "bogus"}, ValueError, "write_policy"),
    ],
)
def test_bad_options_name_the_parameter(kwargs, error, name):
    with pytest.raises(error, match=name):
        StreamCache(expected_table(1), **kwargs)


def test_source_whose_export_raises_propagates():
    class Broken:
        def __arrow_c_stream__(self, requested_schema=None):
            raise RuntimeError("cannot export today")

    with pytest.raises(RuntimeError, match="cannot export today"):
        StreamCache(Broken())


def test_capsule_with_the_wrong_name_is_a_type_error():
    class SchemaNotStream:
        def __arrow_c_stream__(self, requested_schema=None):
            return SCHEMA.__arrow_c_schema__()

    with pytest.raises(TypeError, match="arrow_array_stream"):
        StreamCache(SchemaNotStream())


def test_version_and_typing_marker():
    assert re.fullmatch(r"\d+\.\d+\.\d+", batchcorder.__version__)
    assert os.path.exists(os.path.join(os.path.dirname(batchcorder.__file__), "py.typed"))


# -- laziness and exactly-once --------------------------------------------------------


def test_ingestion_is_lazy_and_the_upstream_is_read_once():
    source = Counting(10)
    cache = StreamCache(source.reader())
    assert cache.ingested_count == 0 and source.pulls == 0
    reader = cache.reader()
    next(reader), next(reader)
    assert cache.ingested_count == 2 and source.pulls == 2
    expected = expected_table(10)
    assert pa.table(cache).equals(expected)
    assert pa.RecordBatchReader.from_stream(cache).read_all().equals(expected)
    assert duckdb.sql("SELECT count(*) FROM cache a JOIN cache b USING (id)").fetchall() == [(1000,)]
    import polars as pl

    assert pl.DataFrame(cache).height == 1000
    assert source.pulls == 10
    assert cache.upstream_exhausted
    assert cache.ingest_all() == 10 and cache.ingest_all() == 10
    assert source.pulls == 10


def test_frontier_reader_starts_where_ingestion_is():
    cache = StreamCache(Counting(5).reader())
    early = cache.reader()
    next(early), next(early)
    late = cache.reader(from_start=False)
    assert [b.column(0)[0].as_py() for b in late] == [200, 300, 400]


def test_readers_are_independent_record_batch_iterators():
    cache = StreamCache(Counting(4).reader())
    a, b = cache.reader(), iter(cache)
    assert isinstance(a, StreamCacheReader) and iter(a) is a
    first = next(a)
    assert isinstance(first, pa.RecordBatch) and first.equals(batch(0))
    assert [x.equals(batch(i)) for i, x in enumerate(b)] == [True] * 4
    assert b.closed and not a.closed
    assert a.read_all().num_rows == 300
    with pytest.raises(StopIteration):
        next(b)
    with pytest.raises(TypeError):
        StreamCacheReader()


def test_export_consumes_a_reader():
    cache = StreamCache(expected_table(2))
    reader = cache.reader()
    assert pa.RecordBatchReader.from_stream(reader).read_all().num_rows == 200
    assert reader.closed
    with pytest.raises(ValueError, match="consumed"):
        reader.__arrow_c_stream__()
    with pytest.raises(ValueError, match="consumed"):
        next(reader)


def test_schema_properties_and_reprs():
    cache = StreamCache(Counting(3).reader())
    assert cache.schema == SCHEMA and pa.schema(cache) == SCHEMA
    assert "ingested=0" in repr(cache) and "exhausted=False" in repr(cache)
    reader = cache.reader()
    next(reader)
    assert "position=1" in repr(reader) and reader.schema == SCHEMA
    cache.ingest_all()
    assert "ingested=3" in repr(cache) and "exhausted=True" in repr(cache)
    assert "id: int64" in repr(cache)


# -- interop ----------------------------------------------------------------------------


def test_pyarrow_from_stream_with_a_requested_schema_casts():
    cache = StreamCache(expected_table(2))
    wanted = pa.schema([("id", pa.int32()), ("x", pa.float32()), ("s", pa.large_string())])
    table = pa.RecordBatchReader.from_stream(cache, schema=wanted).read_all()
    assert table.schema == wanted and table.column("id")[150].as_py() == 150


def test_duckdb_asof_join_and_limit():
    quotes = StreamCache(expected_table(10))
    trades = StreamCache(expected_table(10))
    asof = duckdb.sql(
        "SELECT count(*), sum(q.x) FROM trades t ASOF JOIN quotes q ON t.id >= q.id"
    ).fetchall()
    assert asof == [(1000, expected_table(10).column("x").to_numpy().sum())]
    for _ in range(20):
        assert len(duckdb.sql("SELECT * FROM quotes LIMIT 5").fetchall()) == 5
    gc.collect()
    assert quotes.stats().readers_live == 0
    assert duckdb.sql("SELECT sum(id) FROM quotes").fetchall() == [(sum(range(1000)),)]


def test_datafusion_and_nanoarrow_and_polars_consume_cache_and_readers():
    import datafusion
    import nanoarrow
    import polars as pl

    cache = StreamCache(expected_table(3))
    ctx = datafusion.SessionContext()
    assert ctx.from_arrow(cache).count() == 300
    assert len(nanoarrow.Array(cache)) == 300
    assert sum(len(chunk) for chunk in nanoarrow.c_array_stream(cache)) == 300
    assert pl.DataFrame(cache.reader()).height == 300
    assert ctx.from_arrow(cache.reader()).count() == 300


def test_duckdb_from_several_threads():
    cache = StreamCache(Counting(20).reader())
    results = []

    def query():
        con = duckdb.connect()
        con.register("ds", cache)
        results.append(con.sql("SELECT count(*), sum(id) FROM ds").fetchall())

    threads = [threading.Thread(target=query) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [[(2000, sum(range(2000)))]] * 4


# -- upstream failures ------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc, kind",
    [
        (ValueError("x-marker"), ValueError),  # pyarrow: EINVAL
        (RuntimeError("x-marker"), RuntimeError),  # EINVAL, typed from pyarrow's detail
        (MemoryError("x-marker"), MemoryError),  # ENOMEM
        (OSError(28, "x-marker"), OSError),  # pyarrow: EIO
    ],
)
def test_upstream_failure_keeps_earlier_batches_and_is_never_retried(exc, kind):
    source = Counting(10, fail_at=3, exc=exc)
    cache = StreamCache(source.reader())
    for _ in range(3):
        reader = cache.reader()
        assert [next(reader).column(0)[0].as_py() for _ in range(3)] == [0, 100, 200]
        with pytest.raises(kind, match="x-marker") as info:
            next(reader)
        assert isinstance(info.value, UpstreamError)
    with pytest.raises(UpstreamError):
        cache.ingest_all()
    assert source.pulls == 3


# -- max_readers ------------------------------------------------------------------------


def test_max_readers_caps_every_way_of_creating_readers():
    cache = StreamCache(expected_table(3), max_readers=4)
    for _ in range(10):
        cache.__arrow_c_schema__()
        pa.schema(cache)
    cache.reader()
    iter(cache)
    cache.__arrow_c_stream__()
    pa.table(cache.cast(SCHEMA))
    with pytest.raises(batchcorder.ReaderCapError, match="max_readers"):
        cache.reader()
    assert cache.stats().readers_created == 4


def test_duckdb_on_a_single_reader_cache():
    cache = StreamCache(Counting(5).reader(), max_readers=1)
    assert duckdb.sql("SELECT count(*) FROM cache").fetchall() == [(500,)]


def test_eviction_drops_only_what_every_reader_passed():
    cache = StreamCache(Counting(10).reader(), max_readers=2)
    a, b = cache.reader(), cache.reader()
    for i in range(6):
        assert next(a).equals(batch(i))
    for i in range(4):
        assert next(b).equals(batch(i))
    assert cache.stats().batches_evicted == 4
    assert [x.column(0)[0].as_py() for x in b] == [400, 500, 600, 700, 800, 900]
    assert [x.column(0)[0].as_py() for x in a] == [600, 700, 800, 900]


def test_from_start_after_eviction_says_why():
    cache = StreamCache(Counting(5).reader(), max_readers=1)
    assert sum(b.num_rows for b in cache.reader()) == 500
    with pytest.raises(ValueError, match="evicted"):
        cache.reader(from_start=True)


def test_bounded_pass_over_two_gib_stays_under_64_mib_of_rss():
    script = textwrap.dedent(
        """
        import sys, numpy as np, pyarrow as pa
        from batchcorder import StreamCache
        from conftest import peak_resident_kib as peak_kib
        schema = pa.schema([("x", pa.float64())])
        def produce():
            for i in range(256):            # 256 x 8 MiB = 2 GiB, made on the fly
                yield pa.record_batch([pa.array(np.full(1 << 20, float(i)))], schema=schema)
        cache = StreamCache(pa.RecordBatchReader.from_batches(schema, produce()), max_readers=1)
        reader = cache.reader()
        total = next(reader).column(0).to_numpy()[0]
        base = peak_kib()
        rows = 1 << 20
        for b in reader:
            rows += b.num_rows
        grown = peak_kib() - base
        print(rows, grown, cache.stats().batches_evicted)
        """
    )
    rows, grown_kib, evicted = map(int, run_child(script).split())
    assert rows * 8 == 2 << 30
    assert evicted == 256
    assert grown_kib < 64 * 1024, f"peak RSS grew {grown_kib} KiB"


# -- memory accounting ------------------------------------------------------------------


def test_sliced_batches_are_counted_once():
    n = 87 * (1 << 20) // 16
    table = pa.table({"a": np.arange(n, dtype=np.int64), "b": np.ones(n)})
    cache = StreamCache(table.to_reader(max_chunksize=65536), memory_capacity=200 << 20)
    assert cache.ingest_all() == -(-n // 65536)
    held = cache.stats().memory_bytes
    assert abs(held - table.nbytes) < table.nbytes * 0.1, (held, table.nbytes)


def test_over_budget_names_memory_capacity_and_keeps_what_fits():
    cache = StreamCache(Counting(10).reader(), memory_capacity=8000)
    with pytest.raises(MemoryError, match="memory_capacity") as info:
        cache.ingest_all()
    assert "disk" in str(info.value)
    kept = cache.ingested_count
    assert kept >= 1
    reader = cache.reader()
    assert [next(reader).equals(batch(i)) for i in range(kept)] == [True] * kept
    with pytest.raises(MemoryError, match="memory_capacity"):
        next(reader)


# -- cast -------------------------------------------------------------------------------


def test_cast_is_replayable_and_checked_up_front():
    cache = StreamCache(expected_table(2))
    target = pa.schema([("id", pa.int32()), ("x", pa.float32()), ("s", pa.string())])
    view = cache.cast(target)
    assert isinstance(view, CastingStreamCache) and view.schema == target
    assert pa.table(view).schema == target and pa.table(view).num_rows == 200
    assert [b.schema for b in view] == [target, target]
    with pytest.raises(ValueError, match="nope"):
        cache.cast(pa.schema([("nope", pa.int64()), ("x", pa.float64()), ("s", pa.string())]))
    with pytest.raises(ValueError, match="fields"):
        cache.cast(pa.schema([("id", pa.int64())]))
    with pytest.raises(ValueError, match='"id"'):
        cache.cast(pa.schema([("id", pa.struct([("a", pa.int8())])), ("x", pa.float64()), ("s", pa.string())]))


# -- close and lifetimes ----------------------------------------------------------------


def test_close_context_manager_and_use_after_close():
    with StreamCache(expected_table(3)) as cache:
        reader = cache.reader()
        kept = next(reader)
    assert cache.closed and "closed" in repr(cache)
    for use in (cache.reader, cache.ingest_all, lambda: next(reader), cache.stats):
        with pytest.raises(ValueError, match="closed"):
            use()
    cache.close()
    assert kept.column(0)[99].as_py() == 99


def test_batches_outlive_the_cache_and_readers():
    cache = StreamCache(expected_table(2))
    reader = cache.reader()
    kept = list(reader)
    del cache, reader
    gc.collect()
    assert pa.Table.from_batches(kept).equals(expected_table(2))


def test_stats_fields():
    cache = StreamCache(Counting(4).reader())
    list(cache.reader())
    stats = cache.stats()
    assert (stats.batches_ingested, stats.rows_ingested) == (4, 400)
    assert stats.memory_bytes >= 400 * 16 and stats.disk_bytes == 0
    assert stats.readers_created == 1 and stats.readers_live == 0
    assert stats.upstream_exhausted and stats.upstream_wait_seconds >= 0


# -- replays hand out the producer's own buffers -----------------------------------------


def _buffer_addresses(data: pa.Table | pa.RecordBatch) -> list[int]:
    """The address of every buffer of every column, children and dictionaries too."""
    found: list[int] = []

    def walk(array: pa.Array) -> None:
        found.extend(b.address for b in array.buffers() if b is not None)
        if isinstance(array, pa.DictionaryArray):
            walk(array.dictionary)

    for column in data.columns:
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        for chunk in chunks:
            walk(chunk)
    return found


def test_replays_export_the_producers_buffers_without_copying():
    table = pa.table(
        {
            "id": pa.array([1, None, 3, 4, 5, 6], pa.int64()),
            "s": pa.array(["a", "bb", None, "d", "e", "f"]),
            "tags": pa.array([[1], [], None, [2, 3], [4], [5, 6]], pa.list_(pa.int32())),
            "point": pa.array([{"x": i, "y": float(i)} for i in range(6)]),
            "kind": pa.array(["p", "q", "p", "p", "q", "r"]).dictionary_encode(),
        }
    )
    # Slices of one table: each batch points into the same allocations with an offset.
    source = pa.Table.from_batches(table.to_batches(max_chunksize=4))
    cache = StreamCache(source.to_reader(max_chunksize=2))
    replays = [pa.RecordBatchReader.from_stream(cache).read_all() for _ in range(3)]
    replays.append(pa.Table.from_batches(list(cache.reader())))
    expected = _buffer_addresses(source.to_reader(max_chunksize=2).read_all())
    for replay in replays:
        assert replay.equals(table)
        assert _buffer_addresses(replay) == expected, "a replay copied or moved a buffer"


# -- Python replays ---------------------------------------------------------------------


def test_a_half_replayed_python_reader_continues_through_pyarrow():
    source = Counting(6)
    cache = StreamCache(source.reader())
    first = list(cache)
    second_reader = cache.reader()
    second = [next(second_reader) for _ in range(4)]
    assert pa.Table.from_batches(second).equals(pa.Table.from_batches(first[:4]))
    assert second_reader.position == 4
    # The rest of a half-replayed reader goes through pyarrow, from where it stands.
    rest = pa.RecordBatchReader.from_stream(second_reader).read_all()
    assert rest.column("id")[0].as_py() == 400 and rest.num_rows == 200
    assert pa.Table.from_batches(list(cache)).equals(expected_table(6))
    assert source.pulls == 6


def test_python_replays_end_with_the_upstream_failure_and_after_close():
    cache = StreamCache(Counting(10, fail_at=4).reader())
    for _ in range(2):
        reader = cache.reader()
        assert [next(reader).column(0)[0].as_py() for _ in range(4)] == [0, 100, 200, 300]
        with pytest.raises(ValueError, match="x-marker"):
            next(reader)
    half = cache.reader()
    next(half)
    cache.close()
    with pytest.raises(ValueError, match="closed"):
        next(half)


def test_frontier_and_casting_readers_beside_python_replays():
    cache = StreamCache(Counting(5).reader())
    reader = cache.reader()
    next(reader), next(reader)
    frontier = cache.reader(from_start=False)
    assert frontier.position == 2
    assert [b.column(0)[0].as_py() for b in frontier] == [200, 300, 400]
    assert [b.column(0)[0].as_py() for b in reader] == [200, 300, 400]
    casted = cache.cast(pa.schema([("id", pa.int32()), ("x", pa.float64()), ("s", pa.string())]))
    assert [b.schema.field("id").type for b in casted] == [pa.int32()] * 5


def test_python_replays_stay_in_order_when_a_frontier_reader_reads_first():
    cache = StreamCache(Counting(5).reader())
    consumer = pa.RecordBatchReader.from_stream(cache)
    consumer.read_next_batch(), consumer.read_next_batch()  # ingested, seen by no Python reader
    frontier = cache.reader(from_start=False)
    assert first_ids(frontier) == [200, 300, 400]
    first, second = list(cache), list(cache)
    assert first_ids(first) == first_ids(second) == [0, 100, 200, 300, 400]


# -- bad input, exhaustively ------------------------------------------------------------


def _disk(tmp):
    return {"disk_path": str(tmp), "disk_capacity": 1 << 20}


BAD_KWARGS = [
    ({"memory_capacity": 1.5}, TypeError, "memory_capacity"),
    ({"memory_capacity": [1]}, TypeError, "memory_capacity"),
    ({"max_readers": "3"}, TypeError, "max_readers"),
    ({"max_readers": -2}, ValueError, "max_readers"),
    ({"write_policy": 5}, ValueError, "write_policy"),
    ({"write_policy": None}, ValueError, "write_policy"),
    ({"compression": "gzip"}, ValueError, "compression"),
    ({"compression": 1}, ValueError, "compression"),
    ({"segment_bytes": 0}, ValueError, "segment_bytes"),
    ({"segment_bytes": 4095}, ValueError, "segment_bytes"),
    ({"memory_capacity": 1 << 64}, ValueError, "memory_capacity"),
    ({"compression": ["lz4"]}, ValueError, "compression"),
    ({"segment_bytes": "1MB"}, TypeError, "segment_bytes"),
    ({"disk_path": 42, "disk_capacity": 1}, TypeError, "disk_path"),
    ({"disk_path": b"/tmp", "disk_capacity": 1}, TypeError, "disk_path"),
    ({"disk_path": "DISK", "disk_capacity": "1GB"}, TypeError, "disk_capacity"),
    ({"disk_path": "DISK", "disk_capacity": 0}, ValueError, "disk_capacity"),
    ({"disk_path": "DISK", "disk_capacity": 2.5}, TypeError, "disk_capacity"),
]


@pytest.mark.parametrize("kwargs, error, name", BAD_KWARGS)
def test_every_parameter_refuses_wrong_types_and_values(tmp_path, kwargs, error, name):
    kwargs = {k: (str(tmp_path) if v == "DISK" else v) for k, v in kwargs.items()}
    source = Counting(3)
    with pytest.raises(error, match=name) as info:
        StreamCache(source.reader(), **kwargs)
    assert source.pulls == 0, "a refused cache reads nothing"
    # Refused in Python or by a C setter, a wrong value is the same error.
    assert isinstance(info.value, batchcorder.InvalidArgumentError) or error is TypeError


@pytest.mark.parametrize(
    "kwargs", [{"memory_capacity": 0}, {"disk_path": "FILE", "disk_capacity": 1 << 20}]
)
def test_a_refused_option_leaves_a_single_use_source_unconsumed(tmp_path, kwargs):
    # Rules between options are checked before the source is exported: a pyarrow
    # RecordBatchReader handed over is consumed even if bc_cache_new then refuses it.
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    kwargs = {k: (a_file if v == "FILE" else v) for k, v in kwargs.items()}
    source = pa.table({"x": [1, 2, 3]}).to_reader()
    with pytest.raises(batchcorder.InvalidArgumentError):
        StreamCache(source, **kwargs)
    assert source.read_all().num_rows == 3


def _consumed_capsule():
    capsule = expected_table(1).__arrow_c_stream__()
    pa.RecordBatchReader._import_from_c_capsule(capsule).read_all()
    return capsule


@pytest.mark.parametrize(
    "returned, error, match",
    [
        (5, TypeError, "PyCapsule|capsule"),
        (None, TypeError, "PyCapsule|capsule"),
        ("arrow_array_stream", TypeError, "PyCapsule|capsule"),
        (lambda: SCHEMA.__arrow_c_schema__(), TypeError, "arrow_array_stream"),
        (_consumed_capsule, ValueError, "released"),
    ],
)
def test_a_source_returning_garbage_is_a_clear_error(returned, error, match):
    class Garbage:
        def __arrow_c_stream__(self, requested_schema=None):
            return returned() if callable(returned) else returned

    with pytest.raises(error, match=match):
        StreamCache(Garbage())


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.reader(from_start="yes"),
        lambda c: c.cast("not a schema"),
        lambda c: c.cast(pa.schema([("nope", pa.int64())])),
        lambda c: c.__arrow_c_stream__(requested_schema=5),
        lambda c: c.ingest_all(callback=5),
    ],
)
def test_bad_arguments_to_methods_raise_and_keep_the_cache_working(call):
    cache = StreamCache(expected_table(2))
    with pytest.raises((TypeError, ValueError)):
        call(cache)
    assert pa.table(cache).equals(expected_table(2))


def _producer_spoiling_its_second_batch(good: pa.RecordBatch, spoil):
    """A C stream producer (through cffi) of `good` three times, whose second exported
    array `spoil(array)` edits before handing it over; and the list of its calls."""
    from batchcorder._capsules import _api
    from batchcorder._native import ffi

    address = lambda ptr: int(ffi.cast("uintptr_t", ptr))  # noqa: E731
    calls: list[int] = []

    @ffi.callback("int(struct ArrowArrayStream *, struct ArrowSchema *)")
    def get_schema(stream, out):
        good.schema._export_to_c(address(out))
        return 0

    @ffi.callback("int(struct ArrowArrayStream *, struct ArrowArray *)")
    def get_next(stream, out):
        calls.append(1)
        good._export_to_c(address(out))
        if len(calls) == 2:
            spoil(out)
        return 0

    @ffi.callback("const char *(struct ArrowArrayStream *)")
    def get_last_error(stream):
        return ffi.NULL

    @ffi.callback("void(struct ArrowArrayStream *)")
    def release(stream):
        stream.release = ffi.NULL

    stream = ffi.new("struct ArrowArrayStream *")
    stream.get_schema, stream.get_next = get_schema, get_next
    stream.get_last_error, stream.release = get_last_error, release
    callbacks = (get_schema, get_next, get_last_error, release)

    class Producer:
        def __arrow_c_stream__(self, requested_schema=None):
            self.kept = (stream, callbacks)
            return _api.PyCapsule_New(address(stream), b"arrow_array_stream", None)

    return Producer(), calls


def _malformed_second_batch_is_kept_as_the_failure(good, spoil, *phrases) -> None:
    from batchcorder import UpstreamError

    producer, calls = _producer_spoiling_its_second_batch(good, spoil)
    cache = StreamCache(producer)
    reader = cache.reader()
    assert next(reader).equals(good)
    with pytest.raises(UpstreamError, match="malformed") as info:
        next(reader)
    assert all(phrase in str(info.value) for phrase in phrases), str(info.value)
    assert isinstance(info.value, ValueError)
    # Not poisoned: the batch before the bad one replays, and the failure is kept.
    again = cache.reader()
    assert next(again).equals(good)
    with pytest.raises(UpstreamError, match="malformed"):
        next(again)
    assert cache.stats().batches_ingested == 1 and len(calls) == 2
    cache.close()


def test_a_malformed_producer_is_the_upstreams_error_and_keeps_what_came_before():
    """A producer bug (an array with fewer children than its schema has fields) used to
    trip an assertion inside arrow-rs and poison the cache; it is the upstream's error."""

    def drop_a_child(array):
        array.n_children = 1

    good = pa.record_batch({"a": [1, 2], "b": [3, 4]})
    _malformed_second_batch_is_kept_as_the_failure(good, drop_a_child, "1 children", "has 2")


def test_string_offsets_that_decrease_are_the_upstreams_error_before_anything_reads_them():
    """A batch of flat columns is kept without an arrow-rs import: its offsets are checked
    from the C structs as it arrives."""
    from batchcorder._native import ffi

    decreasing = ffi.new("int32_t[]", [4, 2, 1])

    def point_at_decreasing_offsets(array):
        array.children[1].buffers[1] = decreasing

    good = pa.record_batch({"a": [1, 2], "s": ["ab", "cde"]})
    _malformed_second_batch_is_kept_as_the_failure(
        good, point_at_decreasing_offsets, '"s"', "offsets run from 4 to 1"
    )


# -- readers that mix Python reads, replays and an export --------------------------------


def first_ids(batches) -> list[int]:
    return [b.column(0)[0].as_py() for b in batches]


def test_python_reads_then_export_continue_at_the_same_batch():
    source = Counting(6)
    cache = StreamCache(source.reader())
    first = cache.reader()
    assert first_ids([next(first), next(first)]) == [0, 100]
    assert first.position == 2 and source.pulls == 2  # still lazy
    rest = pa.RecordBatchReader.from_stream(first).read_all()
    assert first_ids(rest.to_batches()) == [200, 300, 400, 500]
    assert first.closed
    with pytest.raises(ValueError, match="consumed"):
        next(first)
    # A second reader replays the batches the first one imported, then crosses to C for
    # the ones only the export read, then hands the rest to pyarrow at the right place.
    second = cache.reader()
    assert first_ids([next(second) for _ in range(4)]) == [0, 100, 200, 300]
    assert second.position == 4
    assert first_ids(pa.RecordBatchReader.from_stream(second).read_all().to_batches()) == [400, 500]
    assert source.pulls == 6


def test_an_upstream_failure_reaches_python_readers_typed_every_time():
    cache = StreamCache(Counting(5, fail_at=2).reader())
    for reader in (cache.reader(), cache.reader()):
        assert first_ids([next(reader), next(reader)]) == [0, 100]
        for _ in range(2):
            with pytest.raises(UpstreamError, match="x-marker from the producer") as failure:
                next(reader)
            assert isinstance(failure.value, ValueError)
            # Raised as ours: no pyarrow exception shown chained in the traceback.
            assert failure.value.__cause__ is None and failure.value.__suppress_context__
        assert reader.position == 2


def test_closing_a_reader_waits_for_a_read_in_progress_on_another_thread():
    release = threading.Event()
    started = threading.Event()

    def produce():
        yield batch(0)
        started.set()
        release.wait(timeout=30)
        yield batch(1)

    cache = StreamCache(pa.RecordBatchReader.from_batches(SCHEMA, produce()))
    reader = cache.reader()
    next(reader)
    got = []
    worker = threading.Thread(target=lambda: got.append(next(reader)))
    worker.start()
    assert started.wait(timeout=30)
    closer = threading.Thread(target=reader.close)
    closer.start()
    closer.join(timeout=0.2)
    assert closer.is_alive()  # blocked behind the read, not freeing the stream under it
    release.set()
    worker.join(timeout=30)
    closer.join(timeout=30)
    assert first_ids(got) == [100] and reader.closed
    with pytest.raises(StopIteration):
        next(reader)


def test_tiny_batches_are_copied_and_the_producers_arrays_released():
    """One-row batches cost the producer more to keep exported than their data: the cache
    keeps a copy, and pyarrow's pool no longer holds anything for them."""
    schema = pa.schema([("id", pa.int64()), ("x", pa.float64()), ("s", pa.string()),
                        ("b", pa.bool_())])
    count = 2_000

    def produce():
        for i in range(count):
            yield pa.record_batch(
                [pa.array([i]), pa.array([None if i % 3 == 0 else i / 2]),
                 pa.array([None if i % 5 == 0 else f"s{i}"]), pa.array([i % 2 == 0])],
                schema=schema)

    expected = pa.Table.from_batches(list(produce()), schema)
    gc.collect()
    pool_before = pa.total_allocated_bytes()
    cache = StreamCache(pa.RecordBatchReader.from_batches(schema, produce()))
    cache.ingest_all()
    gc.collect()
    # A producer's exported one-row batch holds over 1 KB of pyarrow's pool; a copy none.
    assert pa.total_allocated_bytes() - pool_before < count * 64
    for _ in range(2):
        replayed = pa.table(cache)
        assert replayed.equals(expected)
        assert replayed.num_rows == count and len(replayed.to_batches()) == count
    assert duckdb.sql("SELECT count(*), count(s), sum(id) FROM cache").fetchall() == [
        (count, count - count // 5, sum(range(count)))]


def _with_metadata() -> pa.Table:
    schema = SCHEMA.with_metadata({"origin": "test"})
    return pa.Table.from_batches([batch(0).cast(schema)], schema=schema)


def test_the_schema_is_answered_after_close_when_never_asked_before():
    table = _with_metadata()
    cache = StreamCache(table)
    cache.close()
    assert cache.schema.equals(table.schema, check_metadata=True)
    assert pa.schema(cache).equals(table.schema, check_metadata=True)
    assert "closed" in repr(cache)


def test_a_readers_schema_is_the_sources_with_its_metadata():
    table = _with_metadata()
    cache = StreamCache(table)
    reader = cache.reader()
    assert reader.schema.equals(table.schema, check_metadata=True)
    assert cache.schema.equals(table.schema, check_metadata=True)
    assert next(reader).schema.equals(table.schema, check_metadata=True)


@pytest.mark.parametrize("made", [lambda: SCHEMA.__arrow_c_schema__(), lambda: 42])
def test_a_source_that_hands_over_no_stream_capsule_is_a_type_error_naming_it(made):
    class NotAStream:
        def __arrow_c_stream__(self, requested_schema=None):
            return made()

    with pytest.raises(TypeError, match=r"source\.__arrow_c_stream__\(\) must be a PyCapsule "
                                        r"named 'arrow_array_stream'"):
        StreamCache(NotAStream())
