"""Exceptions, and the one helper that turns a C status into a typed exception.

Every exception made from a ``BcStatus`` is a :class:`BatchcorderError` and also the
built-in exception a caller would catch; the only exceptions to that rule are an
upstream's ``KeyboardInterrupt`` and ``SystemExit``, which arrive as themselves so that
``except Exception`` does not swallow them. The mapping lives here and only here.
"""

from __future__ import annotations

import builtins
import errno as _errno
import sys
import threading
from typing import NoReturn, Optional

from ._native import ffi, lib
from ._upstream import ERRNO, Report, builtins_of, system_exit_code, traceback_note

__all__ = [
    "BatchcorderError",
    "InvalidArgumentError",
    "CapacityError",
    "DiskError",
    "UpstreamError",
    "BatchEvictedError",
    "CacheClosedError",
    "CorruptCacheError",
    "InternalError",
]

# The module the public classes are shown under, and can be pickled from.
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
    released stream, an impossible cast, the reader cap reached, a consumed reader.

    >>> import pyarrow as pa
    >>> from batchcorder import StreamCache
    >>> cache = StreamCache(pa.table({"x": [1]}))
    >>> try:
    ...     cache.cast(pa.schema([("y", pa.int64())]))
    ... except InvalidArgumentError as err:
    ...     isinstance(err, ValueError)
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
    """A batch was already evicted because every ``max_readers`` reader had passed it.

    >>> issubclass(BatchEvictedError, ValueError)
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


# Shown (in tracebacks) and pickled as attributes of the package, where they are exported.
for _public in (
    BatchcorderError,
    InvalidArgumentError,
    CapacityError,
    DiskError,
    UpstreamError,
    BatchEvictedError,
    CacheClosedError,
    CorruptCacheError,
    InternalError,
):
    _public.__module__ = _PUBLIC_MODULE


# -- classes made per built-in ----------------------------------------------------------

# (family, built-in) -> class, or None when that built-in cannot be combined.
_made: dict[tuple[type[BatchcorderError], type[BaseException]], Optional[type[BatchcorderError]]] = {}
_made_lock = threading.Lock()
# The prefix each family's made classes are named with.
_PREFIX: dict[type[BatchcorderError], str] = {UpstreamError: "Upstream", DiskError: "Disk"}


def _made_class(
    family: type[BatchcorderError], builtin: type[BaseException]
) -> Optional[type[BatchcorderError]]:
    """The class that is both ``family`` and ``builtin`` (made once, named like
    ``UpstreamRuntimeError`` or ``DiskPermissionError``, shown as a ``batchcorder``
    attribute), or None if Python cannot make one that takes a message."""
    if builtin is Exception or (family is DiskError and builtin is OSError):
        return family
    key = (family, builtin)
    with _made_lock:
        if key in _made:
            return _made[key]
        name = _PREFIX[family] + builtin.__name__
        made: Optional[type[BatchcorderError]]
        try:
            made = type(
                name,
                (family, builtin),
                {
                    "__module__": _PUBLIC_MODULE,
                    "__qualname__": name,
                    "__doc__": f"A ``{family.__name__}`` that is also a ``{builtin.__name__}``.",
                },
            )
            # Both ways instances are made here must work (UnicodeDecodeError's, for one,
            # needs five arguments).
            made("probe")
            if issubclass(made, OSError):
                made(_errno.EIO, "probe")
        except Exception:  # a layout conflict or a constructor that needs more
            made = None
        _made[key] = made
        return made


def public_class(name: str) -> type[BatchcorderError]:
    """A made class by its public name, for ``batchcorder.<name>`` (and so for pickle).

    >>> public_class("UpstreamKeyError").__mro__[1:4] == (UpstreamError, BatchcorderError, KeyError)
    True
    """
    for family, prefix in _PREFIX.items():
        builtin = getattr(builtins, name[len(prefix):], None) if name.startswith(prefix) else None
        if isinstance(builtin, type) and issubclass(builtin, Exception):
            if family is DiskError and not issubclass(builtin, OSError):
                continue
            made = _made_class(family, builtin)
            if made is not None and made.__name__ == name:
                return made
    raise AttributeError(f"module 'batchcorder' has no attribute {name!r}")


def _oserror_class(code: int, least: type[BaseException] = OSError) -> type[BaseException]:
    """The ``OSError`` subclass Python itself picks for ``code``, if it is a ``least``."""
    specific = type(OSError(code, ""))
    return specific if issubclass(specific, least) else least


def disk_error(code: int, message: str) -> BatchcorderError:
    """The exception for ``BC_IO``: a :class:`DiskError` of the errno's own subclass."""
    code = code or _errno.EIO
    made = _made_class(DiskError, _oserror_class(code)) or DiskError
    return made(code, message)


# -- an upstream's failure (_upstream.py takes its message apart) ------------------------

_HAS_ADD_NOTE = sys.version_info >= (3, 11)


def _add_note(err: BaseException, note: str) -> None:
    if _HAS_ADD_NOTE:
        err.add_note(note)
    else:  # Python 3.10: kept where 3.11 keeps notes, though 3.10 does not print them
        err.__notes__ = [*getattr(err, "__notes__", []), note]


def upstream_error(code: int, message: str) -> BaseException:
    """The exception for ``BC_UPSTREAM``, from the upstream's errno and message."""
    report = Report(message)
    builtin = report.builtin()
    err: BaseException
    if builtin is not None and issubclass(builtin, (KeyboardInterrupt, SystemExit)):
        if issubclass(builtin, SystemExit):
            err = SystemExit(system_exit_code(report.text or ""))
            _add_note(err, report.message)
        else:
            err = KeyboardInterrupt(report.message)
    else:
        if builtin is None or not issubclass(builtin, Exception):
            # No Python exception named: the errno says what it can.
            if report.traceback is not None:
                builtin = Exception
            elif code == _errno.EINVAL:
                builtin = ValueError
            elif code == _errno.ENOMEM:
                builtin = MemoryError
            else:
                builtin = OSError
        if issubclass(builtin, OSError):
            # pyarrow reports every OSError as EIO; the real errno is in its text.
            if code in (0, _errno.EIO):
                found = ERRNO.search(report.text if report.text is not None else message)
                if found is not None:
                    code = int(found.group(1))
            code = code or _errno.EIO
            builtin = _oserror_class(code, builtin)
        made: Optional[type[BatchcorderError]] = None
        for candidate in builtins_of(builtin):
            if issubclass(candidate, Exception):
                made = _made_class(UpstreamError, candidate)
                if made is not None:
                    break
        made = made or UpstreamError
        err = made(code, report.message) if issubclass(made, OSError) else made(report.message)
    if report.traceback is not None:
        _add_note(err, traceback_note(report.traceback))
    return err


# -- statuses ---------------------------------------------------------------------------

# BcStatus values, as the header defines them.
OK = lib.BC_OK

# The exception class of every failing BcStatus; BC_IO and BC_UPSTREAM pick a subclass
# from the errno and message. tests/python/test_errors.py checks that every status the
# header defines is here.
STATUS_CLASSES: dict[int, type[BatchcorderError]] = {
    lib.BC_INVALID_ARGUMENT: InvalidArgumentError,
    lib.BC_CAPACITY: CapacityError,
    lib.BC_IO: DiskError,
    lib.BC_UPSTREAM: UpstreamError,
    lib.BC_EVICTED: BatchEvictedError,
    lib.BC_CLOSED: CacheClosedError,
    lib.BC_INTERNAL: InternalError,
    lib.BC_CORRUPT: CorruptCacheError,
}


def last_error() -> tuple[str, int]:
    """The message and errno of the last failed call on this thread."""
    return ffi.string(lib.bc_last_error()).decode("utf-8", "replace"), lib.bc_last_error_errno()


def status_error(status: int) -> BaseException:
    """The exception for a non-OK ``BcStatus``; build it right after the failed call.

    A :class:`BatchcorderError` for every status, except an upstream's
    ``KeyboardInterrupt`` or ``SystemExit``, which is returned as itself.
    """
    message, code = last_error()
    return error_for(status, code, message)


def error_for(status: int, code: int, message: str) -> BaseException:
    """The exception for ``status`` with this errno and message.

    >>> import errno
    >>> err = error_for(lib.BC_UPSTREAM, errno.EINVAL, "upstream stream failed: Invalid: bad")
    >>> type(err).__name__, isinstance(err, ValueError), str(err)
    ('UpstreamValueError', True, 'upstream stream failed: Invalid: bad')
    """
    cls = STATUS_CLASSES.get(status, InternalError)
    if cls is UpstreamError:
        return upstream_error(code, message)
    if cls is DiskError:
        return disk_error(code, message)
    return cls(message)


def raise_status(status: int) -> NoReturn:
    """Raise the exception for a non-OK ``BcStatus``; call it right after the failed call."""
    raise status_error(status)


def check(status: int) -> None:
    """Raise for any status but ``BC_OK``."""
    if status != OK:
        raise_status(status)
