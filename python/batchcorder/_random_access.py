"""Random access on a StreamCache: ``cache[i]`` (a batch by its index) and
``cache.take(rows)`` (rows by their position in the stream), through the C calls
``bc_cache_batch`` and ``bc_cache_take``."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, Iterable, Union

import pyarrow as pa
import pyarrow.compute as pc

from ._errors import check
from ._exceptions import OutOfRangeError
from ._native import ffi, lib

if TYPE_CHECKING:
    import numpy

    from ._handle import CacheHandle

    RowIndices = Union[Iterable[int], "numpy.ndarray", pa.Array, pa.ChunkedArray]
else:
    RowIndices = Any


def _row_array(row_indices: Any) -> pa.Array:
    """``row_indices`` as a ``uint64`` array, refused (naming the problem) unless it holds
    integers only, none null or negative."""
    if isinstance(row_indices, (str, bytes, int)):
        raise TypeError(
            "row_indices must be a list, a NumPy array or a pyarrow array of integers, "
            f"got {type(row_indices).__name__}; for one batch by its index use cache[i]"
        )
    if isinstance(row_indices, (pa.Array, pa.ChunkedArray)):
        rows = row_indices
    else:
        try:
            rows = pa.array(row_indices)
        except (TypeError, pa.ArrowException) as err:
            raise TypeError(
                "row_indices must be a list, a NumPy array or a pyarrow array of "
                f"integers; {type(row_indices).__name__} does not convert ({err})"
            ) from None
    if isinstance(rows, pa.ChunkedArray):
        rows = rows.combine_chunks()
    if len(rows) == 0:
        return pa.array([], pa.uint64())
    if not pa.types.is_integer(rows.type):
        raise TypeError(f"row_indices must hold integers, got {rows.type} values")
    if rows.null_count:
        raise ValueError(
            f"row_indices holds {rows.null_count} nulls (the first at position "
            f"{rows.is_null().index(True).as_py()}); drop them or fill them with a row"
        )
    if pa.types.is_signed_integer(rows.type):
        lowest = pc.min(rows).as_py()
        if lowest < 0:
            raise OutOfRangeError(
                f"row_indices holds the negative row {lowest} (at position "
                f"{pc.index(rows, lowest).as_py()}); rows count from 0 over the whole "
                "stream, and a negative one is refused as pa.Table.take refuses it"
            )
    return rows.cast(pa.uint64())


class RandomAccess:
    """``cache[i]`` and ``cache.take(rows)``: what :class:`~batchcorder.StreamCache`
    adds to its readers for map-style access. Neither is a reader: ``max_readers`` does
    not count it."""

    __slots__ = ()
    _handle: CacheHandle
    schema: pa.Schema
    if TYPE_CHECKING:

        def ingest_all(self) -> int: ...  # the cache's own

    def __getitem__(self, index: int) -> pa.RecordBatch:
        """Batch ``index`` of the stream, as a ``pyarrow.RecordBatch``.

        The source is read up to that batch and no further. A negative index counts from
        the end, which needs the stream's length: it reads the whole source first.
        ``IndexError`` (:class:`~batchcorder.OutOfRangeError`) past the end, with the
        batch count; ``TypeError`` for anything but an integer (a bool or a slice too:
        ``[cache[i] for i in range(a, b)]`` gives batches ``a`` to ``b``);
        :class:`~batchcorder.BatchEvictedError` for a batch ``max_readers`` already
        dropped; :class:`~batchcorder.CacheClosedError` once closed.

        >>> import pyarrow as pa
        >>> from batchcorder import StreamCache
        >>> cache = StreamCache(pa.table({"x": [1, 2, 3]}).to_reader(max_chunksize=2))
        >>> cache[0].num_rows, cache.ingested_count   # read as far as batch 0
        (2, 1)
        >>> cache[-1].column("x").to_pylist()
        [3]
        """
        if isinstance(index, bool) or not hasattr(index, "__index__"):
            what = "a slice" if isinstance(index, slice) else type(index).__name__
            raise TypeError(
                f"StreamCache indices must be integers (batch positions), got {what}; "
                "for batches a to b use [cache[i] for i in range(a, b)], for rows "
                "cache.take(rows)"
            )
        position = operator.index(index)
        if position < 0:
            count = self.ingest_all()
            if position + count < 0:
                raise OutOfRangeError(
                    f"batch index {position} is out of range: the stream has {count} "
                    "batches; a negative index counts from the end, down to "
                    f"-{count}"
                )
            position += count
        if position >= 1 << 64:
            raise OutOfRangeError(f"batch index {position} is out of range: it exceeds 2**64 - 1")
        out = ffi.new("struct ArrowArray *")
        check(lib.bc_cache_batch(self._handle.get(), position, out))
        return pa.RecordBatch._import_from_c(int(ffi.cast("uintptr_t", out)), self.schema)

    def take(self, row_indices: RowIndices) -> pa.RecordBatch:
        """The stream's rows at ``row_indices`` (positions over the whole stream, 0 the
        first row of the first batch), in that order, as one ``pyarrow.RecordBatch``:
        what ``pa.Table.take`` gives on the stream as one table. A row may come more than
        once.

        ``row_indices`` is a list, a NumPy array or a pyarrow array of integers. The
        cache finds each row's batch through its row index (the rows of every batch,
        summed, kept as batches arrive), reads only the batches holding the rows and the
        source only as far as the largest row; on a save opened with
        :meth:`~batchcorder.StreamCache.open` it learns a batch's rows on that batch's
        first read. Dictionary columns come out with one dictionary covering the rows'
        batches. A negative row, or one past the end, raises ``IndexError``
        (:class:`~batchcorder.OutOfRangeError`, with the row count), as
        ``pa.Table.take`` refuses them; a null one ``ValueError``; anything but integers
        ``TypeError``.

        >>> import pyarrow as pa
        >>> from batchcorder import StreamCache
        >>> cache = StreamCache(pa.table({"x": [10, 11, 12, 13]}).to_reader(max_chunksize=2))
        >>> cache.take([3, 0, 3]).column("x").to_pylist()
        [13, 10, 13]
        """
        rows = _row_array(row_indices)
        address = rows.buffers()[1].address + 8 * rows.offset if len(rows) else 0
        out = ffi.new("struct ArrowArray *")
        check(
            lib.bc_cache_take(
                self._handle.get(), ffi.cast("const uint64_t *", address), len(rows), out
            )
        )
        return pa.RecordBatch._import_from_c(int(ffi.cast("uintptr_t", out)), self.schema)
