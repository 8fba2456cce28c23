"""The exception for a failed C call, from its status, its kind, its errno and message.

Every exception made from a ``BcStatus`` is a :class:`BatchcorderError` and also the
built-in exception a caller would catch; the only exceptions to that rule are an
upstream's ``KeyboardInterrupt`` and ``SystemExit``, which arrive as themselves so that
``except Exception`` does not swallow them. Which class a status and kind stand for is
``_exceptions.py``'s table; here the upstream's and the disk's errors get the subclass of
their built-in.
"""

from __future__ import annotations

import builtins
import errno as _errno
import sys
import threading
from typing import NoReturn, Optional

from ._exceptions import _CLASSES, _NONE, _PUBLIC_MODULE
from ._exceptions import BatchcorderError, DiskError, InternalError, UpstreamError
from ._native import ffi, lib
from ._upstream import ERRNO, Report, builtins_of, system_exit_code, traceback_note


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


def last_error() -> tuple[str, int, int]:
    """The message, errno and kind of the last failed call on this thread."""
    message = ffi.string(lib.bc_last_error()).decode("utf-8", "replace")
    return message, lib.bc_last_error_errno(), lib.bc_last_error_kind()


def status_error(status: int) -> BaseException:
    """The exception for a non-OK ``BcStatus``; build it right after the failed call.

    A :class:`BatchcorderError` for every status, except an upstream's
    ``KeyboardInterrupt`` or ``SystemExit``, which is returned as itself.
    """
    message, code, kind = last_error()
    return error_for(status, code, message, kind)


def error_for(status: int, code: int, message: str, kind: int = _NONE) -> BaseException:
    """The exception for ``status`` and ``kind`` with this errno and message: the class
    the table gives the pair, else the status's own (a kind this package does not know
    yet), else :class:`InternalError` (a status it does not know).

    >>> import errno
    >>> err = error_for(lib.BC_UPSTREAM, errno.EINVAL, "upstream stream failed: Invalid: bad")
    >>> type(err).__name__, isinstance(err, ValueError), str(err)
    ('UpstreamValueError', True, 'upstream stream failed: Invalid: bad')
    >>> type(error_for(lib.BC_INVALID_ARGUMENT, errno.EINVAL, "cap", lib.BC_ERROR_KIND_READER_CAP))
    <class 'batchcorder.ReaderCapError'>
    """
    cls = _CLASSES.get((status, kind)) or _CLASSES.get((status, _NONE), InternalError)
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
