"""Arrow PyCapsules: reading the pointer out of one, and wrapping a reader stream in one.

The library never touches Python, so the capsule destructor lives here: it releases a
stream that was never consumed, then frees the struct (``bc_stream_free``).
"""

from __future__ import annotations

import ctypes
from typing import Any

from ._native import ffi, lib

STREAM_NAME = b"arrow_array_stream"
SCHEMA_NAME = b"arrow_schema"

_api = ctypes.pythonapi
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_New.restype = ctypes.py_object
_api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
# The destructor gets a borrowed PyObject* of a capsule being freed: take it as a raw
# address, so that ctypes does not touch its reference count.
_raw_get_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", _api)
)
# The name must outlive every capsule that carries it.
_STREAM_NAME_BUF = ctypes.create_string_buffer(STREAM_NAME)


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _free_stream_capsule(capsule: int) -> None:
    address = _raw_get_pointer(capsule, _STREAM_NAME_BUF)
    if address:
        lib.bc_stream_free(ffi.cast("struct ArrowArrayStream *", address))


_DESTRUCTOR = ctypes.cast(_free_stream_capsule, ctypes.c_void_p).value


def capsule_pointer(capsule: Any, name: bytes, what: str) -> int:
    """The address inside ``capsule``, checking that it carries ``name``."""
    if not _api.PyCapsule_IsValid(capsule, name):
        raise TypeError(
            f"{what} must be a PyCapsule named {name.decode()!r}, got {type(capsule).__name__}"
        )
    address = _api.PyCapsule_GetPointer(capsule, name)
    if not address:
        raise ValueError(f"{what} holds a NULL pointer")
    return int(address)


def stream_capsule(stream: Any) -> Any:
    """Wrap a ``bc_stream_new`` struct in a capsule that now owns it."""
    address = int(ffi.cast("uintptr_t", stream))
    return _api.PyCapsule_New(address, _STREAM_NAME_BUF, _DESTRUCTOR)
