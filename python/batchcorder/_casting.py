"""CastingStreamCache: a replayable view of a cache whose batches are cast to a schema."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import pyarrow as pa

from ._capsules import requested_schema_pointer
from ._errors import check
from ._native import lib
from ._reader import StreamCacheReader, cast_failure, reader_capsule
from ._schema import fields

if TYPE_CHECKING:
    from ._cache import StreamCache


class CastingStreamCache:
    """A replayable view of a :class:`StreamCache` whose batches are cast to a schema.

    Made by :meth:`StreamCache.cast`. Each scan creates a reader of the underlying cache
    (and counts against ``max_readers``).

    Examples
    --------
    >>> import pyarrow as pa
    >>> from batchcorder import StreamCache
    >>> cache = StreamCache(pa.table({"x": [1, 2]}))
    >>> view = cache.cast(pa.schema([("x", pa.string())]))
    >>> pa.table(view).column("x").to_pylist(), pa.table(view).num_rows
    (['1', '2'], 2)
    """

    def __init__(self, cache: StreamCache, target_schema: pa.Schema, *, safe: bool = True) -> None:
        cast_failure(safe)
        capsule = target_schema.__arrow_c_schema__()
        check(lib.bc_cache_check_schema(cache._handle.get(), requested_schema_pointer(capsule)))
        self._cache = cache
        self._target = target_schema
        self._safe = safe

    @property
    def schema(self) -> pa.Schema:
        """The target schema."""
        return self._target

    def reader(
        self,
        from_start: bool = True,
        *,
        shuffle: Optional[int] = None,
        shuffle_window: Optional[int] = None,
        shuffle_rows: bool = False,
        shard: Optional[tuple[int, int]] = None,
    ) -> StreamCacheReader:
        """A new reader whose batches are cast to the target schema; the order arguments
        are :meth:`StreamCache.reader`'s."""
        return StreamCacheReader._create(
            self._cache, from_start, self._target, self._safe, shuffle=shuffle,
            shuffle_window=shuffle_window, shuffle_rows=shuffle_rows, shard=shard,
        )

    def __iter__(self) -> StreamCacheReader:
        return self.reader()

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        """A new casting reader as a PyCapsule (``requested_schema`` is not re-applied)."""
        return reader_capsule(self._cache._handle.get(), None, (self._target, self._safe))

    def __arrow_c_schema__(self) -> Any:
        return self._target.__arrow_c_schema__()

    def __repr__(self) -> str:
        unsafe = "" if self._safe else " safe=False"
        return f"<CastingStreamCache target=({fields(self._target)}){unsafe} of {self._cache!r}>"
