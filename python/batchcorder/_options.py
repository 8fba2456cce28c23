"""Turning ``StreamCache``'s arguments into a ``BcOptions``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

from ._errors import check
from ._native import ffi, lib

WritePolicy = Literal["on_insertion", "on_eviction"]
Compression = Literal["lz4", "zstd"]
_WRITE_POLICIES = {
    "on_insertion": lib.BC_WRITE_ON_INSERTION,
    "on_eviction": lib.BC_WRITE_ON_EVICTION,
}
_COMPRESSIONS = {
    None: lib.BC_COMPRESSION_NONE,
    "lz4": lib.BC_COMPRESSION_LZ4,
    "zstd": lib.BC_COMPRESSION_ZSTD,
}


def _positive_int(name: str, value: Any, minimum: int = 1) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _disk_dir(disk_path: Any, disk_capacity: Any) -> Optional[Path]:
    """Check the disk tier's two parameters, which go together."""
    if disk_path is None and disk_capacity is None:
        return None
    if disk_path is None or disk_capacity is None:
        missing = "disk_path" if disk_path is None else "disk_capacity"
        raise ValueError(
            f"disk_path and disk_capacity go together: {missing} is missing; "
            "give both to enable the disk tier, or neither"
        )
    if not isinstance(disk_path, (str, os.PathLike)):
        raise TypeError(f"disk_path must be a str or os.PathLike, got {type(disk_path).__name__}")
    _positive_int("disk_capacity", disk_capacity)
    path = Path(disk_path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"disk_path {str(path)!r} is a file; pass a directory")
    return path


def options(
    memory_capacity: Any,
    disk_path: Any,
    disk_capacity: Any,
    write_policy: Any,
    max_readers: Any,
    compression: Any,
    segment_bytes: Any,
) -> Any:
    """A ``BcOptions *`` (freed at garbage collection) with ``StreamCache``'s arguments."""
    with_disk = disk_path is not None or disk_capacity is not None
    memory_capacity = _positive_int("memory_capacity", memory_capacity, minimum=0 if with_disk else 1)
    max_readers = _positive_int("max_readers", max_readers)
    if write_policy not in _WRITE_POLICIES:
        raise ValueError(
            f"write_policy must be 'on_insertion' or 'on_eviction', got {write_policy!r}"
        )
    if compression not in _COMPRESSIONS:
        raise ValueError(f"compression must be None, 'lz4' or 'zstd', got {compression!r}")
    disk_dir = _disk_dir(disk_path, disk_capacity)
    segment_bytes = _positive_int("segment_bytes", segment_bytes)
    built = ffi.gc(lib.bc_options_new(), lib.bc_options_free)
    if memory_capacity is not None:
        check(lib.bc_options_set_memory_capacity(built, memory_capacity))
    if max_readers is not None:
        check(lib.bc_options_set_max_readers(built, max_readers))
    if disk_dir is not None:
        check(lib.bc_options_set_disk(built, os.fsencode(disk_dir), disk_capacity))
        check(lib.bc_options_set_write_policy(built, _WRITE_POLICIES[write_policy]))
        check(lib.bc_options_set_compression(built, _COMPRESSIONS[compression]))
        if segment_bytes is not None:
            check(lib.bc_options_set_segment_bytes(built, segment_bytes))
    return built
