"""Turning ``StreamCache``'s arguments into a ``BcOptions``.

Python converts and forwards: it checks only what the conversion needs (an int that fits
a ``uint64_t``, a known name for an enum, a path), and the ``bc_options_set_*`` calls and
``bc_cache_new`` check the values, so each value rule has one home.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Mapping, Optional

from ._errors import InvalidArgumentError, check
from ._native import ffi, lib

WritePolicy = Literal["on_insertion", "on_eviction"]
Compression = Literal["lz4", "zstd"]
_WRITE_POLICIES: Mapping[Any, int] = {
    "on_insertion": lib.BC_WRITE_ON_INSERTION,
    "on_eviction": lib.BC_WRITE_ON_EVICTION,
}
_COMPRESSIONS: Mapping[Any, int] = {
    None: lib.BC_COMPRESSION_NONE,
    "lz4": lib.BC_COMPRESSION_LZ4,
    "zstd": lib.BC_COMPRESSION_ZSTD,
}
_UINT64_END = 1 << 64
_UNSET = (None,) * 6
_DEFAULTS = (lib.BC_WRITE_ON_INSERTION, lib.BC_COMPRESSION_NONE)  # bc_options_new's


def _uint64(name: str, value: Any) -> Optional[int]:
    """``value`` as a ``uint64_t`` for cffi, or None when it is None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if not 0 <= value < _UINT64_END:
        raise InvalidArgumentError(f"{name} must be between 0 and 2**64 - 1, got {value}")
    return value


def _enum(name: str, value: Any, values: Mapping[Any, int]) -> int:
    """The C enum value for the name ``value`` among ``values``."""
    try:
        return values[value]
    except (KeyError, TypeError):  # TypeError: unhashable
        *most, last = map(repr, values)
        raise InvalidArgumentError(
            f"{name} must be {', '.join(most)} or {last}, got {value!r}"
        ) from None


def _disk(disk_path: Any, disk_capacity: Any) -> Optional[tuple[bytes, int]]:
    """The disk tier's directory and capacity for ``bc_options_set_disk``, or None."""
    if disk_path is None and disk_capacity is None:
        return None
    # One C call takes both, so a Python caller gives both or neither.
    if disk_path is None or disk_capacity is None:
        missing = "disk_path" if disk_path is None else "disk_capacity"
        raise InvalidArgumentError(
            f"disk_path and disk_capacity go together: {missing} is missing; "
            "give both to enable the disk tier, or neither"
        )
    capacity = _uint64("disk_capacity", disk_capacity)
    assert capacity is not None
    return path_bytes("disk_path", disk_path), capacity


def path_bytes(name: str, value: Any) -> bytes:
    """A ``str`` or ``os.PathLike`` argument as the bytes the C calls take."""
    path = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(path, str):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(value).__name__}")
    return os.fsencode(path)



def options(
    memory_capacity: Any,
    disk_path: Any,
    disk_capacity: Any,
    write_policy: Any,
    max_readers: Any,
    compression: Any,
    segment_bytes: Any,
    prefetch: Any = None,
    persist_path: Any = None,
) -> Any:
    """A ``BcOptions *`` (freed at garbage collection) with ``StreamCache``'s arguments,
    or NULL, which ``bc_cache_new`` takes as every default, when they are all defaults."""
    memory = _uint64("memory_capacity", memory_capacity)
    readers = _uint64("max_readers", max_readers)
    policy = _enum("write_policy", write_policy, _WRITE_POLICIES)
    codec = _enum("compression", compression, _COMPRESSIONS)
    disk = _disk(disk_path, disk_capacity)
    segment = _uint64("segment_bytes", segment_bytes)
    ahead = _uint64("prefetch", prefetch)
    save = None if persist_path is None else path_bytes("persist_path", persist_path)
    if (memory, readers, disk, segment, ahead, save) == _UNSET and (policy, codec) == _DEFAULTS:
        return ffi.NULL
    raw = lib.bc_options_new()
    if raw == ffi.NULL:
        raise MemoryError("cannot allocate a BcOptions")
    built = ffi.gc(raw, lib.bc_options_free)
    if memory is not None:
        check(lib.bc_options_set_memory_capacity(built, memory))
    if readers is not None:
        check(lib.bc_options_set_max_readers(built, readers))
    if disk is not None:
        check(lib.bc_options_set_disk(built, *disk))
    check(lib.bc_options_set_write_policy(built, policy))
    check(lib.bc_options_set_compression(built, codec))
    if segment is not None:
        check(lib.bc_options_set_segment_bytes(built, segment))
    if ahead is not None:
        check(lib.bc_options_set_prefetch(built, ahead))
    if save is not None:
        check(lib.bc_options_set_persist(built, save))
    # The rules between options, before the caller hands over a source it cannot get back.
    check(lib.bc_options_validate(built))
    return built
