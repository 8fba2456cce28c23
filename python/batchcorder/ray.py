"""Read a cache into a Ray Dataset (``pip install 'batchcorder[ray]'``).

:func:`read_cache` reads a cache that a :class:`~batchcorder.flight.CacheServer` (or
``batchcorder-flight``) serves, or a save (:meth:`~batchcorder.StreamCache.persist`) on
storage that every node reaches, with one Ray read task per shard: shard ``i`` of ``n``
holds every ``n``-th batch from batch ``i``, as ``cache.reader(shard=(i, n))`` gives it.
Each task streams its share batch by batch, so no task holds the whole stream; over
Flight, each task is one DoGet, so one reader of the served cache (its ``max_readers``
counts them). ``import batchcorder`` does not import this module, and this module
imports Ray only when used: without it, :func:`read_cache` raises ``ImportError`` naming
the extra. See the source repository's docs/engines.md.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union, cast

import pyarrow as pa

from ._engines import DEFAULT_TIMEOUT, SaveSource, Shipped, Source, shard_count
from ._engines import source as _source

if TYPE_CHECKING:
    import ray.data

__all__ = ["CacheDatasource", "read_cache"]


def _ray() -> Any:
    """The ``ray`` module, or an ImportError naming the extra that installs it."""
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise ImportError("batchcorder.ray needs Ray Data: pip install 'batchcorder[ray]'") from err
    return ray


def __getattr__(name: str) -> Any:
    # CacheDatasource subclasses Ray's Datasource, so it is made on first use: importing
    # this module needs no Ray (nor does collecting its doctests).
    if name == "CacheDatasource":
        made = type("CacheDatasource", (_CacheDatasource, _ray().data.Datasource), {})
        made.__module__, made.__doc__ = __name__, _CacheDatasource.__doc__
        globals()["CacheDatasource"] = made  # pickled by reference, as a module-level class
        return made
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _CacheDatasource:
    """A Ray Data datasource over a cache: ``ray.data.read_datasource(CacheDatasource(...))``.

    ``source`` is a Flight location (``"grpc://host:port"``, ``"grpc+tls://..."``) with
    the ``name`` of a cache served there, ``token`` and ``tls_root_certs`` as
    :func:`batchcorder.flight.connect` takes them; or the path of a save, read with
    ``verify`` as :meth:`StreamCache.open <batchcorder.StreamCache.open>` does.
    ``timeout`` (seconds) bounds each call that plans the read (the schema, the batch
    count), so an unreachable server fails at once, and each task's wait for its next
    batch over Flight: a stalled server or network fails the task with ``TimeoutError``.

    ``shards`` is the number of read tasks. By default it is the parallelism Ray asks
    for, capped by the cache's batch count when that is known (a save, or a served cache
    whose source was read to its end when the datasource was made). Set it to the served cache's ``max_readers`` when
    that cap is for these tasks.
    """

    def __init__(
        self,
        source: Union[str, "os.PathLike[str]"],
        name: Optional[str] = None,
        *,
        token: Optional[str] = None,
        tls_root_certs: Union[str, "os.PathLike[str]", bytes, None] = None,
        verify: Optional[bool] = None,
        shards: Optional[int] = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        super().__init__()  # Ray's Datasource, the class's other base
        self._source: Source = _source(
            source, name, token=token, tls_root_certs=tls_root_certs, verify=verify,
            timeout=timeout,
        )
        if shards is not None:
            shard_count(None, shards, 1)  # checks it now, before any I/O
        self._schema, self._batches = self._source.plan()
        self._shards = shards

    @property
    def schema(self) -> pa.Schema:
        """The cache's schema, which every block has."""
        return self._schema

    def __repr__(self) -> str:
        return f"CacheDatasource({self._source!r}, shards={self._shards!r})"

    def get_name(self) -> str:
        return "batchcorder"

    def estimate_inmemory_data_size(self) -> Optional[int]:
        """The save's data file size; None over Flight, where it is not known."""
        if isinstance(self._source, SaveSource):
            return (self._source.path / "data.arrow").stat().st_size
        return None

    def get_read_tasks(
        self,
        parallelism: int,
        per_task_row_limit: Optional[int] = None,
        data_context: Any = None,
    ) -> list[Any]:
        """One task per shard; see the class."""
        from ray.data import ReadTask
        from ray.data.block import BlockMetadata

        count = shard_count(self._batches, self._shards, parallelism)
        return [
            ReadTask(
                _ShardRead(self._source, (index, count), self._schema),
                BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None),
                schema=self._schema,
                per_task_row_limit=per_task_row_limit,
            )
            for index in range(count)
        ]


class _ShardRead:
    """A read task's function: the blocks of one shard (a picklable callable)."""

    def __init__(self, src: Source, shard: tuple[int, int], schema: pa.Schema) -> None:
        self.src, self.shard, self.shipped = src, shard, Shipped(schema)

    def __call__(self) -> Iterator[pa.Table]:
        schema = self.shipped.schema
        empty = True
        for batch in self.src.read(self.shard):
            empty = False
            yield pa.Table.from_batches([batch], schema)
        if empty:  # so that an empty shard still gives the schema
            yield pa.table([pa.nulls(0, f.type) for f in schema], schema=schema)


def read_cache(
    source: Union[str, "os.PathLike[str]"],
    name: Optional[str] = None,
    *,
    token: Optional[str] = None,
    tls_root_certs: Union[str, "os.PathLike[str]", bytes, None] = None,
    verify: Optional[bool] = None,
    shards: Optional[int] = None,
    timeout: float = DEFAULT_TIMEOUT,
    **read_args: Any,
) -> "ray.data.Dataset":
    """A ``ray.data.Dataset`` of a cache served over Flight or saved on shared storage.

    The arguments are :class:`CacheDatasource`'s, but for ``shards``, which by default
    is the cache's batch count when it is known, capped by Ray's
    ``DataContext.read_op_min_num_blocks`` (200), and that number when not. The others (``concurrency``,
    ``ray_remote_args``, ``num_cpus``...) go to ``ray.data.read_datasource``. The
    Dataset has the cache's schema and reads lazily, as Ray Datasets do: each
    execution of it reads the cache again, which a cache makes cheap.
    """
    engine = _ray()
    datasource = __getattr__("CacheDatasource")(
        source, name, token=token, tls_root_certs=tls_root_certs, verify=verify,
        shards=shards, timeout=timeout,
    )
    # One output block stream per task: left to itself, Ray splits the blocks of fewer
    # tasks than it wants, and its splitting refuses view types (binary_view, string_view).
    minimum = engine.data.DataContext.get_current().read_op_min_num_blocks
    read_args.setdefault("override_num_blocks", shard_count(datasource._batches, shards, minimum))
    return cast("ray.data.Dataset", engine.data.read_datasource(datasource, **read_args))
