"""CacheStats: a cache's counters, as ``bc_cache_stats`` reports them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    )
