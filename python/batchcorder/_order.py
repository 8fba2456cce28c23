"""A reader's order and share: ``shuffle``, ``shuffle_window``, ``shuffle_rows`` and
``shard`` as a ``BcReaderOptions`` for ``bc_cache_reader_with``.

Only the arguments' Python types and their ``uint64_t`` range are checked here; the
rules between them, and the orders themselves, are the C library's.
"""

from __future__ import annotations

from typing import Any, Optional

from ._errors import check
from ._native import ffi, lib

_U64_MAX = 2**64 - 1


def _uint64(value: Any, name: str, what: str) -> int:
    """``value`` as a ``uint64_t``: an ``int`` (not a ``bool``) from 0 to 2**64 - 1."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int ({what}), got {type(value).__name__}")
    if not 0 <= value <= _U64_MAX:
        raise ValueError(f"{name} must be from 0 to 2**64 - 1 ({what}), got {value}")
    return value


def shard_pair(shard: Any) -> tuple[int, int]:
    """``shard`` as ``(index, count)``: a tuple or list of two ints; ``TypeError``
    otherwise."""
    if not isinstance(shard, (tuple, list)) or len(shard) != 2:
        raise TypeError(
            f"shard must be a pair (index, count), got {type(shard).__name__} {shard!r}"
        )
    index, count = shard
    return (
        _uint64(index, "the shard index", "which shard, from 0 to count - 1"),
        _uint64(count, "the shard count", "how many shards"),
    )


def reader_options(
    from_start: bool,
    shuffle: Any = None,
    shuffle_window: Any = None,
    shuffle_rows: Any = False,
    shard: Any = None,
) -> Optional[Any]:
    """A ``BcReaderOptions *`` (freed at garbage collection) for these arguments, or
    ``None`` for a reader in the stream's order (``bc_cache_reader`` makes that one)."""
    if not isinstance(from_start, bool):
        raise TypeError(f"from_start must be a bool, got {type(from_start).__name__}")
    if not isinstance(shuffle_rows, bool):
        raise TypeError(f"shuffle_rows must be a bool, got {type(shuffle_rows).__name__}")
    if shuffle is None and shuffle_window is None and not shuffle_rows and shard is None:
        return None
    raw = lib.bc_reader_options_new()
    if raw == ffi.NULL:
        raise MemoryError("cannot allocate reader options")
    options = ffi.gc(raw, lib.bc_reader_options_free)
    check(lib.bc_reader_options_set_from_start(options, from_start))
    if shuffle is not None:
        seed = _uint64(shuffle, "shuffle", "the seed of the order")
        check(lib.bc_reader_options_set_shuffle(options, seed))
    if shuffle_window is not None:
        window = _uint64(shuffle_window, "shuffle_window", "batches to shuffle among")
        check(lib.bc_reader_options_set_shuffle_window(options, window))
    check(lib.bc_reader_options_set_shuffle_rows(options, shuffle_rows))
    if shard is not None:
        check(lib.bc_reader_options_set_shard(options, *shard_pair(shard)))
    return options
