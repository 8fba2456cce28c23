"""Model-based test: random sequences of Python operations on a cache, checked against a
plain-Python model of which batches each reader must see and which errors must come."""

from __future__ import annotations


import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batchcorder import ReaderCapError, StreamCache
from conftest import STRESS_SCALE, temporary_directory

SCHEMA = pa.schema([("id", pa.int64())])
ROWS = 8


def batch(index: int) -> pa.RecordBatch:
    return pa.record_batch([pa.array(range(index * ROWS, (index + 1) * ROWS))], schema=SCHEMA)


operation = st.one_of(
    st.tuples(st.just("reader"), st.booleans()),
    st.tuples(st.just("read"), st.integers(0, 5), st.integers(1, 4)),
    st.tuples(st.just("export"), st.integers(0, 5), st.sampled_from(["pyarrow", "duckdb"])),
    st.tuples(st.just("drop"), st.integers(0, 5)),
    st.tuples(st.just("ingest_all")),
    st.tuples(st.just("close")),
)


@settings(max_examples=150 * STRESS_SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.integers(0, 10),
    fail_at=st.one_of(st.none(), st.integers(0, 10)),
    max_readers=st.one_of(st.none(), st.integers(1, 3)),
    tier=st.sampled_from(["memory", "on_insertion", "on_eviction"]),
    ops=st.lists(operation, max_size=25),
)
def test_operations_match_the_model(batches, fail_at, max_readers, tier, ops):
    fail_at = fail_at if fail_at is not None and fail_at < batches else None
    stop = batches if fail_at is None else fail_at

    def produce():
        for index in range(batches):
            if index == fail_at:
                raise ValueError("model failure")
            yield batch(index)

    with temporary_directory() as tmp:
        disk = {} if tier == "memory" else {
            "disk_path": tmp, "disk_capacity": 1 << 24, "memory_capacity": 100, "write_policy": tier,
        }
        cache = StreamCache(
            pa.RecordBatchReader.from_batches(SCHEMA, produce()), max_readers=max_readers, **disk
        )
        readers: list[list] = []  # [reader, position or None when gone]
        created, frontier, closed = 0, 0, False

        def expect_rows(position: int, count: int) -> list[int]:
            return [batch(i).column(0)[0].as_py() for i in range(position, position + count)]

        for op in ops:
            kind = op[0]
            if kind == "reader":
                from_start = op[1]
                if closed:
                    with pytest.raises(ValueError, match="closed"):
                        cache.reader(from_start)
                elif max_readers is not None and created >= max_readers:
                    with pytest.raises(ReaderCapError, match="Maximum number of readers"):
                        cache.reader(from_start)
                else:
                    readers.append([cache.reader(from_start), 0 if from_start else frontier])
                    created += 1
            elif kind in ("read", "export", "drop"):
                if op[1] >= len(readers) or readers[op[1]][1] is None:
                    continue
                entry = readers[op[1]]
                reader, position = entry
                if kind == "drop":
                    reader.close()
                    entry[1] = None
                    continue
                if closed:
                    with pytest.raises(ValueError, match="closed"):
                        next(reader)
                    continue
                if kind == "read":
                    want = min(op[2], stop - position)
                    got = [next(reader).column(0)[0].as_py() for _ in range(want)]
                    assert got == expect_rows(position, want)
                    position += want
                    frontier = max(frontier, position)
                    if want < op[2] and position == stop:
                        if fail_at is None:
                            with pytest.raises(StopIteration):
                                next(reader)
                            entry[1] = None
                            continue
                        with pytest.raises(ValueError, match="model failure"):
                            next(reader)
                    entry[1] = position
                else:
                    entry[1] = None
                    if op[2] == "pyarrow":
                        stream = pa.RecordBatchReader.from_stream(reader)
                        if fail_at is None:
                            rows = stream.read_all().column(0).to_pylist()
                            assert rows == list(range(position * ROWS, stop * ROWS))
                        else:
                            with pytest.raises(Exception, match="model failure"):
                                stream.read_all()
                    else:
                        con = duckdb.connect()
                        con.register("r", reader)
                        if fail_at is None:
                            assert con.sql("SELECT count(*) FROM r").fetchall() == [
                                ((stop - position) * ROWS,)
                            ]
                        else:
                            with pytest.raises(Exception, match="model failure"):
                                con.sql("SELECT count(*) FROM r").fetchall()
                        con.close()
                    frontier = stop
            elif kind == "ingest_all":
                if closed:
                    with pytest.raises(ValueError, match="closed"):
                        cache.ingest_all()
                elif fail_at is None:
                    assert cache.ingest_all() == batches
                else:
                    with pytest.raises(ValueError, match="model failure"):
                        cache.ingest_all()
                frontier = stop if not closed else frontier
            elif kind == "close":
                cache.close()
                closed = True
        if not closed:
            assert cache.ingested_count == min(frontier, stop)
            assert cache.stats().readers_created == created
        cache.close()
