"""What owns a C object: the one base for ``close()`` and ``with``, and the cache handle."""

from __future__ import annotations

from typing import Any, TypeVar

from ._errors import check
from ._exceptions import CacheClosedError
from ._native import ffi, lib

_Self = TypeVar("_Self", bound="ClosesOnExit")


class ClosesOnExit:
    """The base of every public class that owns a C object: ``close()`` releases it
    (idempotent), and as a context manager it closes on exit."""

    __slots__ = ()

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            f"a {type(self).__name__} cannot be pickled: it is a position in this "
            "process's cache. Pickle the StreamCache instead (once persisted, or with a "
            "disk_path, it pickles as a reference to its files) and make readers in the "
            "other process; a forked child reads its parent's filled cache as it is"
        )


class CacheHandle:
    """Owns one ``BcCache *``; every use checks that it is still open.

    Readers do not hold it: a C reader keeps the cached batches alive by itself.
    """

    __slots__ = ("_pointer", "closed")

    def __init__(self, pointer: Any) -> None:
        self._pointer = ffi.gc(pointer, lib.bc_cache_free)
        self.closed = False

    def get(self) -> Any:
        """The pointer, or ``CacheClosedError`` once closed."""
        if self.closed:
            raise CacheClosedError(
                "this StreamCache is closed; create a new StreamCache from a fresh source"
            )
        return self._pointer

    def even_if_closed(self) -> Any:
        """The pointer, open or closed: for what a closed cache still answers (its
        schema), which the C object keeps until it is freed."""
        return self._pointer

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            check(lib.bc_cache_close(self._pointer))
