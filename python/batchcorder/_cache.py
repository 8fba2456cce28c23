"""StreamCache: read a single-use Arrow stream once, replay it from any number of readers."""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

import pyarrow as pa

from ._capsules import STREAM_NAME, capsule_pointer
from ._casting import CastingStreamCache
from ._errors import check
from ._native import ffi, lib
from ._options import Compression, WritePolicy, options
from ._order import reader_options
from ._progress import ingest_reporting, log_changes
from ._random_access import RandomAccess
from ._reader import StreamCacheReader, reader_capsule
from ._saves import CacheBase, PersistedCache
from ._schema import as_schema, fields, schema_from_c
from ._sources import Source, as_stream
from ._stats import CacheStats, read_stats

__all__ = ["StreamCache", "PersistedCache"]


class StreamCache(RandomAccess, CacheBase):
    """Read a single-use Arrow stream once, replay it from any number of readers.

    Parameters
    ----------
    source
        The data, as it comes (:data:`batchcorder.Source`): any object with
        ``__arrow_c_stream__`` (a pyarrow Table or RecordBatchReader, a Polars
        DataFrame, a DuckDB relation, a nanoarrow or arro3 stream), an iterable or
        generator of ``pyarrow.RecordBatch``, a ``pyarrow.parquet.ParquetFile``, or a
        ``pyarrow.dataset.Dataset`` or ``Scanner``. It is read lazily, at most once, as
        readers ask for batches. Anything else raises ``TypeError`` naming the nearest
        accepted form.
    memory_capacity
        Budget in bytes for batches held in memory. Default: three quarters of physical
        memory. Each underlying buffer is counted once, however many batches slice it.
        Going over it raises ``MemoryError``.
    disk_path, disk_capacity
        The disk tier, given together: batches are written as Arrow IPC into a fresh
        private subdirectory of ``disk_path`` (a ``str`` or ``os.PathLike``, created if
        missing), at most ``disk_capacity`` bytes in all, and read back zero-copy through
        memory maps. The memory budget then keeps only the most recent batches in RAM.
        ``close()``, garbage collection and interpreter exit delete the subdirectory.
    write_policy
        ``"on_insertion"`` (default) writes every batch to disk as it is ingested;
        ``"on_eviction"`` writes a batch only when it leaves the memory budget, so a
        stream that fits in memory never touches disk. No effect in memory-only mode.
    max_readers
        Cap on readers ever created (including ``__iter__`` and ``__arrow_c_stream__``).
        Once all exist, batches every one of them has passed are dropped, so one pass
        over a stream larger than RAM runs in bounded memory; with the disk tier, passed
        segment files are deleted too.
    compression
        Keyword-only: ``"lz4"`` or ``"zstd"`` compress IPC buffers on disk (smaller files;
        reads decompress, so they copy). Default ``None``: zero-copy reads.
    segment_bytes
        Keyword-only: target size of one segment file on disk (default 64 MiB, at least
        4096). With ``max_readers``, a segment is deleted once every reader has passed
        it, so smaller segments give disk space back sooner.
    prefetch
        Keyword-only: a background thread reads up to this many batches ahead of the
        fastest reader, within the memory and disk budgets, so that a slow source and a
        slow consumer overlap. The source then runs on that thread (pyarrow takes the GIL
        there for a Python generator). Default ``None``: the source is read only as
        readers ask.
    persist_path
        Keyword-only: save the stream to this directory as it is read, as
        :meth:`persist` would at the end; the save appears there, whole, when the
        source ends, and the cache then pickles as a reference to it. With
        ``max_readers``, a stream larger than memory is saved in one bounded pass. A
        source error or ``close()`` before the end leaves nothing there. The path must
        not exist yet; its parent must.
    schema
        Keyword-only, for an iterable of RecordBatch: the stream's schema. Without it,
        the first batch is read when the cache is created, to learn the schema (it stays
        the stream's first batch); with it, nothing is read until a reader asks, and an
        empty iterable is an empty stream. Every batch must have this schema.

    ``cache[i]`` is batch ``i`` and ``cache.take(rows)`` the rows at those positions of
    the stream (:meth:`__getitem__`, :meth:`take`); neither is a reader.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from batchcorder import StreamCache
    >>> once = (pa.record_batch({"x": [i, i + 1]}) for i in range(0, 6, 2))  # a generator
    >>> cache = StreamCache(once)
    >>> pa.table(cache).num_rows, pa.table(cache).num_rows
    (6, 6)
    >>> cache[1].column("x").to_pylist(), cache.take([5, 0]).column("x").to_pylist()
    ([2, 3], [5, 0])
    """

    _source_rows: Optional[int]
    _logged: Optional[CacheStats]

    def __init__(
        self,
        source: Source,
        memory_capacity: Optional[int] = None,
        disk_path: Union[str, "os.PathLike[str]", None] = None,
        disk_capacity: Optional[int] = None,
        write_policy: WritePolicy = "on_insertion",
        max_readers: Optional[int] = None,
        *,
        compression: Optional[Compression] = None,
        segment_bytes: Optional[int] = None,
        prefetch: Optional[int] = None,
        persist_path: Union[str, "os.PathLike[str]", None] = None,
        schema: Optional[pa.Schema] = None,
    ) -> None:
        # Built before the source is touched: refused options leave it unread.
        built = options(
            memory_capacity=memory_capacity,
            disk_path=disk_path,
            disk_capacity=disk_capacity,
            write_policy=write_policy,
            max_readers=max_readers,
            compression=compression,
            segment_bytes=segment_bytes,
            prefetch=prefetch,
            persist_path=persist_path,
        )
        stream, rows = as_stream(source, schema)
        capsule = stream.__arrow_c_stream__()
        upstream = ffi.cast(
            "struct ArrowArrayStream *",
            capsule_pointer(capsule, STREAM_NAME, "source.__arrow_c_stream__()"),
        )
        out = ffi.new("BcCache **")
        # Moves the stream on success; on failure the capsule still owns and releases it.
        check(lib.bc_cache_new(upstream, built, out))
        self._adopt(out[0], max_readers, prefetch, with_disk=disk_path is not None)
        self._source_rows = rows

    @classmethod
    def in_memory(
        cls,
        source: Source,
        capacity: Optional[int] = None,
        max_readers: Optional[int] = None,
    ) -> "StreamCache":
        """A memory-only cache; ``capacity`` is the memory budget in bytes.

        >>> import pyarrow as pa
        >>> cache = StreamCache.in_memory(pa.table({"x": [1, 2]}), capacity=1 << 20)
        >>> cache.ingest_all(), len(cache)
        (1, 1)
        """
        return cls(source, memory_capacity=capacity, max_readers=max_readers)

    @classmethod
    def on_disk(
        cls,
        source: Source,
        path: Union[str, "os.PathLike[str]"],
        disk_capacity: int,
        memory_capacity: Optional[int] = None,
        write_policy: WritePolicy = "on_insertion",
        max_readers: Optional[int] = None,
    ) -> "StreamCache":
        """A cache with the disk tier under ``path`` (see the class docstring).

        >>> import tempfile, pyarrow as pa
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     with StreamCache.on_disk(pa.table({"x": [1, 2]}), tmp, 1 << 20) as cache:
        ...         pa.table(cache).num_rows
        2
        """
        return cls(
            source,
            memory_capacity=memory_capacity,
            disk_path=path,
            disk_capacity=disk_capacity,
            write_policy=write_policy,
            max_readers=max_readers,
        )

    # -- properties -------------------------------------------------------------------

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema of the stream."""
        schema = self._schema
        if schema is None:
            pointer = self._handle.even_if_closed()
            schema = self._schema = schema_from_c(lambda c: lib.bc_cache_schema(pointer, c))
        return schema

    @property
    def ingested_count(self) -> int:
        """Batches pulled from the upstream so far."""
        return int(lib.bc_cache_ingested_count(self._handle.get()))

    @property
    def upstream_exhausted(self) -> bool:
        """True once the upstream has been read to its end."""
        return bool(lib.bc_cache_upstream_exhausted(self._handle.get()))

    @property
    def max_readers(self) -> Optional[int]:
        """The reader cap, or None when every batch is kept."""
        return self._max_readers

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._handle.closed

    # -- operations -------------------------------------------------------------------

    def reader(
        self,
        from_start: bool = True,
        *,
        shuffle: Optional[int] = None,
        shuffle_window: Optional[int] = None,
        shuffle_rows: bool = False,
        shard: Optional[tuple[int, int]] = None,
    ) -> "StreamCacheReader":
        """A new independent reader, at batch 0 or (``from_start=False``) at the
        ingestion frontier, so that it sees only batches not yet pulled.

        ``shuffle=seed`` returns the batches in a seeded random order (the same in any
        process): the whole stream is read first, unless ``shuffle_window=n`` shuffles
        through a window of ``n`` batches instead; ``shuffle_rows=True`` permutes the
        rows of each batch too. ``shard=(index, count)`` returns every ``count``-th
        batch of that order from ``index`` on. See docs/training.md.

        >>> import pyarrow as pa
        >>> cache = StreamCache(pa.table({"x": [1, 2]}))
        >>> [b.num_rows for b in cache.reader()]
        [2]
        """
        return StreamCacheReader._create(
            self, from_start, None, shuffle=shuffle, shuffle_window=shuffle_window,
            shuffle_rows=shuffle_rows, shard=shard,
        )

    def _check_reader(self, from_start: bool = True, **order: Any) -> None:
        """Raise what :meth:`reader` would raise for these arguments, without making a
        reader: it counts toward no ``max_readers``, so a cap reached (or batches
        already evicted) is left to :meth:`reader`."""
        opts = reader_options(from_start, **order)
        check(lib.bc_cache_check_reader_options(self._handle.get(), ffi.NULL if opts is None else opts))

    def ingest_all(
        self,
        progress: bool = False,
        callback: Optional[Callable[["CacheStats"], object]] = None,
    ) -> int:
        """Pull the rest of the upstream into the cache; returns the total batch count.

        Idempotent: a second call pulls nothing and returns the same count.

        Parameters
        ----------
        progress
            Show a tqdm progress bar (rows, batches, bytes and rate; with a total when
            the source's length is known). Needs ``pip install batchcorder[progress]``.
        callback
            Called with :meth:`stats` after each batch, for logging instead of a bar.

        >>> import pyarrow as pa
        >>> cache = StreamCache(pa.table({"x": [1, 2, 3]}).to_reader(max_chunksize=1))
        >>> seen = []
        >>> cache.ingest_all(callback=lambda s: seen.append(s.rows_ingested))
        3
        >>> seen
        [1, 2, 3]
        """
        handle = self._handle.get()
        if not progress and callback is None:
            out = ffi.new("uint64_t *")
            check(lib.bc_cache_ingest_all(handle, out))
            self._log_changes()
            return int(out[0])
        ingest_reporting(handle, self.stats, self._source_rows, progress, callback)
        self._log_changes()
        return self.ingested_count

    def __len__(self) -> int:
        """The batch count, known once the upstream is exhausted.

        Raises ``TypeError`` before that: call :meth:`ingest_all` first (a length that
        grew while you looked would be a trap).

        >>> import pyarrow as pa
        >>> cache = StreamCache(pa.table({"x": [1, 2, 3]}).to_reader(max_chunksize=2))
        >>> cache.ingest_all(), len(cache)
        (2, 2)
        """
        if not self.upstream_exhausted:
            raise TypeError(
                "len() of a StreamCache is known only once the upstream is exhausted; "
                "call ingest_all() first"
            )
        return self.ingested_count

    def _log_changes(self) -> None:
        """Log, at DEBUG, the spills, evictions and segment deletions since last time."""
        if not self.closed:
            self._logged = log_changes(self.stats, self._logged)

    def cast(self, target_schema: Any, *, safe: bool = True) -> "CastingStreamCache":
        """A replayable view whose readers cast every batch to ``target_schema``.

        Field count and names must match; an impossible cast raises ``ValueError``
        naming the field. As in pyarrow, a value that does not convert (``"b"`` to int64,
        1000 to int8) makes the read of its batch raise ``ValueError`` naming the field and
        the value, and the reader stays at that batch; ``safe=False`` turns such values
        into nulls instead.

        >>> import pyarrow as pa
        >>> cache = StreamCache(pa.table({"x": [1, 2]}))
        >>> pa.table(cache.cast(pa.schema([("x", pa.float64())]))).schema.field("x").type
        DataType(double)
        """
        return CastingStreamCache(self, as_schema(target_schema), safe=safe)

    def stats(self) -> CacheStats:
        """A snapshot of the cache's counters.

        >>> import pyarrow as pa
        >>> cache = StreamCache(pa.table({"x": [1, 2]}), max_readers=1)
        >>> _ = pa.table(cache)
        >>> cache.stats().readers_created, cache.stats().batches_evicted
        (1, 1)
        """
        return read_stats(self._handle.get())

    def close(self) -> None:
        """Release every cached batch and the upstream, and delete the disk directory.
        Idempotent.

        Readers then raise ``ValueError``; batches they already returned stay valid.

        >>> import pyarrow as pa
        >>> cache = StreamCache(pa.table({"x": [1, 2]}))
        >>> kept = next(iter(cache))
        >>> cache.close(); cache.closed, kept.num_rows
        (True, 2)
        """
        if not self.closed:
            self._log_changes()
        self._handle.close()

    # -- protocols --------------------------------------------------------------------

    def __iter__(self) -> "StreamCacheReader":
        """A new reader from batch 0."""
        return self.reader(from_start=True)

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        """A new reader from batch 0, as an ``arrow_array_stream`` PyCapsule.

        ``requested_schema`` (an ``arrow_schema`` capsule) casts each batch to it.
        """
        return reader_capsule(self._handle.get(), requested_schema)

    def __arrow_c_schema__(self) -> Any:
        """The schema as an ``arrow_schema`` PyCapsule; creates no reader."""
        return self.schema.__arrow_c_schema__()

    def __repr__(self) -> str:
        if self.closed:
            return "<StreamCache closed>"
        stats = self.stats()
        cap = "" if self._max_readers is None else f" max_readers={self._max_readers}"
        cap += "" if self._prefetch is None else f" prefetch={self._prefetch}"
        if self._opened is not None:
            return (
                f"<StreamCache persisted={str(self._opened.path)!r} "
                f"batches={self._opened.batches} rows={self._opened.rows}{cap} "
                f"schema=({fields(self.schema)})>"
            )
        tier = "memory+disk" if self._with_disk else "memory"
        disk = f" disk_bytes={stats.disk_bytes}" if self._with_disk else ""
        return (
            f"<StreamCache ingested={stats.batches_ingested} "
            f"exhausted={stats.upstream_exhausted} tier={tier} "
            f"memory_bytes={stats.memory_bytes}{disk}{cap} schema=({fields(self.schema)})>"
        )
