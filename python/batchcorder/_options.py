"""Turning ``StreamCache``'s arguments into a ``BcOptions``.

Python converts and forwards: it checks only what the conversion needs (an int that fits
a ``uint64_t``, a known name for an enum, a path), and the ``bc_options_set_*`` calls and
``bc_cache_new`` check the values, so each value rule has one home.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Mapping, Optional

from ._errors import check
from ._exceptions import InvalidArgumentError
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


def _uint64(name: str, value: Any) -> int:
    """``value`` as a ``uint64_t`` for cffi."""
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
    return path_bytes("disk_path", disk_path), _uint64("disk_capacity", disk_capacity)


def path_bytes(name: str, value: Any) -> bytes:
    """A ``str`` or ``os.PathLike`` argument as the bytes the C calls take."""
    path = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(path, str):
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(value).__name__}")
    return os.fsencode(path)


def options(
    *,
    memory_capacity: Any = None,
    disk_path: Any = None,
    disk_capacity: Any = None,
    write_policy: Any = "on_insertion",
    max_readers: Any = None,
    compression: Any = None,
    segment_bytes: Any = None,
    prefetch: Any = None,
    persist_path: Any = None,
) -> Any:
    """A ``BcOptions *`` (freed at garbage collection) with the options given, for
    ``bc_cache_new`` or ``bc_cache_open``; or NULL, which both take as every default,
    when every option is left at its default. Every value is converted before the builder
    is made, so a refused one leaves nothing half built.

    >>> options() == ffi.NULL, options(max_readers=2) == ffi.NULL
    (True, False)
    """
    # Every option at its default, as for most caches: no builder, and nothing to convert.
    if (
        memory_capacity is None and disk_path is None and disk_capacity is None
        and max_readers is None and compression is None and segment_bytes is None
        and prefetch is None and persist_path is None and write_policy == "on_insertion"
    ):
        return ffi.NULL
    # (setter, its arguments after the builder) for each option that is not a default.
    calls: list[tuple[Any, tuple[Any, ...]]] = []
    for name, value, setter in (
        ("memory_capacity", memory_capacity, lib.bc_options_set_memory_capacity),
        ("max_readers", max_readers, lib.bc_options_set_max_readers),
        ("segment_bytes", segment_bytes, lib.bc_options_set_segment_bytes),
        ("prefetch", prefetch, lib.bc_options_set_prefetch),
    ):
        if value is not None:
            calls.append((setter, (_uint64(name, value),)))
    disk = _disk(disk_path, disk_capacity)
    if disk is not None:
        calls.append((lib.bc_options_set_disk, disk))
    policy = _enum("write_policy", write_policy, _WRITE_POLICIES)
    if policy != lib.BC_WRITE_ON_INSERTION:
        calls.append((lib.bc_options_set_write_policy, (policy,)))
    codec = _enum("compression", compression, _COMPRESSIONS)
    if codec != lib.BC_COMPRESSION_NONE:
        calls.append((lib.bc_options_set_compression, (codec,)))
    if persist_path is not None:
        calls.append((lib.bc_options_set_persist, (path_bytes("persist_path", persist_path),)))
    raw = lib.bc_options_new()
    if raw == ffi.NULL:
        raise MemoryError("cannot allocate a BcOptions")
    built = ffi.gc(raw, lib.bc_options_free)
    for setter, args in calls:
        check(setter(built, *args))
    # The rules between options, before the caller hands over a source it cannot get back.
    check(lib.bc_options_validate(built))
    return built
