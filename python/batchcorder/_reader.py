"""StreamCacheReader: one pass over a cache, and the reader streams behind it."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Optional

import pyarrow as pa

from ._capsules import requested_schema_pointer, stream_capsule
from ._errors import check, status_error
from ._handle import ClosesOnExit
from ._native import ffi, lib
from ._order import reader_options
from ._schema import as_schema, fields

if TYPE_CHECKING:
    from ._cache import StreamCache


def cast_failure(safe: Any) -> int:
    """The ``BC_CAST_FAILURE_*`` mode for a caller's ``safe``, which must be a bool."""
    if not isinstance(safe, bool):
        raise TypeError(f"safe must be a bool, got {type(safe).__name__}")
    return int(lib.BC_CAST_FAILURE_ERROR if safe else lib.BC_CAST_FAILURE_NULL)


def cast_reader(stream: Any, target: pa.Schema, safe: bool) -> None:
    """Make the reader ``stream`` cast its later batches to ``target``."""
    on_failure = cast_failure(safe)
    # The capsule owns the schema struct: it must outlive the call that reads it.
    capsule = target.__arrow_c_schema__()
    check(lib.bc_reader_cast_with(stream, requested_schema_pointer(capsule), on_failure))


def new_stream(
    cache: Any,
    from_start: bool,
    requested_schema: Any = None,
    cast: Optional[tuple[pa.Schema, bool]] = None,
    options: Any = None,
) -> Any:
    """A new reader of the ``BcCache *`` ``cache`` in a ``bc_stream_new`` struct freed at
    garbage collection, cast to ``requested_schema`` (a capsule) or as ``cast`` (a schema
    and ``safe``) says, ordered as ``options`` (a ``BcReaderOptions *``) say."""
    raw = lib.bc_stream_new()
    if raw == ffi.NULL:
        raise MemoryError("cannot allocate an ArrowArrayStream")
    stream = ffi.gc(raw, lib.bc_stream_free)
    schema = requested_schema_pointer(requested_schema)
    if options is None:
        check(lib.bc_cache_reader(cache, from_start, schema, stream))
    else:
        check(lib.bc_cache_reader_with(cache, options, schema, stream))
    if cast is not None:
        cast_reader(stream, *cast)
    return stream


def reader_capsule(cache: Any, requested_schema: Any, cast: Optional[tuple[pa.Schema, bool]] = None) -> Any:
    """A new reader from the start, as a capsule (see :func:`new_stream`)."""
    return _into_capsule(new_stream(cache, True, requested_schema, cast))


def _into_capsule(stream: Any) -> Any:
    """Hand a ``new_stream`` struct over to a capsule, which frees it from then on."""
    ffi.gc(stream, None)
    return stream_capsule(stream)


def _free_stream_now(stream: Any) -> None:
    """Free a ``bc_stream_new`` struct now, detaching its garbage-collection destructor."""
    ffi.gc(stream, None)
    lib.bc_stream_free(stream)


# How long a thread that finds another reading through the same reader sleeps before it
# looks again: readers are meant for one thread each, so this is the rare path.
_READ_IN_FLIGHT_POLL_SECONDS = 0.0001


def _open_view(stream: Any) -> pa.RecordBatchReader:
    """A pyarrow reader over a ``bc_reader_view`` of ``stream``: pyarrow imports each batch
    in C++, which is cheaper than a cffi call plus ``RecordBatch._import_from_c``."""
    view = ffi.new("struct ArrowArrayStream *")
    check(lib.bc_reader_view(stream, view))
    return pa.RecordBatchReader._import_from_c(int(ffi.cast("uintptr_t", view)))


class StreamCacheReader(ClosesOnExit):
    """One pass over a :class:`StreamCache`, with its own position.

    Get one from :meth:`StreamCache.reader`; do not construct it. A reader is its own
    iterator of ``pyarrow.RecordBatch``. Export it once with ``__arrow_c_stream__``
    (``pa.RecordBatchReader.from_stream(reader)``, DuckDB, Polars...); after that it is
    consumed. Calls on one reader are serialized; create one reader per thread for
    parallel replays. As a context manager it releases the reader on exit.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from batchcorder import StreamCache
    >>> cache = StreamCache(pa.table({"x": [1, 2, 3]}).to_reader(max_chunksize=1))
    >>> with cache.reader() as reader:
    ...     first = next(reader)
    ...     reader.position, first.num_rows
    (1, 1)
    >>> pa.RecordBatchReader.from_stream(cache.reader()).read_all().num_rows
    3
    """

    __slots__ = ("_stream", "_schema", "_exported", "_lock", "_view", "_idle")
    _stream: Any
    _schema: pa.Schema
    _exported: bool
    # Held to make or drop the view and to release, export or recast the stream.
    _lock: threading.Lock
    # A pyarrow reader through `bc_reader_view` of `_stream`, made with the reader and
    # again after a failed read; dropped before `_stream` is released.
    _view: Optional[pa.RecordBatchReader]
    # `_view` while no thread reads through it: a read takes it out (`list.pop` is atomic
    # under the GIL) and puts it back, which costs a fraction of taking `_lock`.
    _idle: list[pa.RecordBatchReader]

    def __init__(self) -> None:
        raise TypeError("create readers with StreamCache.reader()")

    @classmethod
    def _create(
        cls,
        cache: StreamCache,
        from_start: bool,
        target: Optional[pa.Schema],
        safe: bool = True,
        **order: Any,
    ) -> StreamCacheReader:
        cast = None if target is None else (target, safe)
        options = reader_options(from_start, **order)
        stream = new_stream(cache._handle.get(), from_start, None, cast, options)
        self = cls.__new__(cls)
        self._stream = stream
        self._exported = False
        self._lock = threading.Lock()
        # Made now rather than on the first read: it brings the schema with it.
        self._view = view = _open_view(stream)
        self._idle = [view]
        self._schema = view.schema if target is None else target
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
        """Index of the next batch this reader returns; for a shuffled or sharded reader
        (``shuffle=``, ``shard=``), the number of batches it has returned.

        Raises ``ValueError`` once the reader is exhausted, closed or exported: it then
        holds no position (count the batches as they come if you need the total)."""
        out = ffi.new("uint64_t *")
        with self._quiet():  # not while another thread reads through it
            check(lib.bc_reader_position(self._live_stream(), out))
        return int(out[0])

    def _live_stream(self) -> Any:
        if self._stream is None:
            if self._exported:
                raise ValueError(
                    "this reader was already consumed by __arrow_c_stream__; "
                    "create a new reader with StreamCache.reader()"
                )
            raise ValueError("this reader is exhausted; create a new one with StreamCache.reader()")
        return self._stream

    def __iter__(self) -> StreamCacheReader:
        return self

    def __next__(self) -> pa.RecordBatch:
        # The hot path of `for batch in cache`: as few Python operations as it can, and no
        # lock (one would cost as much as the rest of this method).
        try:
            view = self._idle.pop()
        except IndexError:
            view = self._take_view()
        try:
            batch = view.read_next_batch()
        except StopIteration:
            with self._lock:
                if self._view is view and self._stream is not None:
                    self._end(self._stream)
            raise
        except BaseException:
            with self._lock:
                if self._view is view:
                    self._view = None  # made again on the next read, in a known state
                stream = self._stream
            status = lib.bc_reader_failure(stream) if stream is not None else 0
            if status:
                # Our own failure, typed; pyarrow's rendering of it adds nothing.
                raise status_error(status) from None
            raise
        self._idle.append(view)
        return batch

    def _take_view(self) -> pa.RecordBatchReader:
        """The view for a read, made again if a failed read dropped it; waits while
        another thread reads through it. ``StopIteration`` once the reader is exhausted."""
        while True:
            with self._quiet():
                stream = self._stream
                if stream is None:
                    if self._exported:
                        self._live_stream()
                    raise StopIteration
                if self._view is None:
                    self._view = _open_view(stream)
                    self._idle.append(self._view)
            try:
                return self._idle.pop()
            except IndexError:
                pass  # another thread took it first

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """Hold ``_lock`` while no thread reads through the view: one that does is waited
        for. The view is put back afterwards unless the caller dropped it."""
        while True:
            with self._lock:
                view = self._view
                taken = view is None
                if not taken:
                    try:
                        self._idle.pop()
                        taken = True
                    except IndexError:
                        pass
                if taken:
                    try:
                        yield
                    finally:
                        if view is not None and self._view is view:
                            self._idle.append(view)
                    return
            time.sleep(_READ_IN_FLIGHT_POLL_SECONDS)

    def _end(self, stream: Any) -> None:
        """Release the reader: its view first, then its stream. Called with ``_lock`` held
        and no read in flight."""
        self._view = None
        self._idle.clear()
        self._stream = None
        _free_stream_now(stream)

    def read_all(self) -> pa.Table:
        """The rest of the stream as a ``pyarrow.Table``.

        >>> import pyarrow as pa
        >>> from batchcorder import StreamCache
        >>> StreamCache(pa.table({"x": [1, 2]})).reader().read_all().num_rows
        2
        """
        return pa.Table.from_batches(list(self), schema=self._schema)

    def close(self) -> None:
        """Release the reader now instead of at garbage collection. Idempotent."""
        with self._quiet():
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
        >>> from batchcorder import StreamCache
        >>> cache = StreamCache(pa.table({"x": [1, 2, 1000]}))
        >>> reader = cache.reader().cast(pa.schema([("x", pa.int8())]), safe=False)
        >>> reader.read_all().column("x").to_pylist()
        [1, 2, None]
        """
        target = as_schema(target_schema)
        if safe is True:
            return pa.RecordBatchReader.from_stream(self, schema=target)
        with self._quiet():
            stream = self._live_stream()
            cast_reader(stream, target, safe)
            self._schema = target
        return pa.RecordBatchReader.from_stream(self)

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        """Hand this reader to a consumer as an ``arrow_array_stream`` PyCapsule.

        The reader is consumed: a second export or ``next()`` raises ``ValueError``.
        ``requested_schema`` (an ``arrow_schema`` capsule) casts the batches it has not
        returned yet.
        """
        with self._quiet():
            stream = self._live_stream()
            if requested_schema is not None:
                check(lib.bc_reader_cast(stream, requested_schema_pointer(requested_schema)))
            self._view = None
            self._idle.clear()
            self._stream = None
            self._exported = True
            return _into_capsule(stream)

    def __arrow_c_schema__(self) -> Any:
        """The schema as an ``arrow_schema`` PyCapsule (``ValueError`` once exported)."""
        return self.schema.__arrow_c_schema__()

    def __repr__(self) -> str:
        if self._stream is None:
            state = "exported" if self._exported else "exhausted"
            return f"<StreamCacheReader closed ({state})>"
        return f"<StreamCacheReader position={self.position} closed=False schema=({fields(self._schema)})>"
