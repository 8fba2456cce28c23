"""Casts: a value that does not convert fails loudly at its batch, as pyarrow's casts do,
unless the caller asks for nulls with ``safe=False``."""

from __future__ import annotations

import pyarrow as pa
import pytest

from batchcorder import StreamCache

STRINGS = pa.schema([("s", pa.string())])
AS_INT64 = pa.schema([("s", pa.int64())])
INTS = pa.schema([("i", pa.int64())])
AS_INT8 = pa.schema([("i", pa.int8())])


def batches_of(schema: pa.Schema, *columns: list) -> pa.RecordBatchReader:
    batches = [pa.record_batch([pa.array(values, schema.field(0).type)], schema=schema) for values in columns]
    return pa.RecordBatchReader.from_batches(schema, batches)


def test_pyarrow_itself_raises_for_these_values() -> None:
    # The behaviour the cache follows.
    with pytest.raises(pa.ArrowInvalid):
        pa.array(["a", "b", "3"]).cast(pa.int64())
    with pytest.raises(pa.ArrowInvalid):
        pa.array([1, 1000, -70000]).cast(pa.int8())


@pytest.mark.parametrize(
    ("schema", "values", "target", "field", "value"),
    [
        (STRINGS, ["a", "b", "3"], AS_INT64, "s", "'a'"),
        (INTS, [1, 1000, -70000], AS_INT8, "i", "1000"),
    ],
)
def test_a_cast_view_raises_naming_the_field_and_the_value(schema, values, target, field, value) -> None:
    cache = StreamCache(batches_of(schema, values))
    with pytest.raises(pa.ArrowInvalid) as caught:
        pa.table(cache.cast(target))
    assert f'"{field}"' in str(caught.value) and value in str(caught.value)
    with pytest.raises(ValueError, match=value):
        next(iter(cache.cast(target)))


def test_a_requested_schema_on_export_raises_too() -> None:
    cache = StreamCache(batches_of(INTS, [1, 1000]))
    with pytest.raises(pa.ArrowInvalid, match="1000"):
        pa.RecordBatchReader.from_stream(cache, schema=AS_INT8).read_all()


def test_a_reader_cast_raises() -> None:
    cache = StreamCache(batches_of(STRINGS, ["1", "b"]))
    with pytest.raises(pa.ArrowInvalid, match="'b'"):
        cache.reader().cast(AS_INT64).read_all()


def test_safe_false_turns_values_that_do_not_convert_into_nulls() -> None:
    strings = StreamCache(batches_of(STRINGS, ["a", "b", "3"]))
    ints = StreamCache(batches_of(INTS, [1, 1000, -70000]))
    assert pa.table(strings.cast(AS_INT64, safe=False)).column("s").to_pylist() == [None, None, 3]
    assert [b.column(0).to_pylist() for b in ints.cast(AS_INT8, safe=False)] == [[1, None, None]]
    reader = ints.reader().cast(AS_INT8, safe=False)
    assert reader.schema == AS_INT8
    assert reader.read_all().column("i").to_pylist() == [1, None, None]
    assert "safe=False" in repr(ints.cast(AS_INT8, safe=False))


def test_safe_must_be_a_bool() -> None:
    cache = StreamCache(batches_of(INTS, [1]))
    with pytest.raises(TypeError, match="safe"):
        cache.cast(AS_INT8, safe=0)  # type: ignore[arg-type]


def test_a_failed_cast_keeps_the_reader_at_that_batch() -> None:
    cache = StreamCache(batches_of(STRINGS, ["1"], ["x"], ["3"]))
    reader = cache.cast(AS_INT64).reader()
    assert next(reader).column(0).to_pylist() == [1]
    for _ in range(2):  # the failing batch fails again: it is not skipped
        with pytest.raises(ValueError, match="'x'"):
            next(reader)
    assert reader.position == 1


def test_a_failed_cast_through_the_c_stream_is_not_skipped() -> None:
    cache = StreamCache(batches_of(STRINGS, ["1"], ["x"], ["3"]))
    reader = pa.RecordBatchReader.from_stream(cache, schema=AS_INT64)
    assert reader.read_next_batch().column(0).to_pylist() == [1]
    for _ in range(2):
        with pytest.raises(pa.ArrowInvalid, match="'x'"):
            reader.read_next_batch()


def test_the_same_data_read_without_the_cast_is_untouched() -> None:
    cache = StreamCache(batches_of(STRINGS, ["1"], ["x"]))
    with pytest.raises(ValueError):
        pa.table(cache.cast(AS_INT64))
    assert pa.table(cache).column("s").to_pylist() == ["1", "x"]
