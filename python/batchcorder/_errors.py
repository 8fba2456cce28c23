"""Exceptions, and the one helper that turns a C status into a typed exception."""

from __future__ import annotations

import errno as _errno
from typing import NoReturn

from ._native import ffi, lib

__all__ = ["BatchcorderError", "UpstreamError", "CacheClosedError", "BatchEvictedError"]


class BatchcorderError(Exception):
    """Base class of every error batchcorder raises on its own account.

    Each subclass is also the built-in exception a caller would expect (``ValueError``,
    ``MemoryError``, ``OSError``, ``RuntimeError``), so either can be caught.

    >>> issubclass(CapacityError, BatchcorderError), issubclass(CapacityError, MemoryError)
    (True, True)
    """


class UpstreamError(BatchcorderError):
    """The upstream stream failed; the message is the upstream's own.

    Each instance is also a ``ValueError``, ``MemoryError`` or ``OSError``, after the
    upstream's errno (``EINVAL``, ``ENOMEM``, anything else), so code that catches the
    upstream's own exception type keeps working.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from batchcorder import StreamCache
    >>> def produce():
    ...     yield pa.record_batch({"x": [1]})
    ...     raise ValueError("feed dropped")
    >>> cache = StreamCache(pa.RecordBatchReader.from_batches(pa.schema([("x", pa.int64())]), produce()))
    >>> try:
    ...     cache.ingest_all()
    ... except UpstreamError as err:
    ...     isinstance(err, ValueError), "feed dropped" in str(err)
    (True, True)
    """


class _UpstreamValueError(UpstreamError, ValueError):
    pass


class _UpstreamMemoryError(UpstreamError, MemoryError):
    pass


class _UpstreamOSError(UpstreamError, OSError):
    pass


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


class BatchEvictedError(BatchcorderError, ValueError):
    """A batch was already evicted because every ``max_readers`` reader had passed it.

    >>> issubclass(BatchEvictedError, ValueError)
    True
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


class InternalError(BatchcorderError, RuntimeError):
    """A bug in batchcorder (a Rust panic caught at the boundary); please report it.

    The cache involved is poisoned: every later call on it raises this too.

    >>> issubclass(InternalError, RuntimeError)
    True
    """


# BcStatus values, as the header defines them.
OK = lib.BC_OK
_INVALID_ARGUMENT = lib.BC_INVALID_ARGUMENT
_CAPACITY = lib.BC_CAPACITY
_IO = lib.BC_IO
_UPSTREAM = lib.BC_UPSTREAM
_EVICTED = lib.BC_EVICTED
_CLOSED = lib.BC_CLOSED


def last_error() -> tuple[str, int]:
    """The message and errno of the last failed call on this thread."""
    return ffi.string(lib.bc_last_error()).decode("utf-8", "replace"), lib.bc_last_error_errno()


def status_error(status: int) -> Exception:
    """The exception for a non-OK ``BcStatus``; build it right after the failed call."""
    message, code = last_error()
    if status == _INVALID_ARGUMENT:
        return ValueError(message)
    if status == _CAPACITY:
        return CapacityError(message)
    if status == _IO:
        return OSError(code or _errno.EIO, message)
    if status == _UPSTREAM:
        if code == _errno.EINVAL:
            return _UpstreamValueError(message)
        if code == _errno.ENOMEM:
            return _UpstreamMemoryError(message)
        return _UpstreamOSError(code or _errno.EIO, message)
    if status == _EVICTED:
        return BatchEvictedError(message)
    if status == _CLOSED:
        return CacheClosedError(message)
    return InternalError(message)


def raise_status(status: int) -> NoReturn:
    """Raise the exception for a non-OK ``BcStatus``; call it right after the failed call."""
    raise status_error(status)


def check(status: int) -> None:
    """Raise for any status but ``BC_OK``."""
    if status != OK:
        raise_status(status)
