"""What ``StreamCache`` takes as its source, and how each form becomes one Arrow stream.

Accepted, each read lazily and at most once:

- anything with ``__arrow_c_stream__`` (a pyarrow Table, RecordBatch or
  RecordBatchReader, a Polars DataFrame, a DuckDB relation, a nanoarrow or arro3 stream);
- an iterable or generator of ``pyarrow.RecordBatch``, its schema given by ``schema=`` or
  taken from its first batch (which is then read when the cache is created, and kept as
  the stream's first batch);
- a ``pyarrow.parquet.ParquetFile``, read row group by row group;
- a ``pyarrow.dataset.Dataset`` or ``Scanner``, scanned once.

Anything else is refused with a ``TypeError`` naming the accepted form nearest to it.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Optional, Protocol, Union

import pyarrow as pa

from ._schema import fields as _fields

if TYPE_CHECKING:
    import pyarrow.dataset
    import pyarrow.parquet


class ArrowStreamExportable(Protocol):
    """Any object that exports an Arrow C stream (the Arrow PyCapsule interface)."""

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any: ...


#: What ``StreamCache(source)`` accepts: an Arrow stream (anything with
#: ``__arrow_c_stream__``), an iterable or generator of ``pyarrow.RecordBatch``, a
#: ``pyarrow.parquet.ParquetFile``, or a ``pyarrow.dataset.Dataset`` or ``Scanner``.
Source = Union[
    ArrowStreamExportable,
    Iterable[pa.RecordBatch],
    "pyarrow.parquet.ParquetFile",
    "pyarrow.dataset.Dataset",
    "pyarrow.dataset.Scanner",
]

_ACCEPTED = (
    "an Arrow stream (anything with __arrow_c_stream__: a pyarrow Table or "
    "RecordBatchReader, a Polars DataFrame, a DuckDB relation, ...), an iterable or "
    "generator of pyarrow.RecordBatch, a pyarrow.parquet.ParquetFile, or a "
    "pyarrow.dataset.Dataset or Scanner"
)


def as_stream(source: Any, schema: Any = None) -> tuple[Any, Optional[int]]:
    """``source`` as an object with ``__arrow_c_stream__``, and its row count when the
    source knows it without being read (for a progress bar's total).

    Only the first batch of an iterable given without ``schema`` is read here.
    """
    if schema is not None and not isinstance(schema, pa.Schema):
        if not hasattr(schema, "__arrow_c_schema__"):
            raise TypeError(
                f"schema must be a pyarrow.Schema (or export __arrow_c_schema__) or None, "
                f"got {_name(schema)}"
            )
        schema = pa.schema(schema)
    if hasattr(source, "__arrow_c_stream__"):
        _no_schema_for(source, schema)
        rows = getattr(source, "num_rows", None)
        return source, rows if isinstance(rows, int) else None
    parquet = sys.modules.get("pyarrow.parquet")  # loaded if the caller made a ParquetFile
    if parquet is not None and isinstance(source, parquet.ParquetFile):
        _no_schema_for(source, schema)
        stream = pa.RecordBatchReader.from_batches(source.schema_arrow, source.iter_batches())
        return stream, int(source.metadata.num_rows)
    dataset = sys.modules.get("pyarrow.dataset")
    if dataset is not None and isinstance(source, (dataset.Dataset, dataset.Scanner)):
        _no_schema_for(source, schema)
        scanner = source.scanner() if isinstance(source, dataset.Dataset) else source
        # No row count: counting a file dataset's rows opens every file a second time.
        return scanner.to_reader(), None
    refused = _refusal(source)
    if refused is not None:
        raise TypeError(refused)
    return _batches(source, schema)


def _no_schema_for(source: Any, schema: Any) -> None:
    if schema is not None:
        raise TypeError(
            f"schema= is for an iterable of RecordBatch; a {_name(source)} has its own "
            "schema. To read it with other types, use cache.cast(schema)"
        )


def _batches(source: Iterable[Any], schema: Optional[pa.Schema]) -> tuple[Any, Optional[int]]:
    """An iterable of RecordBatch as a stream that checks every batch against the schema."""
    rows: Optional[int] = None
    if isinstance(source, (list, tuple)):
        # Already in memory: check every item now, so a mistake fails before any read.
        for index, item in enumerate(source):
            _check_batch(item, index, schema if schema is not None else _first_schema(source))
        rows = sum(batch.num_rows for batch in source)
    batches = iter(source)
    if schema is None:
        first = next(batches, None)
        if first is None:
            raise ValueError(
                f"the source ({_name(source)}) yielded no batches, so it has no schema: "
                "pass schema= (a pyarrow.Schema) to cache an empty stream"
            )
        _check_batch(first, 0, None)
        schema = first.schema
        batches = itertools.chain([first], batches)  # the first batch stays in the stream
    return pa.RecordBatchReader.from_batches(schema, _checked(batches, schema)), rows


def _first_schema(items: Union[list[Any], tuple[Any, ...]]) -> Optional[pa.Schema]:
    first = items[0] if items else None
    return first.schema if isinstance(first, pa.RecordBatch) else None


def _checked(batches: Iterator[Any], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    for index, batch in enumerate(batches):
        _check_batch(batch, index, schema)
        yield batch


def _check_batch(item: Any, index: int, schema: Optional[pa.Schema]) -> None:
    """Raise ``TypeError`` saying how to fix ``item``, the ``index``-th of the source,
    unless it is a RecordBatch of ``schema`` (any schema when None)."""
    if isinstance(item, pa.RecordBatch):
        if schema is None or item.schema.equals(schema):
            return
        raise TypeError(
            f"batch {index} of the source has the schema ({_fields(item.schema)}), not the "
            f"stream's ({_fields(schema)}): every batch of a stream has one schema. Cast "
            "it first (batch.cast(schema)), or make one table of them with "
            "pa.concat_tables(tables, promote_options='default')"
        )
    if isinstance(item, pa.Table):
        hint = (
            "a pyarrow.Table, not a RecordBatch: pass one table itself, "
            "pa.concat_tables(tables) for several, or yield from table.to_batches()"
        )
    elif isinstance(item, Mapping):
        hint = (
            "a dict: a row or columns, not a batch; make batches with "
            "pa.RecordBatch.from_pylist(rows) or pa.record_batch(columns)"
        )
    else:
        hint = f"of type {_name(item)}, not a pyarrow.RecordBatch"
    # The first item may show the whole source was not meant as batches.
    accepted = f"; source must be {_ACCEPTED}" if index == 0 else ""
    raise TypeError(f"item {index} of the source is {hint}{accepted}")


def _refusal(source: Any) -> Optional[str]:
    """The message for a source that is no accepted form, naming the nearest one; None
    for an iterable, whose items are checked as they come."""
    got = f"got {_name(source)}"
    if isinstance(source, (str, bytes, bytearray)) or hasattr(source, "__fspath__"):
        if isinstance(source, (bytes, bytearray)):
            return (
                f"source must be {_ACCEPTED}; {got}. For Arrow IPC bytes, pass "
                "pa.ipc.open_stream(data)"
            )
        return (
            f"source must be {_ACCEPTED}; {got}, a path. Open it first: "
            "pyarrow.parquet.ParquetFile(path) for a Parquet file, "
            "pyarrow.dataset.dataset(path) for a directory or other formats, "
            "pa.ipc.open_stream(path) for an Arrow IPC stream"
        )
    module = type(source).__module__.split(".")[0]
    if module == "pandas":
        return (
            f"source must be {_ACCEPTED}; {got}. Convert it once: "
            "pa.Table.from_pandas(frame), or a pandas of 2.2 or later, which exports "
            "__arrow_c_stream__ itself"
        )
    if module == "numpy":
        return f"source must be {_ACCEPTED}; {got}. Name its columns: pa.table({{'x': array}})"
    if isinstance(source, Mapping):
        return f"source must be {_ACCEPTED}; {got}. For columns, pass pa.table(mapping)"
    if isinstance(source, pa.Array) or isinstance(source, pa.ChunkedArray):
        return f"source must be {_ACCEPTED}; {got}. Name the column: pa.table({{'x': array}})"
    if isinstance(source, (list, tuple)) and source and isinstance(source[0], Mapping):
        return (
            f"source must be {_ACCEPTED}; {got} of dicts (rows). Make a table of them: "
            "pa.Table.from_pylist(rows)"
        )
    if not isinstance(source, Iterable):
        return f"source must be {_ACCEPTED}; {got}"
    return None


def _name(value: Any) -> str:
    kind = type(value)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
