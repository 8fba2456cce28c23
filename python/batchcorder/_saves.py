"""The handle of a cache and its saves: what every StreamCache holds, how it persists to a
directory, opens one, and pickles as a reference to one."""

from __future__ import annotations

import atexit
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar, Union

import pyarrow as pa

from ._errors import check
from ._exceptions import CorruptCacheError, InvalidArgumentError
from ._handle import CacheHandle, ClosesOnExit
from ._native import ffi, lib
from ._options import options, path_bytes
from ._stats import CacheStats

_Cache = TypeVar("_Cache", bound="CacheBase")


@dataclass(frozen=True)
class PersistedCache:
    """A persisted cache's directory and what its manifest records.

    ``id`` is new for every save: a pickled reference names it, so a directory saved
    again is not taken for the one the reference was made from.
    """

    path: Path
    id: str
    batches: int
    rows: int

    @classmethod
    def _from_c(cls, path: Union[str, Path], info: Any) -> "PersistedCache":
        return cls(Path(path), ffi.string(info.id).decode(), int(info.batches), int(info.rows))


class CacheBase(ClosesOnExit):
    """What every :class:`~batchcorder.StreamCache` has, and its saves: the C handle and
    what it was made with; :meth:`persist`, :meth:`open` and pickling."""

    _handle: CacheHandle
    _schema: Optional[pa.Schema]
    _source_rows: Optional[int]
    _logged: Optional[CacheStats]

    def _adopt(
        self,
        pointer: Any,
        max_readers: Optional[int],
        prefetch: Optional[int],
        *,
        with_disk: bool = False,
        opened: Optional[PersistedCache] = None,
        verify: Optional[bool] = None,
    ) -> None:
        """Take ownership of a new ``BcCache *``."""
        self._handle = CacheHandle(pointer)
        self._schema: Optional[pa.Schema] = None  # fetched on first use
        self._with_disk = with_disk
        self._source_rows = None
        self._logged = None
        self._max_readers = max_readers
        self._prefetch = prefetch
        self._opened = opened
        self._verify = verify
        _open_caches.add(self)

    @classmethod
    def open(
        cls: type[_Cache],
        path: Union[str, "os.PathLike[str]"],
        *,
        verify: Optional[bool] = None,
        max_readers: Optional[int] = None,
    ) -> _Cache:
        """Open a cache saved by :meth:`persist`, read-only, from any process.

        Any number of processes may open it at once. Readers map the batches of its data
        file as they reach them, so processes replaying it share the page cache.
        ``close()`` deletes nothing.

        The manifest, the checksums and the data file's size, schema and footer are
        checked first: a damaged, truncated, edited or foreign directory raises
        :class:`CorruptCacheError`, a save from a newer format ``InvalidArgumentError``, a
        missing path ``FileNotFoundError``. ``max_readers`` caps the readers as
        :class:`StreamCache`'s does.

        ``verify`` says when a batch is checked against its checksum, on its first read
        in this process (one pass over its bytes; a mismatch raises
        :class:`CorruptCacheError` at that batch): ``None`` (the default) when the data
        file was modified after its save, so an edit or a damaging copy is caught and an
        untouched save is read at full speed; ``True`` always; ``False`` never. Checked
        or not, every batch is validated in full on its first read (offsets, lengths,
        UTF-8, dictionary keys), so a damaged save raises :class:`CorruptCacheError`
        rather than crash or hand out an invalid batch; only a checksum catches an
        edited value. The first process to read every batch of a save notes it in the
        save's ``validated.json``; later ones skip the UTF-8 pass (not with
        ``verify=True``, which does not read the note) while the data file's change time,
        which every write moves, is the one noted. ``cache.stats().validation`` says which
        of these checks the opened cache makes: ``"checksums"``, ``"full"`` or
        ``"noted"``.

        >>> import tempfile, pathlib, pyarrow as pa
        >>> from batchcorder import StreamCache
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     saved = StreamCache(pa.table({"x": [1, 2]})).persist(pathlib.Path(tmp, "c"))
        ...     with StreamCache.open(saved.path) as cache:
        ...         pa.table(cache).num_rows, len(cache)
        (2, 1)
        """
        encoded = path_bytes("path", path)
        info = ffi.new("BcPersisted *")
        out = ffi.new("BcCache **")
        mode = {None: lib.BC_VERIFY_IF_MODIFIED, True: lib.BC_VERIFY_ALWAYS,
                False: lib.BC_VERIFY_NEVER}.get(verify)
        if mode is None:
            raise InvalidArgumentError(f"verify must be None, True or False, got {verify!r}")
        check(lib.bc_cache_open(encoded, mode, options(max_readers=max_readers), info, out))
        cache = cls.__new__(cls)
        opened = PersistedCache._from_c(os.fsdecode(encoded), info)
        cache._adopt(out[0], max_readers, None, opened=opened, verify=verify)
        return cache

    def persist(self, path: Union[str, "os.PathLike[str]"]) -> PersistedCache:
        """Read the rest of the source and save the whole stream to the directory ``path``.

        ``path`` must not exist yet (an empty directory is taken); its parent must. The
        save is standard Arrow IPC that pyarrow, Polars and DuckDB read without
        batchcorder: ``pa.ipc.open_file(path / "data.arrow")``,
        ``pl.scan_ipc(path / "data.arrow")``. Beside it, ``manifest.json`` records the
        format version, an id, the counts, the schema and the checksums of
        ``checksums.xxh3``. It is written in a staging folder next to ``path``, synced,
        and renamed into place: a crash leaves nothing at ``path``.

        The cache stays usable. Afterwards it pickles as a reference to ``path``, and
        :meth:`open` opens the save from any process.

        Raises ``InvalidArgumentError`` if ``path`` is taken (nothing there is touched),
        if ``max_readers`` already evicted batches, or if a batch replaces a dictionary
        with one that does not extend it (an Arrow IPC file cannot hold that: cast the
        column first; one that extends it is saved as a delta); ``DiskError`` for the
        file system's errors.

        >>> import tempfile, pathlib, pyarrow as pa
        >>> from batchcorder import StreamCache
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     saved = StreamCache(pa.table({"x": [1, 2]})).persist(pathlib.Path(tmp, "c"))
        ...     pa.ipc.open_file(saved.path / "data.arrow").read_all().num_rows
        2
        """
        encoded = path_bytes("path", path)
        info = ffi.new("BcPersisted *")
        check(lib.bc_cache_persist(self._handle.get(), encoded, info))
        return PersistedCache._from_c(os.fsdecode(encoded), info)

    def __reduce__(self) -> Any:
        """A persisted or disk-backed cache pickles as a reference to its directory: the
        process that unpickles it opens that directory (see :meth:`open`). A disk-backed
        cache never persisted first reads the rest of its source and saves itself once,
        inside its private disk folder, which ``close()`` deletes."""
        path = ffi.new("char **")
        info = ffi.new("BcPersisted *")
        status = lib.bc_cache_share(self._handle.get(), path, info)
        if status == lib.BC_INVALID_ARGUMENT and not self._with_disk and self._opened is None:
            raise TypeError(
                "a memory-only StreamCache cannot be pickled: its batches live in this "
                "process. Persist it first (cache.persist(path)): it then pickles as a "
                "reference that any process opens; or give it a disk_path. A forked child "
                "reads its parent's filled cache without pickling"
            )
        check(status)
        try:
            text = ffi.string(path[0]).decode()
        finally:
            lib.bc_string_free(path[0])
        return (_open_reference, (text, ffi.string(info.id).decode(), self._verify))


def _open_reference(path: str, id: str, verify: Optional[bool]) -> Any:
    """Unpickle a cache: open the persisted copy its reference names."""
    from ._cache import StreamCache  # the class a reference names

    cache = StreamCache.open(path, verify=verify)
    assert cache._opened is not None
    if cache._opened.id != id:
        cache.close()
        raise CorruptCacheError(
            f"the persisted cache at {path} was saved again after this reference was "
            f"pickled (id {id}, now {cache._opened.id}); pickle the cache again"
        )
    return cache


# Closed at interpreter exit, so that no disk-tier directory outlives the process.
_open_caches: "weakref.WeakSet[CacheBase]" = weakref.WeakSet()


@atexit.register
def _close_open_caches() -> None:
    for cache in list(_open_caches):
        try:
            cache.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
