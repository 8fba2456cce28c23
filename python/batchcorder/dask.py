"""Read a cache into a Dask DataFrame (``pip install 'batchcorder[dask]'``).

:func:`read_cache` reads a cache that a :class:`~batchcorder.flight.CacheServer` serves,
or a save (:meth:`~batchcorder.StreamCache.persist`) on storage every worker reaches, as
one partition per shard (``dd.from_map``): partition ``i`` of ``n`` holds every ``n``-th
batch from batch ``i``, as ``cache.reader(shard=(i, n))`` gives it. The columns are
pyarrow-backed (``pd.ArrowDtype``; see :func:`carried_type` for the four kinds
of column that change type), and the DataFrame's meta comes from the cache's
schema without reading any batch. ``import batchcorder`` does not import this module,
and this module imports Dask only when used: without it, :func:`read_cache` raises
``ImportError`` naming the extra. See the source repository's docs/engines.md.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union, cast

import pyarrow as pa

from ._engines import DEFAULT_TIMEOUT, Shipped, Source, shard_count
from ._engines import source as _source

if TYPE_CHECKING:
    import dask.dataframe as dd
    import pandas as pd

__all__ = ["read_cache", "carried_type", "meta", "to_pandas"]


def _pandas() -> Any:
    """The ``pandas`` module, or an ImportError naming the extra that installs Dask."""
    try:
        import dask.dataframe  # noqa: F401  (what the extra brings; pandas comes with it)
        import pandas
    except ImportError as err:
        raise ImportError("batchcorder.dask needs Dask's DataFrame: pip install 'batchcorder[dask]'") from err
    return pandas

# Partitions when neither ``shards`` nor the cache's batch count says otherwise.
DEFAULT_SHARDS = 8


def carried_type(type_: pa.DataType) -> pa.DataType:
    """The Arrow type a column of ``type_`` has in the DataFrame: the same, but for the
    types that Dask's meta cannot hold (it needs pyarrow's ``take``, which they lack):
    ``string_view`` becomes ``large_string``, ``binary_view`` ``large_binary``, and a
    run-end encoded column its decoded values; and a map whose keys are sorted, a map
    (pyarrow's pickle, which Dask moves partitions with, drops ``keys_sorted``)."""
    if pa.types.is_run_end_encoded(type_):
        return carried_type(type_.value_type)
    if pa.types.is_map(type_) and type_.keys_sorted:  # pickled, pyarrow's map types drop it
        return pa.map_(type_.key_field, type_.item_field)
    return {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}.get(type_, type_)


def _decode_runs(array: pa.Array) -> pa.Array:
    """A run-end encoded array's values, one per row (``pc.run_end_decode`` has no kernel
    for dictionary values, so the runs are expanded with ``take``)."""
    import numpy as np

    ends = array.run_ends.to_numpy(zero_copy_only=False)
    rows = np.repeat(np.arange(len(ends)), np.diff(ends, prepend=0))
    return array.values.take(pa.array(rows[array.offset:array.offset + len(array)]))


def _carried(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_run_end_encoded(column.type):
        column = pa.chunked_array([_decode_runs(c) for c in column.chunks], column.type.value_type)
    target = carried_type(column.type)
    return column if column.type == target else column.cast(target)


def to_pandas(table: pa.Table) -> "pd.DataFrame":
    """``table`` as the pandas DataFrame a partition holds: every column an
    ``ArrowDtype`` over its :func:`carried_type`, with the values unchanged."""
    columns = [_carried(column) for column in table.columns]
    fields = [field.with_type(column.type) for field, column in zip(table.schema, columns)]
    return pa.table(columns, schema=pa.schema(fields, table.schema.metadata)).to_pandas(
        types_mapper=_pandas().ArrowDtype)


def meta(schema: pa.Schema) -> "pd.DataFrame":
    """The empty DataFrame that stands for a cache of ``schema`` (Dask's ``meta``)."""
    # One empty chunk per column (pa.nulls makes one of any type): pandas pickles an
    # empty column of no chunk by rebuilding it, which fails for unions, among others.
    return to_pandas(pa.table([pa.nulls(0, field.type) for field in schema], schema=schema))


class _Partition:
    """The function ``dd.from_map`` calls for each shard (picklable). Its ``columns``
    argument lets Dask's optimizer ask for fewer columns."""

    def __init__(self, src: Source, count: int, schema: pa.Schema) -> None:
        self.src, self.count, self.shipped = src, count, Shipped(schema)

    def __call__(self, index: int, columns: Optional[Sequence[str]] = None) -> "pd.DataFrame":
        table = pa.Table.from_batches(list(self.src.read((index, self.count))), self.shipped.schema)
        return to_pandas(table if columns is None else table.select(list(columns)))


def read_cache(
    source: Union[str, "os.PathLike[str]"],
    name: Optional[str] = None,
    *,
    token: Optional[str] = None,
    tls_root_certs: Union[str, "os.PathLike[str]", bytes, None] = None,
    verify: Optional[bool] = None,
    shards: Optional[int] = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> "dd.DataFrame":
    """A Dask DataFrame of a cache served over Flight or saved on shared storage.

    ``source`` is a Flight location (``"grpc://host:port"``, ``"grpc+tls://..."``) with
    the ``name`` of a cache served there, ``token`` and ``tls_root_certs`` as
    :func:`batchcorder.flight.connect` takes them; or the path of a save, opened with
    ``verify`` as :meth:`StreamCache.open <batchcorder.StreamCache.open>` does.
    ``timeout`` (seconds) bounds the calls that plan the read, and each task's wait for
    its next batch over Flight: a stalled server or network fails the task with
    ``TimeoutError``.

    ``shards`` is the number of partitions, one read task and (over Flight) one reader
    each; by default 8, capped by the cache's batch count when it is known. Each
    partition is read whole into its worker's memory, as Dask partitions are: choose
    ``shards`` so that one fits.
    """
    _pandas()  # first: without Dask, say which extra to install
    src = _source(
        source, name, token=token, tls_root_certs=tls_root_certs, verify=verify,
        timeout=timeout,
    )
    if shards is not None:
        shard_count(None, shards, DEFAULT_SHARDS)  # checks it now, before any I/O
    schema, known = src.plan()
    count = shard_count(known, shards, DEFAULT_SHARDS)
    import dask.dataframe as dd

    frame = dd.from_map(  # type: ignore[no-untyped-call, unused-ignore]
        _Partition(src, count, schema),
        range(count),
        meta=meta(schema),
        label="batchcorder-read-cache",
        enforce_metadata=False,
    )
    return cast("dd.DataFrame", frame)
