"""StreamCache takes a user's single-use data as it comes: generators and iterables of
RecordBatch, ParquetFile, Dataset and Scanner, read lazily and exactly once; anything
else is refused with the nearest accepted form."""

from __future__ import annotations

import io
import pydoc
from pathlib import Path
from typing import Any, Iterator

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import batchcorder
from batchcorder import StreamCache

SCHEMA = pa.schema([("id", pa.int64()), ("price", pa.float64())])


def batch(start: int, rows: int = 100) -> pa.RecordBatch:
    return pa.record_batch(
        {"id": list(range(start, start + rows)), "price": [0.5] * rows}, schema=SCHEMA
    )


def expected(batches: int, rows: int = 100) -> pa.Table:
    return pa.Table.from_batches([batch(b * rows, rows) for b in range(batches)])


class Counted:
    """A generator of batches that counts how many it was asked for."""

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.pulled = 0

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for b in range(self.batches):
            self.pulled += 1
            yield batch(b * 100)


def replay_everywhere(cache: StreamCache) -> list[int]:
    """Rows seen by pyarrow twice, DuckDB and Polars: four readers of the cache."""
    return [
        pa.table(cache).num_rows,
        pa.table(cache).num_rows,
        duckdb.sql("SELECT count(*) FROM cache").fetchall()[0][0],
        pl.DataFrame(cache).height,
    ]


def test_a_generator_is_pulled_lazily_and_exactly_once():
    source = Counted(5)
    cache = StreamCache(iter(source))
    assert source.pulled == 1  # the first batch, for the schema
    assert cache.ingested_count == 0
    assert replay_everywhere(cache) == [500] * 4
    assert source.pulled == 5
    assert pa.table(cache).equals(expected(5))  # the first batch was not lost


def test_with_schema_nothing_is_pulled_until_a_reader_asks():
    source = Counted(3)
    cache = StreamCache(iter(source), schema=SCHEMA)
    assert source.pulled == 0
    reader = cache.reader()
    next(reader)
    assert source.pulled == 1
    assert [b.num_rows for b in reader] == [100, 100] and source.pulled == 3


def test_an_empty_iterable_needs_a_schema():
    with pytest.raises(ValueError, match=r"yielded no batches.*pass schema="):
        StreamCache(iter([]))
    cache = StreamCache(iter([]), schema=SCHEMA)
    assert pa.table(cache).num_rows == 0 and cache.schema == SCHEMA


def test_a_list_of_batches_is_checked_before_anything_is_read():
    cache = StreamCache([batch(0), batch(100)])
    assert pa.table(cache).equals(expected(2))
    mixed = [batch(0), pa.record_batch({"id": ["a"], "price": [1.0]})]
    with pytest.raises(TypeError, match=r"batch 1 of the source has the schema \(id: string"):
        StreamCache(mixed)
    with pytest.raises(TypeError, match=r"pa\.concat_tables"):
        StreamCache([pa.table({"x": [1]}), pa.table({"x": [2]})])


def test_a_generator_whose_schema_changes_fails_at_that_batch():
    def drifting() -> Iterator[pa.RecordBatch]:
        yield batch(0)
        yield pa.record_batch({"id": [1.5], "price": [1.0]})

    cache = StreamCache(drifting())
    with pytest.raises(TypeError, match=r"batch 1 of the source has the schema \(id: double") as err:
        cache.ingest_all()
    assert isinstance(err.value, batchcorder.UpstreamError)
    reader = cache.reader()
    assert next(reader).num_rows == 100  # the batch before it stays readable
    with pytest.raises(TypeError, match="batch 1 of the source"):
        next(reader)


def test_a_generator_of_the_wrong_things_names_the_item():
    with pytest.raises(TypeError, match=r"item 0 of the source is a dict.*from_pylist"):
        StreamCache(iter([{"id": 1}]))
    with pytest.raises(TypeError, match=r"item 0 of the source is of type int"):
        StreamCache(x for x in range(3))


class CountingFile(io.FileIO):
    """A real file that counts the bytes read from it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "r")
        self.bytes_read = 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        n = super().readinto(buffer)
        self.bytes_read += n or 0
        return n  # type: ignore[no-any-return]


def test_a_parquet_file_is_read_once(tmp_path):
    path = tmp_path / "trades.parquet"
    table = expected(20, rows=10_000)
    pq.write_table(table, path, row_group_size=10_000)  # 20 row groups
    file = CountingFile(path)
    parquet = pq.ParquetFile(file)
    footer = file.bytes_read
    assert footer < path.stat().st_size / 2
    cache = StreamCache(parquet)
    assert file.bytes_read == footer  # nothing more read yet
    assert replay_everywhere(cache) == [200_000] * 4
    once = file.bytes_read - footer
    # One pass reads the row groups once: never more than the file.
    assert path.stat().st_size / 2 < once <= path.stat().st_size
    assert pa.table(cache).equals(table)
    assert file.bytes_read - footer == once and cache.upstream_exhausted


class CountingFileSystem(pafs.FileSystemHandler):
    """The local file system, counting the files opened for reading."""

    def __init__(self) -> None:
        self.local = pafs.LocalFileSystem()
        self.opened: list[str] = []

    def open_input_file(self, path: str) -> Any:
        self.opened.append(path)
        return self.local.open_input_file(path)

    def open_input_stream(self, path: str) -> Any:
        self.opened.append(path)
        return self.local.open_input_stream(path)

    # The rest as the local file system does it.
    def get_type_name(self) -> str:
        return "counting"

    def equals(self, other: Any) -> bool:
        return self is other

    def get_file_info(self, paths: Any) -> Any:
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector: Any) -> Any:
        return self.local.get_file_info(selector)

    def normalize_path(self, path: str) -> str:
        return path

    def create_dir(self, path: str, recursive: bool) -> None:
        raise NotImplementedError

    def delete_dir(self, path: str) -> None:
        raise NotImplementedError

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        raise NotImplementedError

    def delete_root_dir_contents(self) -> None:
        raise NotImplementedError

    def delete_file(self, path: str) -> None:
        raise NotImplementedError

    def move(self, src: str, dest: str) -> None:
        raise NotImplementedError

    def copy_file(self, src: str, dest: str) -> None:
        raise NotImplementedError

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        raise NotImplementedError

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        raise NotImplementedError


@pytest.mark.parametrize("form", ["Dataset", "Scanner"])
def test_a_dataset_or_scanner_is_scanned_once(tmp_path, form):
    for part in range(3):
        pq.write_table(expected(6).slice(part * 200, 200), tmp_path / f"part-{part}.parquet")
    handler = CountingFileSystem()
    dataset = ds.dataset(str(tmp_path), format="parquet", filesystem=pafs.PyFileSystem(handler))
    source = dataset if form == "Dataset" else dataset.scanner(columns=["id"])
    opened_before = len(handler.opened)
    cache = StreamCache(source)
    assert replay_everywhere(cache) == [600] * 4
    files = handler.opened[opened_before:]
    assert sorted(Path(f).name for f in files) == [f"part-{p}.parquet" for p in range(3)]
    assert pa.table(cache).num_rows == 600 and len(handler.opened) == opened_before + 3


def test_the_progress_bar_has_a_total_when_the_source_knows_it(tmp_path, capsys):
    path = tmp_path / "t.parquet"
    pq.write_table(expected(3), path, row_group_size=100)
    StreamCache(pq.ParquetFile(path)).ingest_all(progress=True)
    assert "300/300" in capsys.readouterr().err
    StreamCache([batch(0), batch(100)]).ingest_all(progress=True)
    assert "200/200" in capsys.readouterr().err
    StreamCache(pa.table({"x": range(10)}).to_reader()).ingest_all(progress=True)
    err = capsys.readouterr().err
    assert "10 rows" in err and "10.0" not in err  # whole rows, no total to show


@pytest.mark.parametrize(
    "source, says",
    [
        ("trades.parquet", r"a path\. Open it first: pyarrow\.parquet\.ParquetFile\(path\)"),
        (Path("trades.parquet"), r"a path\. Open it first"),
        (b"\x00", r"pa\.ipc\.open_stream\(data\)"),
        ({"x": [1, 2]}, r"pa\.table\(mapping\)"),
        ([{"x": 1}, {"x": 2}], r"of dicts \(rows\).*pa\.Table\.from_pylist\(rows\)"),
        (pa.array([1, 2]), r"Name the column: pa\.table"),
        (42, r"source must be an Arrow stream .*got int$"),
    ],
    ids=["str path", "Path", "bytes", "dict", "list of dicts", "Array", "int"],
)
def test_a_refused_source_names_the_nearest_accepted_form(source, says):
    with pytest.raises(TypeError, match=says):
        StreamCache(source)


def test_schema_is_only_for_iterables():
    with pytest.raises(TypeError, match=r"schema= is for an iterable.*cache\.cast\(schema\)"):
        StreamCache(pa.table({"x": [1]}), schema=pa.schema([("x", pa.int64())]))
    with pytest.raises(TypeError, match="schema must be a pyarrow.Schema"):
        StreamCache(iter([batch(0)]), schema="id: int64")


def test_help_names_the_accepted_sources():
    text = pydoc.render_doc(StreamCache, renderer=pydoc.plaintext)
    assert "source: 'Source'" in text and "'Any'" not in text.split("__init__")[1][:200]
    assert "generator of ``pyarrow.RecordBatch``" in text
    assert "ParquetFile" in str(batchcorder.Source)
