"""The exception classes, and the one table that says which C status, and which kind of
it, each one stands for.

Adding a status or a kind to the header means adding its class here and its row to
``_CLASSES``: the package exports every class from the table, and
tests/python/test_errors.py fails when the header has a status or a kind the table does
not map. This module defines no other public name, since ``batchcorder`` imports all of
them (``*``); ``_errors.py`` makes the instances.
"""

from ._native import lib as _lib

# The module every class is shown under, and pickled from: the package, which exports them.
_PUBLIC_MODULE = "batchcorder"


class BatchcorderError(Exception):
    """Base class of every error batchcorder raises on its own account.

    Each subclass is also the built-in exception a caller would expect (``ValueError``,
    ``MemoryError``, ``OSError``, ``RuntimeError``, ...), so either can be caught.

    >>> issubclass(CapacityError, BatchcorderError), issubclass(CapacityError, MemoryError)
    (True, True)
    """


class InvalidArgumentError(BatchcorderError, ValueError):
    """A call was given something it cannot use (``BC_INVALID_ARGUMENT``): a bad option, a
    released stream, an impossible cast, a consumed reader; the reader cap reached is its
    subclass :class:`ReaderCapError`.

    >>> import pyarrow as pa
    >>> from batchcorder import StreamCache
    >>> cache = StreamCache(pa.table({"x": [1]}))
    >>> try:
    ...     cache.cast(pa.schema([("y", pa.int64())]))
    ... except InvalidArgumentError as err:
    ...     isinstance(err, ValueError)
    True
    """


class ReaderCapError(InvalidArgumentError):
    """Every one of the cache's ``max_readers`` readers was created already
    (``BC_INVALID_ARGUMENT``, kind ``BC_ERROR_KIND_READER_CAP``): no new reader can be
    made. Create the cache with a larger ``max_readers``, and every reader before reading.

    >>> import pyarrow as pa
    >>> from batchcorder import StreamCache
    >>> cache = StreamCache(pa.table({"x": [1]}), max_readers=1)
    >>> first = cache.reader()
    >>> try:
    ...     cache.reader()
    ... except ReaderCapError as err:
    ...     isinstance(err, InvalidArgumentError), isinstance(err, ValueError)
    (True, True)
    """


class OutOfRangeError(InvalidArgumentError, IndexError):
    """A batch index (``cache[i]``) or a row (``cache.take``) past the end of the stream
    (``BC_INVALID_ARGUMENT``, kind ``BC_ERROR_KIND_OUT_OF_RANGE``); the message has the
    count. An ``IndexError``, as a sequence's would be.

    >>> import pyarrow as pa
    >>> from batchcorder import StreamCache
    >>> cache = StreamCache(pa.table({"x": [1, 2]}))
    >>> try:
    ...     cache[5]
    ... except IndexError as err:
    ...     type(err).__name__, str(err)
    ('OutOfRangeError', 'batch index 5 is out of range: the stream has 1 batches; ask for an index below that')
    """


class CapacityError(BatchcorderError, MemoryError):
    """A memory or disk budget cannot hold a batch that must be kept.

    >>> import pyarrow as pa
    >>> from batchcorder import StreamCache
    >>> cache = StreamCache(pa.table({"x": list(range(1000))}), memory_capacity=100)
    >>> try:
    ...     cache.ingest_all()
    ... except CapacityError as err:
    ...     "memory_capacity" in str(err)
    True
    """


class DiskError(BatchcorderError, OSError):
    """The disk tier failed (``BC_IO``): a full disk, a quota, permissions, a vanished file.

    ``errno`` is the operating system's, and an errno that Python gives its own
    ``OSError`` subclass makes an instance of that subclass too (``DiskPermissionError``
    for ``EACCES``, ``DiskFileNotFoundError`` for ``ENOENT``), so ``except
    PermissionError`` or ``except FileNotFoundError`` catch it.

    >>> import batchcorder
    >>> cls = batchcorder.DiskPermissionError
    >>> issubclass(cls, DiskError), issubclass(cls, PermissionError)
    (True, True)
    """


class UpstreamError(BatchcorderError):
    """The upstream stream failed; the message is the upstream's own.

    Each instance is also the built-in exception the upstream raised, when it can be
    recovered: a Python source read through pyarrow (``RecordBatchReader.from_batches``
    over a generator, for example) names its exception, so a ``RuntimeError``,
    ``TypeError`` or ``KeyError`` there is an ``UpstreamError`` that is also a
    ``RuntimeError``, ``TypeError`` or ``KeyError`` here; a class of the source's own is
    recovered as its nearest built-in base. An ``OSError`` keeps its errno and its
    subclass (``PermissionError`` for ``EACCES``). The upstream's Python traceback is a
    note on the exception (``__notes__``), not part of its message. A source that names no
    Python exception gives a ``ValueError``, ``MemoryError`` or ``OSError`` after its
    errno (``EINVAL``, ``ENOMEM``, anything else).

    A ``KeyboardInterrupt`` (Ctrl-C while the upstream runs) or ``SystemExit`` in the
    upstream arrives as that built-in itself, not as an ``UpstreamError``.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from batchcorder import StreamCache
    >>> def produce():
    ...     yield pa.record_batch({"x": [1]})
    ...     raise RuntimeError("feed dropped")
    >>> cache = StreamCache(pa.RecordBatchReader.from_batches(pa.schema([("x", pa.int64())]), produce()))
    >>> try:
    ...     cache.ingest_all()
    ... except UpstreamError as err:
    ...     print(type(err).__name__, isinstance(err, RuntimeError), str(err))
    UpstreamRuntimeError True upstream stream failed: RuntimeError: feed dropped
    >>> next(cache.reader()).num_rows  # the batch before the failure is still there
    1
    """

    def __str__(self) -> str:
        # The message alone: not OSError's "[Errno N] " (the upstream's text has its own),
        # nor KeyError's repr of it.
        if isinstance(self, OSError) and len(self.args) == 2:
            return str(self.args[1])
        return BaseException.__str__(self)


class BatchEvictedError(BatchcorderError, ValueError):
    """A batch was already evicted because every ``max_readers`` reader had passed it
    (``BC_EVICTED``). Only random access (``cache[i]``, ``cache.take``) meets it: a reader
    never does, since eviction keeps every batch a live reader has not passed.

    >>> import pyarrow as pa
    >>> from batchcorder import StreamCache
    >>> cache = StreamCache(pa.table({"x": [1, 2]}).to_reader(max_chunksize=1), max_readers=1)
    >>> _ = pa.table(cache)  # the one reader passes both batches: they are dropped
    >>> try:
    ...     cache[0]
    ... except BatchEvictedError as err:
    ...     isinstance(err, ValueError)
    True
    """


class CacheClosedError(BatchcorderError, ValueError):
    """The cache was closed; build a new one from a fresh source.

    >>> import pyarrow as pa
    >>> from batchcorder import StreamCache
    >>> cache = StreamCache(pa.table({"x": [1]}))
    >>> cache.close()
    >>> try:
    ...     cache.reader()
    ... except CacheClosedError as err:
    ...     "closed" in str(err)
    True
    """


class CorruptCacheError(BatchcorderError, ValueError):
    """A persisted cache's files are not what its save wrote (``BC_CORRUPT``): damaged,
    edited, truncated, or not a persisted cache at all. The message names the file and
    what does not match; persist the stream again.

    >>> import tempfile
    >>> from batchcorder import StreamCache
    >>> with tempfile.TemporaryDirectory() as empty:
    ...     try:
    ...         StreamCache.open(empty)
    ...     except CorruptCacheError as err:
    ...         "holds no manifest.json" in str(err)
    True
    """


class InternalError(BatchcorderError, RuntimeError):
    """A bug in batchcorder (a Rust panic caught at the boundary); please report it.

    The cache involved is poisoned: every later call on it raises this too.

    >>> issubclass(InternalError, RuntimeError)
    True
    """


# The class of each failing status (with ``BC_ERROR_KIND_NONE``) and of each finer kind
# (with the status it comes with), as the header defines them. BC_IO and BC_UPSTREAM pick a
# subclass of theirs from the errno and the message (_errors.py).
_NONE = _lib.BC_ERROR_KIND_NONE
_CLASSES: dict[tuple[int, int], type[BatchcorderError]] = {
    (_lib.BC_INVALID_ARGUMENT, _NONE): InvalidArgumentError,
    (_lib.BC_INVALID_ARGUMENT, _lib.BC_ERROR_KIND_READER_CAP): ReaderCapError,
    (_lib.BC_INVALID_ARGUMENT, _lib.BC_ERROR_KIND_OUT_OF_RANGE): OutOfRangeError,
    (_lib.BC_CAPACITY, _NONE): CapacityError,
    (_lib.BC_IO, _NONE): DiskError,
    (_lib.BC_UPSTREAM, _NONE): UpstreamError,
    (_lib.BC_EVICTED, _NONE): BatchEvictedError,
    (_lib.BC_CLOSED, _NONE): CacheClosedError,
    (_lib.BC_INTERNAL, _NONE): InternalError,
    (_lib.BC_CORRUPT, _NONE): CorruptCacheError,
}

_PUBLIC_CLASSES: list[type[BatchcorderError]] = [BatchcorderError, *_CLASSES.values()]
# What the package exports, in this order.
_EXPORTED: tuple[str, ...] = tuple(dict.fromkeys(cls.__name__ for cls in _PUBLIC_CLASSES))

for _public in _PUBLIC_CLASSES:
    _public.__module__ = _PUBLIC_MODULE
