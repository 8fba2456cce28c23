"""batchcorder: read a single-use Arrow stream once, replay it from any number of readers.

>>> import pyarrow as pa, batchcorder
>>> cache = batchcorder.StreamCache(pa.table({"x": [1, 2, 3]}))
>>> sum(batch.num_rows for batch in cache), sum(batch.num_rows for batch in cache)
(3, 3)
"""

from typing import Any

from ._cache import PersistedCache, StreamCache
from ._sources import ArrowStreamExportable, Source
from ._casting import CastingStreamCache
from ._reader import StreamCacheReader
from ._stats import CacheStats
from ._shards import worker_shard
from ._errors import public_class as _public_class
from . import _exceptions
# Every exception class: _exceptions defines no other public name.
from ._exceptions import *  # noqa: F401,F403
from ._native import ffi as _ffi
from ._native import lib as _lib

__version__: str = _ffi.string(_lib.bc_version()).decode()

__all__ = [
    "StreamCache",
    "StreamCacheReader",
    "PersistedCache",
    "CastingStreamCache",
    "CacheStats",
    "worker_shard",
    "Source",
    "ArrowStreamExportable",
    *_exceptions._EXPORTED,
    "__version__",
]


def __getattr__(name: str) -> Any:
    """The exception classes made per built-in on first use, by name:
    ``UpstreamRuntimeError``, ``UpstreamKeyError``, ``DiskPermissionError``, ...

    >>> import batchcorder
    >>> cls = batchcorder.UpstreamTypeError
    >>> issubclass(cls, batchcorder.UpstreamError), issubclass(cls, TypeError)
    (True, True)
    """
    return _public_class(name)
