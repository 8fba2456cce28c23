"""Reporting ingestion: the tqdm bar and the callback of ``ingest_all``, and the DEBUG log
of spills, evictions and segment deletions."""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from ._errors import check
from ._native import ffi, lib
from ._stats import CacheStats

_log = logging.getLogger("batchcorder")
_NOTHING_YET = CacheStats(0, 0, 0, 0, 0, 0, 0, 0, False, 0.0)


def _progress_bar(total_rows: Optional[int]) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(
            "ingest_all(progress=True) needs tqdm: pip install 'batchcorder[progress]'"
        ) from None
    # Whole rows, not tqdm's scaled "10.0rows"; the total when the source knows it.
    return tqdm(total=total_rows, unit=" rows", unit_scale=False, desc="ingest")


def ingest_reporting(
    cache: Any,
    stats: Callable[[], CacheStats],
    total_rows: Optional[int],
    progress: bool,
    callback: Optional[Callable[[CacheStats], object]],
) -> None:
    """Pull the rest of the upstream of the ``BcCache *`` ``cache`` one batch at a time,
    showing a bar (``progress``, with ``total_rows`` if known) and calling ``callback``
    with ``stats()`` after each batch."""
    bar = _progress_bar(total_rows) if progress else None
    pulled = ffi.new("bool *")
    try:
        while True:
            check(lib.bc_cache_ingest_next(cache, pulled))
            if not pulled[0]:
                break
            now = stats()
            if bar is not None:
                bar.update(now.rows_ingested - bar.n)
                bar.set_postfix(
                    batches=now.batches_ingested,
                    MiB=round((now.memory_bytes + now.disk_bytes) / 2**20, 1),
                )
            if callback is not None:
                callback(now)
    finally:
        if bar is not None:
            bar.close()


def log_changes(
    stats: Callable[[], CacheStats], before: Optional[CacheStats]
) -> Optional[CacheStats]:
    """Log, at DEBUG, the spills, evictions and segment deletions since ``before`` (the
    stats logged last time, None at first); returns what to pass as ``before`` next."""
    if not _log.isEnabledFor(logging.DEBUG):
        return before
    now = stats()
    if before is None:
        before = _NOTHING_YET
    if now.disk_bytes > before.disk_bytes:
        _log.debug("spilled %d bytes to disk", now.disk_bytes - before.disk_bytes)
    if now.batches_evicted > before.batches_evicted:
        _log.debug("evicted %d batches", now.batches_evicted - before.batches_evicted)
    if now.segments_deleted > before.segments_deleted:
        _log.debug("deleted %d segments", now.segments_deleted - before.segments_deleted)
    return now
