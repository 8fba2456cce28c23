"""Python replays: batch objects that later Python readers return without a C call.

Only a cache that never drops a batch (memory only, no ``max_readers``) has one. Its
readers return the batches an earlier Python reader imported, by position, and move their
C reader forward only when they need it again (see ``StreamCacheReader``).
"""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa

from ._errors import raise_status
from ._handle import CacheHandle
from ._native import lib

# Python objects kept per cache.
_BUDGET_BYTES = 32 << 20
# Each kept batch's own objects, per column (they share the cached buffers).
_BYTES_PER_COLUMN = 1024
_reader_next = lib.bc_reader_next


class Replay:
    """The batches Python readers of one cache imported, by position, up to ``limit``."""

    __slots__ = ("batches", "limit", "_lock", "_handle")

    def __init__(self, handle: CacheHandle, columns: int) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.limit = _BUDGET_BYTES // (_BYTES_PER_COLUMN * (columns + 1))
        self._lock = threading.Lock()
        self._handle = handle

    def keep(self, position: int, batch: pa.RecordBatch) -> None:
        """Keep ``batch`` if it is the next one the list lacks.

        A list by position is cheaper to fill and to free than a dict. A batch past its
        end (read by a reader that started at the frontier) is not kept; readers racing
        for the same position keep the first.
        """
        with self._lock:
            if position == len(self.batches):
                self.batches.append(batch)

    def finished_at(self, position: int) -> bool:
        """True when the stream is known to end exactly at ``position``."""
        if self._handle.closed:
            return False
        pointer = self._handle.get()
        return bool(
            lib.bc_cache_upstream_exhausted(pointer)
            and lib.bc_cache_ingested_count(pointer) == position
        )

    def clear(self) -> None:
        """Drop every batch: readers then find the list empty and ask the C cache."""
        self.batches.clear()


def skip(stream: Any, array: Any) -> None:
    """Move the C reader ``stream`` one batch forward, releasing the batch into ``array``
    (a ``struct ArrowArray *``)."""
    status = _reader_next(stream, array)
    if status:
        raise_status(status)
    if array.release:
        array.release(array)
