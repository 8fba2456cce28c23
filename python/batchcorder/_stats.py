"""CacheStats: a cache's counters, as ``bc_cache_stats`` reports them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ._errors import check
from ._native import ffi, lib


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of a cache's counters (from ``bc_cache_stats``, which C users read too).

    Examples
    --------
    >>> import pyarrow as pa
    >>> from batchcorder import StreamCache
    >>> cache = StreamCache(pa.table({"x": [1, 2, 3]}))
    >>> _ = cache.ingest_all()
    >>> stats = cache.stats()
    >>> stats.batches_ingested, stats.rows_ingested, stats.upstream_exhausted
    (1, 3, True)

    ``validation`` is ``None`` except for a cache opened from a save
    (:meth:`~batchcorder.StreamCache.open`), where it says how each batch is checked on
    its first read in this process: ``"checksums"`` (against its checksum, then
    validated in full), ``"full"`` (validated in full, UTF-8 included) or ``"noted"``
    (validated in full but for UTF-8, which the save's ``validated.json`` vouches for).
    """

    batches_ingested: int
    rows_ingested: int
    memory_bytes: int
    disk_bytes: int
    batches_evicted: int
    segments_deleted: int
    readers_live: int
    readers_created: int
    upstream_exhausted: bool
    upstream_wait_seconds: float
    validation: Optional[str] = None


def read_stats(cache: Any) -> CacheStats:
    """The counters of the ``BcCache *`` ``cache``."""
    c_stats = ffi.new("BcStats *")
    check(lib.bc_cache_stats(cache, c_stats))
    return CacheStats(
        batches_ingested=c_stats.batches_ingested,
        rows_ingested=c_stats.rows_ingested,
        memory_bytes=c_stats.memory_bytes,
        disk_bytes=c_stats.disk_bytes,
        batches_evicted=c_stats.batches_evicted,
        segments_deleted=c_stats.segments_deleted,
        readers_live=c_stats.readers_live,
        readers_created=c_stats.readers_created,
        upstream_exhausted=bool(c_stats.upstream_exhausted),
        upstream_wait_seconds=c_stats.upstream_wait_ns / 1e9,
        validation=_VALIDATION[c_stats.validation],
    )


_VALIDATION = {
    lib.BC_VALIDATION_NONE: None,
    lib.BC_VALIDATION_CHECKSUMS: "checksums",
    lib.BC_VALIDATION_FULL: "full",
    lib.BC_VALIDATION_NOTED: "noted",
}
