"""StreamCache: read a single-use Arrow stream once, replay it from any number of readers."""

from __future__ import annotations

import atexit
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import pyarrow as pa

from ._capsules import STREAM_NAME, capsule_pointer
from ._casting import CastingStreamCache
from ._errors import CorruptCacheError, InvalidArgumentError, check
from ._handle import CacheHandle, ClosesOnExit
from ._native import ffi, lib
from ._options import Compression, WritePolicy, options, path_bytes
from ._progress import ingest_reporting, log_changes
from ._reader import StreamCacheReader, reader_capsule
from ._schema import as_schema, fields, schema_from_c
from ._stats import CacheStats, read_stats


@dataclass(frozen=True)
class PersistedCache:
    """A persisted cache's directory and what its manifest records.

    ``id`` is new for every save: a pickled reference names it, so a directory saved
    again is not taken for the one the reference was made from.
    """

    path: Path
    id: str
    batches: int
    rows: int

    @classmethod
    def _from_c(cls, path: Union[str, Path], info: Any) -> "PersistedCache":
        return cls(Path(path), ffi.string(info.id).decode(), int(info.batches), int(info.rows))


class StreamCache(ClosesOnExit):
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

    _source_rows: Optional[int]
    _logged: Optional[CacheStats]

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
        prefetch: Optional[int] = None,
        persist_path: Union[str, "os.PathLike[str]", None] = None,
    ) -> None:
        # Built before the source is touched: refused options leave it unread.
        built = options(
            memory_capacity, disk_path, disk_capacity, write_policy, max_readers,
            compression, segment_bytes, prefetch, persist_path,
        )
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
        out = ffi.new("BcCache **")
        # Moves the stream on success; on failure the capsule still owns and releases it.
        check(lib.bc_cache_new(upstream, built, out))
        rows = getattr(source, "num_rows", None)
        self._adopt(out[0], max_readers, prefetch, with_disk=disk_path is not None)
        if isinstance(rows, int):
            self._source_rows = rows

    def _adopt(
        self,
        pointer: Any,
        max_readers: Optional[int],
        prefetch: Optional[int],
        *,
        with_disk: bool = False,
        opened: Optional[PersistedCache] = None,
        verify: Optional[bool] = None,
    ) -> None:
        """Take ownership of a new ``BcCache *``."""
        self._handle = CacheHandle(pointer)
        self._schema: Optional[pa.Schema] = None  # fetched on first use
        self._with_disk = with_disk
        self._source_rows = None
        self._logged = None
        self._max_readers = max_readers
        self._prefetch = prefetch
        self._opened = opened
        self._verify = verify
        _open_caches.add(self)

    @classmethod
    def open(
        cls,
        path: Union[str, "os.PathLike[str]"],
        *,
        verify: Optional[bool] = None,
        max_readers: Optional[int] = None,
    ) -> "StreamCache":
        """Open a cache saved by :meth:`persist`, read-only, from any process.

        Any number of processes may open it at once. Readers map the batches of its data
        file as they reach them, so processes replaying it share the page cache.
        ``close()`` deletes nothing.

        The manifest, the checksums and the data file's size, schema and footer are
        checked first: a damaged, truncated, edited or foreign directory raises
        :class:`CorruptCacheError`, a save from a newer format ``InvalidArgumentError``, a
        missing path ``FileNotFoundError``.

        ``verify`` says when a batch is checked against its checksum, on its first read
        in this process (one pass over its bytes; a mismatch raises
        :class:`CorruptCacheError` at that batch): ``None`` (the default) when the data
        file was modified after its save, so an edit or a damaging copy is caught and an
        untouched save is read at full speed; ``True`` always; ``False`` never. Checked
        or not, every batch is validated in full on its first read (offsets, lengths,
        UTF-8, dictionary keys), so a damaged save raises :class:`CorruptCacheError`
        rather than crash or hand out an invalid batch; only a checksum catches an
        edited value.

        >>> import tempfile, pathlib, pyarrow as pa
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     saved = StreamCache(pa.table({"x": [1, 2]})).persist(pathlib.Path(tmp, "c"))
        ...     with StreamCache.open(saved.path) as cache:
        ...         pa.table(cache).num_rows, len(cache)
        (2, 1)
        """
        if max_readers is not None and (not isinstance(max_readers, int) or max_readers < 1):
            raise InvalidArgumentError(
                f"max_readers must be an int of at least 1 or None, got {max_readers!r}"
            )
        encoded = path_bytes("path", path)
        info = ffi.new("BcPersisted *")
        out = ffi.new("BcCache **")
        mode = {None: lib.BC_VERIFY_IF_MODIFIED, True: lib.BC_VERIFY_ALWAYS,
                False: lib.BC_VERIFY_NEVER}.get(verify)
        if mode is None:
            raise InvalidArgumentError(f"verify must be None, True or False, got {verify!r}")
        check(lib.bc_cache_open(encoded, mode, max_readers or 0, info, out))
        cache = cls.__new__(cls)
        opened = PersistedCache._from_c(os.fsdecode(encoded), info)
        cache._adopt(out[0], max_readers, None, opened=opened, verify=verify)
        return cache

    def persist(self, path: Union[str, "os.PathLike[str]"]) -> PersistedCache:
        """Read the rest of the source and save the whole stream to the directory ``path``.

        ``path`` must not exist yet (an empty directory is taken); its parent must. The
        save is standard Arrow IPC that pyarrow, Polars and DuckDB read without
        batchcorder: ``pa.ipc.open_file(path / "data.arrow")``,
        ``pl.scan_ipc(path / "data.arrow")``. Beside it, ``manifest.json`` records the
        format version, an id, the counts, the schema and the checksums of
        ``checksums.xxh3``. It is written in a staging folder next to ``path``, synced,
        and renamed into place: a crash leaves nothing at ``path``.

        The cache stays usable. Afterwards it pickles as a reference to ``path``, and
        :meth:`open` opens the save from any process.

        Raises ``InvalidArgumentError`` if ``path`` is taken (nothing there is touched),
        if ``max_readers`` already evicted batches, or if a batch replaces a dictionary
        (an Arrow IPC file cannot hold that: cast the column first); ``DiskError`` for
        the file system's errors.

        >>> import tempfile, pathlib, pyarrow as pa
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     saved = StreamCache(pa.table({"x": [1, 2]})).persist(pathlib.Path(tmp, "c"))
        ...     pa.ipc.open_file(saved.path / "data.arrow").read_all().num_rows
        2
        """
        encoded = path_bytes("path", path)
        info = ffi.new("BcPersisted *")
        check(lib.bc_cache_persist(self._handle.get(), encoded, info))
        return PersistedCache._from_c(os.fsdecode(encoded), info)

    def __reduce__(self) -> Any:
        """A persisted or disk-backed cache pickles as a reference to its directory: the
        process that unpickles it opens that directory (see :meth:`open`). A disk-backed
        cache never persisted first reads the rest of its source and saves itself once,
        inside its private disk folder, which ``close()`` deletes."""
        path = ffi.new("char **")
        info = ffi.new("BcPersisted *")
        status = lib.bc_cache_share(self._handle.get(), path, info)
        if status == lib.BC_INVALID_ARGUMENT and not self._with_disk and self._opened is None:
            raise TypeError(
                "a memory-only StreamCache cannot be pickled: its batches live in this "
                "process. Persist it first (cache.persist(path)): it then pickles as a "
                "reference that any process opens; or give it a disk_path. A forked child "
                "reads its parent's filled cache without pickling"
            )
        check(status)
        try:
            text = ffi.string(path[0]).decode()
        finally:
            lib.bc_string_free(path[0])
        return (_open_reference, (text, ffi.string(info.id).decode(), self._verify))

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


def _open_reference(path: str, id: str, verify: Optional[bool]) -> StreamCache:
    """Unpickle a cache: open the persisted copy its reference names."""
    cache = StreamCache.open(path, verify=verify)
    assert cache._opened is not None
    if cache._opened.id != id:
        cache.close()
        raise CorruptCacheError(
            f"the persisted cache at {path} was saved again after this reference was "
            f"pickled (id {id}, now {cache._opened.id}); pickle the cache again"
        )
    return cache


# Closed at interpreter exit, so that no disk-tier directory outlives the process.
_open_caches: "weakref.WeakSet[StreamCache]" = weakref.WeakSet()


@atexit.register
def _close_open_caches() -> None:
    for cache in list(_open_caches):
        try:
            cache.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
