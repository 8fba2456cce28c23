"""StreamCache and its readers: thin Python handles over libbatchcorder's C API."""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional, TypeVar, Union

import pyarrow as pa

from ._capsules import SCHEMA_NAME, STREAM_NAME, capsule_pointer, stream_capsule
from ._errors import CacheClosedError, check, raise_status, status_error
from ._native import ffi, lib

__all__ = ["StreamCache", "StreamCacheReader", "CastingStreamCache", "CacheStats"]

WritePolicy = Literal["on_insertion", "on_eviction"]
Compression = Literal["lz4", "zstd"]
_WRITE_POLICIES = {
    "on_insertion": lib.BC_WRITE_ON_INSERTION,
    "on_eviction": lib.BC_WRITE_ON_EVICTION,
}
_COMPRESSIONS = {
    None: lib.BC_COMPRESSION_NONE,
    "lz4": lib.BC_COMPRESSION_LZ4,
    "zstd": lib.BC_COMPRESSION_ZSTD,
}

_log = logging.getLogger("batchcorder")
# Python objects kept per cache for fast Python replays (see _Handle).
_REPLAY_BUDGET_BYTES = 32 << 20
_reader_next = lib.bc_reader_next


def _positive_int(name: str, value: Any, minimum: int = 1) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _fields(schema: pa.Schema, most: int = 4) -> str:
    """A short field list for a repr."""
    shown = ", ".join(f"{f.name}: {f.type}" for f in list(schema)[:most])
    return shown + (f", ... {len(schema) - most} more" if len(schema) > most else "")


def _disk_dir(disk_path: Any, disk_capacity: Any) -> Optional[Path]:
    """Check the disk tier's two parameters, which go together."""
    if disk_path is None and disk_capacity is None:
        return None
    if disk_path is None or disk_capacity is None:
        missing = "disk_path" if disk_path is None else "disk_capacity"
        raise ValueError(
            f"disk_path and disk_capacity go together: {missing} is missing; "
            "give both to enable the disk tier, or neither"
        )
    if not isinstance(disk_path, (str, os.PathLike)):
        raise TypeError(f"disk_path must be a str or os.PathLike, got {type(disk_path).__name__}")
    _positive_int("disk_capacity", disk_capacity)
    path = Path(disk_path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"disk_path {str(path)!r} is a file; pass a directory")
    return path


def _schema_from_c(fill: Any) -> pa.Schema:
    """Call ``fill(struct ArrowSchema *)`` and import the result into pyarrow."""
    c_schema = ffi.new("struct ArrowSchema *")
    check(fill(c_schema))
    return pa.Schema._import_from_c(int(ffi.cast("uintptr_t", c_schema)))


def _cast_reader(stream: Any, target: pa.Schema, safe: bool) -> None:
    """Make the reader ``stream`` cast its later batches to ``target``."""
    if not isinstance(safe, bool):
        raise TypeError(f"safe must be a bool, got {type(safe).__name__}")
    on_failure = lib.BC_CAST_FAILURE_ERROR if safe else lib.BC_CAST_FAILURE_NULL
    # The capsule owns the schema struct: it must outlive the call that reads it.
    capsule = target.__arrow_c_schema__()
    check(lib.bc_reader_cast_with(stream, _requested_schema_pointer(capsule), on_failure))


def _requested_schema_pointer(requested_schema: Any) -> Any:
    if requested_schema is None:
        return ffi.NULL
    address = capsule_pointer(requested_schema, SCHEMA_NAME, "requested_schema")
    return ffi.cast("struct ArrowSchema *", address)


def _as_schema(schema: Any) -> pa.Schema:
    if isinstance(schema, pa.Schema):
        return schema
    if hasattr(schema, "__arrow_c_schema__"):
        return pa.schema(schema)
    raise TypeError(
        f"target_schema must be a pyarrow.Schema or implement __arrow_c_schema__, "
        f"got {type(schema).__name__}"
    )


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a cache's counters (from ``bc_cache_stats``, which C users read too).

    Examples
    --------
    >>> import pyarrow as pa
    >>> cache = StreamCache(pa.table({"x": [1, 2, 3]}))
    >>> _ = cache.ingest_all()
    >>> stats = cache.stats()
    >>> stats.batches_ingested, stats.rows_ingested, stats.upstream_exhausted
    (1, 3, True)
    """

    batches_ingested: int
    rows_ingested: int
    memory_bytes: int
    disk_bytes: int
    batches_evicted: int
    segments_deleted: int
    readers_live: int
    readers_created: int
    upstream_exhausted: bool
    upstream_wait_seconds: float


class _Handle:
    """Owns one ``BcCache *``; every use checks that it is still open.

    ``replay`` holds the batches Python readers imported, by position, when the
    cache never drops a batch (memory only, no ``max_readers``): later Python readers
    return those objects instead of crossing the C boundary again. The objects share the
    cached buffers; their own overhead (about 1 KiB per column, measured) is kept under
    ``_REPLAY_BUDGET_BYTES``, after which replays take the C path.
    """

    def __init__(self, pointer: Any, replayable: bool) -> None:
        self._pointer = ffi.gc(pointer, lib.bc_cache_free)
        self._closed = False
        self.replay: Optional[list[pa.RecordBatch]] = [] if replayable else None
        self.replay_limit = 0
        self.replay_lock = threading.Lock()

    def get(self) -> Any:
        if self._closed:
            raise CacheClosedError(
                "this StreamCache is closed; create a new StreamCache from a fresh source"
            )
        return self._pointer

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.replay is not None:
                # Readers holding the list see it empty and ask the closed cache instead.
                self.replay.clear()
                self.replay = None
            check(lib.bc_cache_close(self._pointer))

    def keep(self, replay: list[pa.RecordBatch], position: int, batch: pa.RecordBatch) -> None:
        """Keep ``batch`` for later Python readers if it is the next one ``replay`` lacks.

        A list by position is cheaper to fill and to free than a dict. A batch past its
        end (read by a reader that started at the frontier) is not kept; readers racing
        for the same position keep the first.
        """
        with self.replay_lock:
            if position == len(replay):
                replay.append(batch)

    def finished_at(self, position: int) -> bool:
        """True when the stream is known to end exactly at ``position``."""
        pointer = self._pointer
        return (
            not self._closed
            and lib.bc_cache_upstream_exhausted(pointer)
            and lib.bc_cache_ingested_count(pointer) == position
        )


_Self = TypeVar("_Self", bound="_ClosesOnExit")


class _ClosesOnExit:
    """A context manager that calls ``close()`` on exit."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamCache(_ClosesOnExit):
    """Read a single-use Arrow stream once, replay it from any number of readers.

    Parameters
    ----------
    source
        Any object with ``__arrow_c_stream__``: a pyarrow Table or RecordBatchReader, a
        Polars DataFrame, a DuckDB relation, a nanoarrow or arro3 stream. It is read
        lazily, at most once, as readers ask for batches.
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

    Examples
    --------
    >>> import pyarrow as pa
    >>> from batchcorder import StreamCache
    >>> once = pa.RecordBatchReader.from_batches(
    ...     pa.schema([("x", pa.int64())]), [pa.record_batch({"x": [1, 2, 3]})])
    >>> cache = StreamCache(once)
    >>> pa.table(cache).num_rows, pa.table(cache).num_rows
    (3, 3)
    """

    def __init__(
        self,
        source: Any,
        memory_capacity: Optional[int] = None,
        disk_path: Union[str, "os.PathLike[str]", None] = None,
        disk_capacity: Optional[int] = None,
        write_policy: WritePolicy = "on_insertion",
        max_readers: Optional[int] = None,
        *,
        compression: Optional[Compression] = None,
        segment_bytes: Optional[int] = None,
    ) -> None:
        with_disk = disk_path is not None or disk_capacity is not None
        memory_capacity = _positive_int("memory_capacity", memory_capacity, minimum=0 if with_disk else 1)
        max_readers = _positive_int("max_readers", max_readers)
        if write_policy not in _WRITE_POLICIES:
            raise ValueError(
                f"write_policy must be 'on_insertion' or 'on_eviction', got {write_policy!r}"
            )
        if compression not in _COMPRESSIONS:
            raise ValueError(f"compression must be None, 'lz4' or 'zstd', got {compression!r}")
        disk_dir = _disk_dir(disk_path, disk_capacity)
        segment_bytes = _positive_int("segment_bytes", segment_bytes)
        if not hasattr(source, "__arrow_c_stream__"):
            raise TypeError(
                "source must implement __arrow_c_stream__ (a pyarrow Table or "
                "RecordBatchReader, a Polars DataFrame, a DuckDB relation, ...), "
                f"got {type(source).__name__}"
            )
        capsule = source.__arrow_c_stream__()
        upstream = ffi.cast(
            "struct ArrowArrayStream *",
            capsule_pointer(capsule, STREAM_NAME, "source.__arrow_c_stream__()"),
        )
        options = ffi.gc(lib.bc_options_new(), lib.bc_options_free)
        if memory_capacity is not None:
            check(lib.bc_options_set_memory_capacity(options, memory_capacity))
        if max_readers is not None:
            check(lib.bc_options_set_max_readers(options, max_readers))
        if disk_dir is not None:
            check(lib.bc_options_set_disk(options, os.fsencode(disk_dir), disk_capacity))
            check(lib.bc_options_set_write_policy(options, _WRITE_POLICIES[write_policy]))
            check(lib.bc_options_set_compression(options, _COMPRESSIONS[compression]))
            if segment_bytes is not None:
                check(lib.bc_options_set_segment_bytes(options, segment_bytes))
        out = ffi.new("BcCache **")
        # Moves the stream on success; on failure the capsule still owns and releases it.
        check(lib.bc_cache_new(upstream, options, out))
        self._handle = _Handle(out[0], replayable=disk_dir is None and max_readers is None)
        self._schema = _schema_from_c(lambda c: lib.bc_cache_schema(out[0], c))
        self._handle.replay_limit = _REPLAY_BUDGET_BYTES // (1024 * (len(self._schema) + 1))
        self._disk_dir = disk_dir
        rows = getattr(source, "num_rows", None)
        self._source_rows: Optional[int] = rows if isinstance(rows, int) else None
        self._logged: Optional[CacheStats] = None
        _open_caches.add(self)
        self._max_readers = max_readers
        self._memory_capacity = memory_capacity

    @classmethod
    def in_memory(
        cls,
        source: Any,
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
        source: Any,
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
        return self._schema

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
        return self._handle._closed

    # -- operations -------------------------------------------------------------------

    def reader(self, from_start: bool = True) -> "StreamCacheReader":
        """A new independent reader, at batch 0 or (``from_start=False``) at the
        ingestion frontier, so that it sees only batches not yet pulled.

        >>> import pyarrow as pa
        >>> cache = StreamCache(pa.table({"x": [1, 2]}))
        >>> [b.num_rows for b in cache.reader()]
        [2]
        """
        return StreamCacheReader._create(self, from_start, None)

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
        bar = _progress_bar(self._source_rows) if progress else None
        pulled = ffi.new("bool *")
        try:
            while True:
                check(lib.bc_cache_ingest_next(handle, pulled))
                if not pulled[0]:
                    break
                stats = self.stats()
                if bar is not None:
                    bar.update(stats.rows_ingested - bar.n)
                    bar.set_postfix(
                        batches=stats.batches_ingested,
                        MiB=round((stats.memory_bytes + stats.disk_bytes) / 2**20, 1),
                    )
                if callback is not None:
                    callback(stats)
        finally:
            if bar is not None:
                bar.close()
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
        if not _log.isEnabledFor(logging.DEBUG) or self.closed:
            return
        now, before = self.stats(), self._logged
        self._logged = now
        if before is None:
            before = CacheStats(0, 0, 0, 0, 0, 0, 0, 0, False, 0.0)
        if now.disk_bytes > before.disk_bytes:
            _log.debug("spilled %d bytes to disk", now.disk_bytes - before.disk_bytes)
        if now.batches_evicted > before.batches_evicted:
            _log.debug("evicted %d batches", now.batches_evicted - before.batches_evicted)
        if now.segments_deleted > before.segments_deleted:
            _log.debug("deleted %d segments", now.segments_deleted - before.segments_deleted)

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
        return CastingStreamCache(self, _as_schema(target_schema), safe=safe)

    def stats(self) -> CacheStats:
        """A snapshot of the cache's counters.

        >>> import pyarrow as pa
        >>> cache = StreamCache(pa.table({"x": [1, 2]}), max_readers=1)
        >>> _ = pa.table(cache)
        >>> cache.stats().readers_created, cache.stats().batches_evicted
        (1, 1)
        """
        c_stats = ffi.new("BcStats *")
        check(lib.bc_cache_stats(self._handle.get(), c_stats))
        return CacheStats(
            batches_ingested=c_stats.batches_ingested,
            rows_ingested=c_stats.rows_ingested,
            memory_bytes=c_stats.memory_bytes,
            disk_bytes=c_stats.disk_bytes,
            batches_evicted=c_stats.batches_evicted,
            segments_deleted=c_stats.segments_deleted,
            readers_live=c_stats.readers_live,
            readers_created=c_stats.readers_created,
            upstream_exhausted=bool(c_stats.upstream_exhausted),
            upstream_wait_seconds=c_stats.upstream_wait_ns / 1e9,
        )

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
        return _reader_capsule(self._handle.get(), requested_schema)

    def __arrow_c_schema__(self) -> Any:
        """The schema as an ``arrow_schema`` PyCapsule; creates no reader."""
        return self._schema.__arrow_c_schema__()

    def __repr__(self) -> str:
        if self.closed:
            return "<StreamCache closed>"
        stats = self.stats()
        fields = _fields(self._schema)
        cap = "" if self._max_readers is None else f" max_readers={self._max_readers}"
        tier = "memory" if self._disk_dir is None else "memory+disk"
        disk = "" if self._disk_dir is None else f" disk_bytes={stats.disk_bytes}"
        return (
            f"<StreamCache ingested={stats.batches_ingested} "
            f"exhausted={stats.upstream_exhausted} tier={tier} "
            f"memory_bytes={stats.memory_bytes}{disk}{cap} schema=({fields})>"
        )


# Closed at interpreter exit, so that no disk-tier directory outlives the process.
_open_caches: "weakref.WeakSet[StreamCache]" = weakref.WeakSet()


@atexit.register
def _close_open_caches() -> None:
    for cache in list(_open_caches):
        try:
            cache.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def _progress_bar(total_rows: Optional[int]) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(
            "ingest_all(progress=True) needs tqdm: pip install 'batchcorder[progress]'"
        ) from None
    return tqdm(total=total_rows, unit="rows", unit_scale=True, desc="ingest")


def _free_stream_now(stream: Any) -> None:
    """Free a ``bc_stream_new`` struct now, detaching its garbage-collection destructor."""
    ffi.gc(stream, None)
    lib.bc_stream_free(stream)


def _open_view(stream: Any) -> pa.RecordBatchReader:
    """A pyarrow reader over a ``bc_reader_view`` of ``stream``: it imports each batch in
    C++, about 1 us less per batch than a cffi call plus ``RecordBatch._import_from_c``."""
    view = ffi.new("struct ArrowArrayStream *")
    check(lib.bc_reader_view(stream, view))
    return pa.RecordBatchReader._import_from_c(int(ffi.cast("uintptr_t", view)))


def _reader_capsule(handle: Any, requested_schema: Any, cast: Optional[tuple[pa.Schema, bool]] = None) -> Any:
    """A new reader from the start as a capsule, cast to ``requested_schema`` (a capsule)
    or as ``cast`` (a schema and ``safe``) says."""
    stream = lib.bc_stream_new()
    if stream == ffi.NULL:
        raise MemoryError("cannot allocate an ArrowArrayStream")
    try:
        check(lib.bc_cache_reader(handle, True, _requested_schema_pointer(requested_schema), stream))
        if cast is not None:
            _cast_reader(stream, *cast)
    except BaseException:
        lib.bc_stream_free(stream)
        raise
    return stream_capsule(stream)


class StreamCacheReader(_ClosesOnExit):
    """One pass over a :class:`StreamCache`, with its own position.

    Get one from :meth:`StreamCache.reader`; do not construct it. A reader is its own
    iterator of ``pyarrow.RecordBatch``. Export it once with ``__arrow_c_stream__``
    (``pa.RecordBatchReader.from_stream(reader)``, DuckDB, Polars...); after that it is
    consumed. Calls on one reader are serialized; create one reader per thread for
    parallel replays. As a context manager it releases the reader on exit.

    Examples
    --------
    >>> import pyarrow as pa
    >>> cache = StreamCache(pa.table({"x": [1, 2, 3]}).to_reader(max_chunksize=1))
    >>> with cache.reader() as reader:
    ...     first = next(reader)
    ...     reader.position, first.num_rows
    (1, 1)
    >>> pa.RecordBatchReader.from_stream(cache.reader()).read_all().num_rows
    3
    """

    __slots__ = (
        "_stream", "_schema", "_exported",
        "_lock", "_handle", "_replay", "_replay_limit", "_position", "_lag", "_view",
    )
    _stream: Any
    _schema: pa.Schema
    _exported: bool
    _lock: threading.Lock
    _handle: _Handle
    # The cache's imported batches (see _Handle), for plain readers; None otherwise.
    _replay: Optional[list[pa.RecordBatch]]
    _replay_limit: int
    # Python-side position, and how far the C reader is behind it.
    _position: int
    _lag: int
    # A pyarrow reader through `bc_reader_view` of `_stream`, made on the first read that
    # crosses the C boundary; dropped before `_stream` is released.
    _view: Optional[pa.RecordBatchReader]

    def __init__(self) -> None:
        raise TypeError("create readers with StreamCache.reader()")

    @classmethod
    def _create(
        cls,
        cache: StreamCache,
        from_start: bool,
        target: Optional[pa.Schema],
        safe: bool = True,
    ) -> "StreamCacheReader":
        if not isinstance(from_start, bool):
            raise TypeError(f"from_start must be a bool, got {type(from_start).__name__}")
        handle = cache._handle.get()
        stream = ffi.gc(lib.bc_stream_new(), lib.bc_stream_free)
        check(lib.bc_cache_reader(handle, bool(from_start), ffi.NULL, stream))
        if target is not None:
            _cast_reader(stream, target, safe)
        schema = cache.schema if target is None else target
        self = cls.__new__(cls)
        self._stream = stream
        self._schema = schema
        self._exported = False
        self._lock = threading.Lock()
        self._handle = cache._handle
        self._replay = cache._handle.replay if target is None else None
        self._replay_limit = cache._handle.replay_limit
        self._position = 0
        self._lag = 0
        self._view = None
        if not from_start and self._replay is not None:
            out = ffi.new("uint64_t *")
            check(lib.bc_reader_position(stream, out))
            self._position = int(out[0])
        return self

    @property
    def schema(self) -> pa.Schema:
        """The schema of the batches this reader returns (``ValueError`` once exported)."""
        if self._exported:
            self._live_stream()
        return self._schema

    @property
    def closed(self) -> bool:
        """True once the reader is exhausted or exported through ``__arrow_c_stream__``."""
        return self._stream is None

    @property
    def position(self) -> int:
        """Index of the next batch this reader returns."""
        out = ffi.new("uint64_t *")
        check(lib.bc_reader_position(self._live_stream(), out))
        return int(out[0]) + self._lag

    def _catch_up(self, stream: Any) -> None:
        """Move the C reader to this reader's position (it lags after replayed batches)."""
        array = ffi.new("struct ArrowArray *")
        while self._lag:
            status = _reader_next(stream, array)
            if status:
                raise_status(status)
            if array.release:
                array.release(array)
            self._lag -= 1

    def _live_stream(self) -> Any:
        if self._stream is None:
            if self._exported:
                raise ValueError(
                    "this reader was already consumed by __arrow_c_stream__; "
                    "create a new reader with StreamCache.reader()"
                )
            raise ValueError("this reader is exhausted; create a new one with StreamCache.reader()")
        return self._stream

    def __iter__(self) -> "StreamCacheReader":
        return self

    def __next__(self) -> pa.RecordBatch:
        # The hot path of `for batch in cache`: kept to as few Python operations as it can.
        with self._lock:
            stream = self._stream
            if stream is None:
                if self._exported:
                    self._live_stream()
                raise StopIteration
            position = self._position
            replay = self._replay
            if replay is not None and position < len(replay):
                try:
                    batch = replay[position]
                except IndexError:  # close() emptied it meanwhile: the C path says so
                    pass
                else:
                    # Imported before by another Python reader: no C call at all.
                    self._position = position + 1
                    self._lag += 1
                    return batch
            if self._lag:
                if self._handle.finished_at(position):
                    self._end(stream)
                    raise StopIteration
                self._catch_up(stream)
            view = self._view
            if view is None:
                view = self._view = _open_view(stream)
            try:
                batch = view.read_next_batch()
            except StopIteration:
                self._end(stream)
                raise
            except Exception:
                self._view = None  # made again on the next read, in a known state
                status = lib.bc_reader_failure(stream)
                if status:
                    # Our own failure, typed; pyarrow's rendering of it adds nothing.
                    raise status_error(status) from None
                raise
            self._position = position + 1
            if replay is not None and position < self._replay_limit:
                self._handle.keep(replay, position, batch)
            return batch

    def _end(self, stream: Any) -> None:
        """Release the reader: its view first, then its stream."""
        self._view = None
        self._stream = None
        _free_stream_now(stream)

    def read_all(self) -> pa.Table:
        """The rest of the stream as a ``pyarrow.Table``.

        >>> import pyarrow as pa
        >>> StreamCache(pa.table({"x": [1, 2]})).reader().read_all().num_rows
        2
        """
        return pa.Table.from_batches(list(self), schema=self._schema)

    def close(self) -> None:
        """Release the reader now instead of at garbage collection. Idempotent."""
        with self._lock:  # not while another thread reads through it
            if self._stream is not None:
                self._end(self._stream)

    def cast(self, target_schema: Any, *, safe: bool = True) -> pa.RecordBatchReader:
        """Consume this reader as a ``pyarrow.RecordBatchReader`` whose batches are cast to
        ``target_schema`` (same field names and count; ``ValueError`` naming the field
        otherwise).

        A value that does not convert makes the read of its batch raise
        ``pyarrow.ArrowInvalid`` naming the field and the value, as pyarrow's own casts
        do; ``safe=False`` turns such values into nulls instead.

        >>> import pyarrow as pa
        >>> cache = StreamCache(pa.table({"x": [1, 2, 1000]}))
        >>> reader = cache.reader().cast(pa.schema([("x", pa.int8())]), safe=False)
        >>> reader.read_all().column("x").to_pylist()
        [1, 2, None]
        """
        target = _as_schema(target_schema)
        if safe is True:
            return pa.RecordBatchReader.from_stream(self, schema=target)
        with self._lock:
            stream = self._live_stream()
            self._catch_up(stream)
            _cast_reader(stream, target, safe)
            self._schema = target
        return pa.RecordBatchReader.from_stream(self)

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        """Hand this reader to a consumer as an ``arrow_array_stream`` PyCapsule.

        The reader is consumed: a second export or ``next()`` raises ``ValueError``.
        ``requested_schema`` (an ``arrow_schema`` capsule) casts the batches it has not
        returned yet.
        """
        with self._lock:
            stream = self._live_stream()
            self._catch_up(stream)
            if requested_schema is not None:
                check(lib.bc_reader_cast(stream, _requested_schema_pointer(requested_schema)))
            self._view = None
            self._stream = None
            self._exported = True
            ffi.gc(stream, None)  # the capsule owns it from here
            return stream_capsule(stream)

    def __arrow_c_schema__(self) -> Any:
        """The schema as an ``arrow_schema`` PyCapsule (``ValueError`` once exported)."""
        return self.schema.__arrow_c_schema__()

    def __repr__(self) -> str:
        if self._stream is None:
            state = "exported" if self._exported else "exhausted"
            return f"<StreamCacheReader closed ({state})>"
        return f"<StreamCacheReader position={self.position} closed=False schema=({_fields(self._schema)})>"


class CastingStreamCache:
    """A replayable view of a :class:`StreamCache` whose batches are cast to a schema.

    Made by :meth:`StreamCache.cast`. Each scan creates a reader of the underlying cache
    (and counts against ``max_readers``).

    Examples
    --------
    >>> import pyarrow as pa
    >>> cache = StreamCache(pa.table({"x": [1, 2]}))
    >>> view = cache.cast(pa.schema([("x", pa.string())]))
    >>> pa.table(view).column("x").to_pylist(), pa.table(view).num_rows
    (['1', '2'], 2)
    """

    def __init__(self, cache: StreamCache, target_schema: pa.Schema, *, safe: bool = True) -> None:
        if not isinstance(safe, bool):
            raise TypeError(f"safe must be a bool, got {type(safe).__name__}")
        capsule = target_schema.__arrow_c_schema__()
        check(lib.bc_cache_check_schema(cache._handle.get(), _requested_schema_pointer(capsule)))
        self._cache = cache
        self._target = target_schema
        self._safe = safe

    @property
    def schema(self) -> pa.Schema:
        """The target schema."""
        return self._target

    def reader(self, from_start: bool = True) -> StreamCacheReader:
        """A new reader whose batches are cast to the target schema."""
        return StreamCacheReader._create(self._cache, from_start, self._target, self._safe)

    def __iter__(self) -> StreamCacheReader:
        return self.reader()

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        """A new casting reader as a PyCapsule (``requested_schema`` is not re-applied)."""
        return _reader_capsule(self._cache._handle.get(), None, (self._target, self._safe))

    def __arrow_c_schema__(self) -> Any:
        return self._target.__arrow_c_schema__()

    def __repr__(self) -> str:
        unsafe = "" if self._safe else " safe=False"
        return f"<CastingStreamCache target=({_fields(self._target)}){unsafe} of {self._cache!r}>"
