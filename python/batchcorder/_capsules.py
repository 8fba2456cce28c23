"""Arrow PyCapsules: reading the pointer out of one, and wrapping a reader stream in one.

The capsule destructor is ``bc_capsule_release_stream``, a C function of the library that
finds its stream by the capsule's address: no Python code runs when a capsule dies,
so it is safe while an exception propagates and at interpreter exit.
"""

from __future__ import annotations

import ctypes
from typing import Any

from ._errors import check
from ._native import ffi, lib

STREAM_NAME = b"arrow_array_stream"
SCHEMA_NAME = b"arrow_schema"

_api = ctypes.pythonapi
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_api.PyCapsule_New.restype = ctypes.py_object
_api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
# The name must outlive every capsule that carries it.
_STREAM_NAME_BUF = ctypes.create_string_buffer(STREAM_NAME)
_DESTRUCTOR = int(ffi.cast("uintptr_t", ffi.addressof(lib, "bc_capsule_release_stream")))


def capsule_pointer(capsule: Any, name: bytes, what: str) -> int:
    """The address inside ``capsule``, checking that it carries ``name``."""
    try:
        # Checks the type and the name itself (a capsule never holds NULL): one ctypes
        # call, which costs more than the C it runs.
        return int(_api.PyCapsule_GetPointer(capsule, name))
    except ValueError:
        raise TypeError(
            f"{what} must be a PyCapsule named {name.decode()!r}, got {type(capsule).__name__}"
        ) from None


def requested_schema_pointer(requested_schema: Any) -> Any:
    """The ``struct ArrowSchema *`` in an ``arrow_schema`` capsule, or NULL for None."""
    if requested_schema is None:
        return ffi.NULL
    address = capsule_pointer(requested_schema, SCHEMA_NAME, "requested_schema")
    return ffi.cast("struct ArrowSchema *", address)


def stream_capsule(stream: Any) -> Any:
    """Wrap a ``bc_stream_new`` struct in a capsule that now owns it."""
    address = int(ffi.cast("uintptr_t", stream))
    capsule = _api.PyCapsule_New(address, _STREAM_NAME_BUF, _DESTRUCTOR)
    check(lib.bc_capsule_adopt_stream(ffi.cast("void *", id(capsule)), stream))
    return capsule
