"""Errors keep their meaning (issue 15 item 4, issue 17 item 4): a Python source's
exception reaches the user as the built-in it was (and an UpstreamError), with its errno,
its traceback in a note and no private class name; KeyboardInterrupt (also a real Ctrl-C)
and SystemExit arrive as themselves; every status maps to a BatchcorderError subclass
that is also the built-in a caller would catch."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap
import traceback

import pyarrow as pa
import pytest

import batchcorder
from batchcorder import (
    BatchcorderError,
    BatchEvictedError,
    CacheClosedError,
    CapacityError,
    DiskError,
    CorruptCacheError,
    InternalError,
    InvalidArgumentError,
    OutOfRangeError,
    ReaderCapError,
    StreamCache,
    UpstreamError,
)
from batchcorder import _errors, _exceptions
from batchcorder._native import ffi, lib

SCHEMA = pa.schema([("x", pa.int64())])
BEFORE = 3  # batches the source yields before it fails


class FeedDropped(ConnectionError):
    """A source's own exception class, derived from a built-in."""


class SourceFailure(Exception):
    """A source's own exception class, derived from nothing more specific than Exception."""


def failing_source(exc: BaseException) -> pa.RecordBatchReader:
    def produce():
        for index in range(BEFORE):
            yield pa.record_batch({"x": [index]})
        raise exc

    return pa.RecordBatchReader.from_batches(SCHEMA, produce())


def assert_public(err: BaseException) -> None:
    """No class a user sees in the traceback has a private name or lives in a private module."""
    for cls in type(err).__mro__:
        assert not cls.__name__.startswith("_"), cls
        assert not any(part.startswith("_") for part in cls.__qualname__.split(".")), cls
        if cls.__module__.startswith("batchcorder"):
            assert cls.__module__ == "batchcorder", cls
            # ... and the class is there under that name (so pickle finds it).
            assert getattr(batchcorder, cls.__qualname__) is cls
    shown = "".join(traceback.format_exception_only(type(err), err))
    assert "batchcorder._" not in shown, shown


def notes(err: BaseException) -> str:
    return "\n".join(getattr(err, "__notes__", []))


def drain(cache: StreamCache) -> tuple[list[int], BaseException]:
    """Read a new reader until it fails: the values before, and the exception."""
    got = []
    with pytest.raises(BaseException) as info:
        for batch in cache.reader():
            got.append(batch.column(0)[0].as_py())
    return got, info.value


# -- each built-in a Python source raises -----------------------------------------------


def _unicode_error() -> UnicodeDecodeError:
    try:
        b"\xff".decode("utf-8")
    except UnicodeDecodeError as err:
        return err
    raise AssertionError


# (the source's exception, the built-in it must arrive as, errno or None, its text)
BUILTINS = [
    (ValueError("x-marker"), ValueError, None, "x-marker"),
    (RuntimeError("x-marker"), RuntimeError, None, "x-marker"),
    (TypeError("x-marker"), TypeError, None, "x-marker"),
    (KeyError("x-marker"), KeyError, None, "'x-marker'"),
    (IndexError("x-marker"), IndexError, None, "x-marker"),
    (LookupError("x-marker"), LookupError, None, "x-marker"),
    (NotImplementedError("x-marker"), NotImplementedError, None, "x-marker"),
    (ZeroDivisionError("x-marker"), ZeroDivisionError, None, "x-marker"),
    (OverflowError("x-marker"), OverflowError, None, "x-marker"),
    (AttributeError("x-marker"), AttributeError, None, "x-marker"),
    (AssertionError("x-marker"), AssertionError, None, "x-marker"),
    (MemoryError("x-marker"), MemoryError, None, "x-marker"),
    (RecursionError("x-marker"), RecursionError, None, "x-marker"),
    (UserWarning("x-marker"), UserWarning, None, "x-marker"),
    # UnicodeDecodeError needs five constructor arguments: its nearest base that takes one.
    (_unicode_error(), UnicodeError, None, "can't decode byte 0xff"),
    (OSError(errno.ENOSPC, "No space left on device"), OSError, errno.ENOSPC, "[Errno 28] No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "/x"), PermissionError, errno.EACCES, "Permission denied: '/x'"),
    (FileNotFoundError(errno.ENOENT, "No such file"), FileNotFoundError, errno.ENOENT, "No such file"),
    (OSError(errno.ECONNRESET, "reset by peer"), ConnectionResetError, errno.ECONNRESET, "reset by peer"),
    (TimeoutError(errno.ETIMEDOUT, "timed out"), TimeoutError, errno.ETIMEDOUT, "timed out"),
    # The source's own classes: the nearest built-in base, or UpstreamError alone.
    (FeedDropped(errno.ECONNRESET, "x-marker"), ConnectionResetError, errno.ECONNRESET, "x-marker"),
    (FeedDropped("x-marker"), ConnectionError, errno.EIO, "x-marker"),
    (SourceFailure("x-marker"), UpstreamError, None, "x-marker"),
]


@pytest.mark.parametrize("exc, builtin, code, text", BUILTINS, ids=lambda v: type(v).__name__)
def test_a_source_exception_keeps_its_builtin_type_errno_and_traceback(exc, builtin, code, text):
    cache = StreamCache(failing_source(exc))
    with pytest.raises(UpstreamError) as info:
        cache.ingest_all()
    failures = [info.value]
    # Every reader reaching the failure gets the same, after every batch before it.
    for _ in range(2):
        got, err = drain(cache)
        assert got == list(range(BEFORE))
        failures.append(err)
    for err in failures:
        assert isinstance(err, UpstreamError) and isinstance(err, BatchcorderError)
        assert isinstance(err, builtin), type(err).__mro__
        if builtin is not UpstreamError:
            assert type(err).__name__ == "Upstream" + builtin.__name__
        assert_public(err)
        if code is not None:
            assert isinstance(err, OSError) and err.errno == code
        # The upstream's text, once, without pyarrow's status code or the traceback.
        message = str(err)
        assert text in message and message.count(text) == 1, message
        assert f"{type(exc).__name__}: " in message, message
        assert "Traceback" not in message and "Detail:" not in message, message
        assert "Unknown error" not in message, message
        # The traceback is a note: the source's frame and the line that raised.
        assert "Upstream traceback (most recent call last)" in notes(err)
        assert "in produce" in notes(err) and "raise exc" in notes(err)


def test_the_python_iteration_path_types_the_failure_too():
    """`for batch in cache` reads through a pyarrow view; its failure is typed the same."""
    cache = StreamCache(failing_source(RuntimeError("x-marker")))
    got, err = drain(cache)  # no ingest_all first: the reader pulls the upstream itself
    assert got == list(range(BEFORE))
    assert type(err).__name__ == "UpstreamRuntimeError" and isinstance(err, RuntimeError)
    assert "raise exc" in notes(err)
    with pytest.raises(RuntimeError, match="x-marker"):
        cache.reader().read_all()


def test_a_chained_exception_is_the_last_one_raised():
    def produce():
        yield pa.record_batch({"x": [0]})
        try:
            {}["missing"]
        except KeyError as cause:
            raise RuntimeError("wrapped") from cause

    cache = StreamCache(pa.RecordBatchReader.from_batches(SCHEMA, produce()))
    with pytest.raises(RuntimeError, match="wrapped") as info:
        cache.ingest_all()
    assert not isinstance(info.value, KeyError)
    assert "KeyError: 'missing'" in notes(info.value)
    assert "direct cause" in notes(info.value)


def test_a_generator_that_raises_stopiteration_is_pythons_runtimeerror():
    def produce():
        yield pa.record_batch({"x": [0]})
        raise StopIteration("early")  # Python turns this into RuntimeError (PEP 479)

    cache = StreamCache(pa.RecordBatchReader.from_batches(SCHEMA, produce()))
    with pytest.raises(RuntimeError, match="generator raised StopIteration") as info:
        cache.ingest_all()
    assert isinstance(info.value, UpstreamError)


def test_a_multiline_message_and_the_sources_own_notes_stay_in_the_message():
    exc = ValueError("first line\nsecond line")
    exc.__notes__ = ["a note of the source's"]  # what add_note does, on 3.10 too
    cache = StreamCache(failing_source(exc))
    with pytest.raises(ValueError) as info:
        cache.ingest_all()
    assert "first line\nsecond line" in str(info.value)
    assert isinstance(info.value, UpstreamError)
    assert "Traceback" not in str(info.value)


def test_a_local_exception_class_is_typed_by_pyarrows_status_code():
    """A class that cannot be found by name is still as specific as pyarrow's code says."""

    class LocalTypeProblem(TypeError):
        pass

    cache = StreamCache(failing_source(LocalTypeProblem("x-marker")))
    with pytest.raises(TypeError, match="x-marker") as info:
        cache.ingest_all()
    assert type(info.value).__name__ == "UpstreamTypeError"
    assert "LocalTypeProblem" in str(info.value)


def test_errors_pickle_with_their_type_errno_and_notes():
    for exc in (RuntimeError("x-marker"), PermissionError(errno.EACCES, "denied")):
        cache = StreamCache(failing_source(exc))
        with pytest.raises(UpstreamError) as info:
            cache.ingest_all()
        again = pickle.loads(pickle.dumps(info.value))
        assert type(again) is type(info.value)
        assert str(again) == str(info.value)
        assert getattr(again, "errno", None) == getattr(info.value, "errno", None)
        assert again.__notes__ == info.value.__notes__


def test_python_310_keeps_the_traceback_in_notes(monkeypatch):
    monkeypatch.setattr(_errors, "_HAS_ADD_NOTE", False)
    cache = StreamCache(failing_source(RuntimeError("x-marker")))
    with pytest.raises(RuntimeError) as info:
        cache.ingest_all()
    assert "raise exc" in notes(info.value)


# -- KeyboardInterrupt and SystemExit ---------------------------------------------------


@pytest.mark.parametrize("how", ["ingest_all", "iterate"])
def test_keyboardinterrupt_in_the_source_arrives_as_itself(how):
    cache = StreamCache(failing_source(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt) as info:
        try:
            if how == "ingest_all":
                cache.ingest_all()
            else:
                for _ in cache:
                    pass
        except Exception:  # must not catch it
            pytest.fail("except Exception caught a KeyboardInterrupt")
    err = info.value
    assert type(err) is KeyboardInterrupt
    assert "upstream" in str(err)
    assert "raise exc" in notes(err)
    # The batches before it are still served.
    reader = cache.reader()
    assert [next(reader).column(0)[0].as_py() for _ in range(BEFORE)] == list(range(BEFORE))


@pytest.mark.parametrize("code", [3, 0, None, "bye"])
def test_systemexit_in_the_source_arrives_as_itself_with_its_code(code):
    cache = StreamCache(failing_source(SystemExit(code)))
    with pytest.raises(SystemExit) as info:
        try:
            cache.ingest_all()
        except Exception:
            pytest.fail("except Exception caught a SystemExit")
    assert type(info.value) is SystemExit
    assert info.value.code == code
    assert "raise exc" in notes(info.value)


CTRL_C_CHILD = r"""
import json, os, signal, sys, threading, time
import pyarrow as pa
from batchcorder import StreamCache

how = sys.argv[1]
blocking = threading.Event()

def produce():
    yield pa.record_batch({"x": [0]})
    blocking.set()
    while True:  # an upstream that blocks, as a slow feed does
        time.sleep(0.01)

def press_ctrl_c():
    blocking.wait(30)
    time.sleep(0.1)
    if sys.platform == "win32":  # os.kill would end the process: Ctrl+C runs the C handler
        signal.raise_signal(signal.SIGINT)
    else:
        os.kill(os.getpid(), signal.SIGINT)

cache = StreamCache(pa.RecordBatchReader.from_batches(pa.schema([("x", pa.int64())]), produce()))
threading.Thread(target=press_ctrl_c, daemon=True).start()
result = {"swallowed": False}
try:
    try:
        if how == "ingest_all":
            cache.ingest_all()
        elif how == "iterate":
            for batch in cache:
                pass
        else:
            reader = cache.reader()
            next(reader)
            next(reader)
    except Exception as err:
        result["swallowed"] = True
        raise
except BaseException as err:
    result.update(type=type(err).__name__, mro=[c.__name__ for c in type(err).__mro__],
                  message=str(err), notes=getattr(err, "__notes__", []))
reader = cache.reader()
result["before"] = next(reader).column(0)[0].as_py()
print(json.dumps(result))
"""


@pytest.mark.parametrize("how", ["ingest_all", "iterate", "next"])
def test_a_real_ctrl_c_during_a_blocking_upstream_arrives_as_keyboardinterrupt(how):
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CTRL_C_CHILD), how],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, f"{done.returncode}\n{done.stdout}\n{done.stderr}"
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["type"] == "KeyboardInterrupt", out
    assert out["mro"] == ["KeyboardInterrupt", "BaseException", "object"], out
    assert not out["swallowed"]
    assert "in produce" in "\n".join(out["notes"]), out
    assert out["before"] == 0


# -- every status and kind ---------------------------------------------------------------

# The class and the built-in a caller would catch for each status, with its kind
# (BC_IO and BC_UPSTREAM: at least).
EXPECTED = {
    ("BC_INVALID_ARGUMENT", "BC_ERROR_KIND_NONE"): (InvalidArgumentError, ValueError),
    ("BC_INVALID_ARGUMENT", "BC_ERROR_KIND_READER_CAP"): (ReaderCapError, ValueError),
    ("BC_INVALID_ARGUMENT", "BC_ERROR_KIND_OUT_OF_RANGE"): (OutOfRangeError, IndexError),
    ("BC_CAPACITY", "BC_ERROR_KIND_NONE"): (CapacityError, MemoryError),
    ("BC_IO", "BC_ERROR_KIND_NONE"): (DiskError, OSError),
    ("BC_UPSTREAM", "BC_ERROR_KIND_NONE"): (UpstreamError, ValueError),  # errno EINVAL below
    ("BC_EVICTED", "BC_ERROR_KIND_NONE"): (BatchEvictedError, ValueError),
    ("BC_CLOSED", "BC_ERROR_KIND_NONE"): (CacheClosedError, ValueError),
    ("BC_INTERNAL", "BC_ERROR_KIND_NONE"): (InternalError, RuntimeError),
    ("BC_CORRUPT", "BC_ERROR_KIND_NONE"): (CorruptCacheError, ValueError),
}


def test_every_status_and_kind_the_header_defines_has_a_class_in_the_table():
    statuses = ffi.typeof("enum BcStatus").elements  # value -> name, from the header
    kinds = ffi.typeof("enum BcErrorKind").elements
    none = lib.BC_ERROR_KIND_NONE
    failing = {value for value, name in statuses.items() if name != "BC_OK"}
    assert lib.BC_OK == 0 and statuses[0] == "BC_OK" and none == 0
    table = _exceptions._CLASSES
    assert {status for status, kind in table if kind == none} == failing, "map every status"
    assert {kind for _, kind in table} == set(kinds), "map every kind, with its status"
    named = {(statuses[status], kinds[kind]): cls for (status, kind), cls in table.items()}
    assert named == {key: cls for key, (cls, _) in EXPECTED.items()}
    for (status, kind), cls in table.items():
        # A kind is a case of its status: caught as the status's class too.
        assert issubclass(cls, table[status, none]), cls
        _, builtin = EXPECTED[statuses[status], kinds[kind]]
        err = _errors.error_for(status, errno.EINVAL, "x-marker", kind)
        assert isinstance(err, cls) and isinstance(err, BatchcorderError), cls
        assert isinstance(err, builtin), cls
        assert "x-marker" in str(err)
        assert_public(err)


def test_the_package_exports_exactly_the_classes_of_the_table():
    # batchcorder imports every public name of _exceptions: only the classes may be there.
    public = {name for name in vars(_exceptions) if not name.startswith("_")}
    assert public == set(_exceptions._EXPORTED)
    assert set(_exceptions._EXPORTED) == {"BatchcorderError"} | {c.__name__ for c in _exceptions._CLASSES.values()}
    for name in _exceptions._EXPORTED:
        assert name in batchcorder.__all__ and getattr(batchcorder, name) is getattr(_exceptions, name)


def test_a_kind_this_package_does_not_know_is_its_status_class():
    err = _errors.error_for(lib.BC_INVALID_ARGUMENT, errno.EINVAL, "x-marker", 99)
    assert type(err) is InvalidArgumentError


def test_an_unknown_status_is_an_internal_error():
    err = _errors.error_for(99, 0, "x-marker")
    assert isinstance(err, InternalError) and isinstance(err, RuntimeError)


@pytest.mark.parametrize(
    "code, builtin",
    [
        (errno.EACCES, PermissionError),
        (errno.EPERM, PermissionError),
        (errno.ENOENT, FileNotFoundError),
        (errno.EEXIST, FileExistsError),
        (errno.ENOTDIR, NotADirectoryError),
        (errno.ENOSPC, OSError),
        (errno.EIO, OSError),
        (0, OSError),
    ],
)
def test_a_disk_error_is_the_oserror_subclass_of_its_errno(code, builtin):
    err = _errors.error_for(lib.BC_IO, code, "x-marker")
    assert isinstance(err, DiskError) and isinstance(err, builtin)
    assert err.errno == (code or errno.EIO)
    assert type(err).__name__ == ("DiskError" if builtin is OSError else "Disk" + builtin.__name__)
    assert "x-marker" in str(err)
    assert_public(err)


@pytest.mark.parametrize(
    "code, builtin",
    [
        (errno.EINVAL, ValueError),
        (errno.ENOMEM, MemoryError),
        (errno.ECONNRESET, ConnectionResetError),
        (errno.EIO, OSError),
        (0, OSError),
    ],
)
def test_an_upstream_that_names_no_python_exception_is_typed_by_its_errno(code, builtin):
    """A C producer (or DuckDB, or a pyarrow source failing in C++) gives no Python detail."""
    err = _errors.error_for(lib.BC_UPSTREAM, code, "upstream stream failed: x-marker")
    assert isinstance(err, UpstreamError) and isinstance(err, builtin)
    assert str(err) == "upstream stream failed: x-marker"
    if issubclass(builtin, OSError):
        assert err.errno == (code or errno.EIO)
    assert not getattr(err, "__notes__", None)
    assert_public(err)


def test_real_statuses_raise_batchcorder_errors():
    cache = StreamCache(pa.table({"x": [1]}), max_readers=1)
    with pytest.raises(InvalidArgumentError) as info:
        cache.cast(pa.schema([("y", pa.int64())]))
    assert not isinstance(info.value, ReaderCapError)
    cache.reader()
    with pytest.raises(ReaderCapError, match="max_readers=1"):
        cache.reader()
    cache.close()
    with pytest.raises(CacheClosedError):
        cache.reader()


def test_made_classes_are_package_attributes_and_unknown_names_are_not():
    assert batchcorder.UpstreamKeyError is batchcorder.UpstreamKeyError
    assert issubclass(batchcorder.UpstreamKeyError, KeyError)
    assert issubclass(batchcorder.DiskFileNotFoundError, FileNotFoundError)
    for name in ("UpstreamNothing", "UpstreamException", "UpstreamIOError", "DiskValueError", "Disk"):
        with pytest.raises(AttributeError):
            getattr(batchcorder, name)


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX permissions")
def test_an_unwritable_disk_path_is_a_permission_error(tmp_path):
    # Root may create a folder anywhere but in sysfs (EPERM); anyone else is refused by a
    # folder without write permission (EACCES).
    if os.geteuid() == 0:
        target, code = "/sys", errno.EPERM
    else:
        target, code = tmp_path / "unwritable", errno.EACCES
        target.mkdir(mode=0o555)
    with pytest.raises(PermissionError) as info:
        StreamCache(pa.table({"x": [1]}), memory_capacity=0, disk_path=target, disk_capacity=1 << 20)
    err = info.value
    assert type(err).__name__ == "DiskPermissionError" and isinstance(err, DiskError), err
    assert err.errno == code, err
    assert os.strerror(code) in str(err) and str(target) in str(err), err


def test_an_os_error_names_its_errno_once(tmp_path):
    with pytest.raises(FileNotFoundError) as missing:
        StreamCache.open(tmp_path / "nowhere")
    text = str(missing.value)
    assert missing.value.errno == 2
    assert text.count("[Errno 2]") == 1 and "os error" not in text, text
