"""Where a Ray or Dask read task finds a cache: a :class:`CacheServer` over Flight, or a
save on storage every worker shares. What batchcorder.ray and batchcorder.dask have in
common; neither engine is imported here.

A source is a small picklable value: the driver makes it, plans the shards from it, and
each task reads its shard with it in a worker process.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import pyarrow as pa

from ._exceptions import InvalidArgumentError

__all__ = ["FlightSource", "SaveSource", "Shipped", "Source", "source", "shard_count"]

# Seconds a GetSchema or GetFlightInfo, and the connection under it, may take: a server
# that is gone or unreachable fails a read at once rather than hang its task.
DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class FlightSource:
    """A cache named ``name`` on the Flight server at ``location``."""

    location: str
    name: str
    token: Optional[str] = field(default=None, repr=False)
    tls_root_certs: Optional[bytes] = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT

    def _client(self) -> Any:
        from .flight import connect

        return connect(self.location, token=self.token, tls_root_certs=self.tls_root_certs)

    def _options(self) -> Any:
        import pyarrow.flight as flight

        return flight.FlightCallOptions(timeout=self.timeout)

    def _info(self) -> Any:
        # GetFlightInfo, not GetSchema: pyarrow raises the Flight error classes
        # (FlightUnauthenticatedError...) for it, a bare OSError for GetSchema.
        import pyarrow.flight as flight

        with self._client() as client:
            return client.get_flight_info(flight.FlightDescriptor.for_path(self.name), self._options())

    def plan(self) -> tuple[pa.Schema, Optional[int]]:
        """The cache's schema, and its batch count once its source is read to the end
        (else None), from one GetFlightInfo; no reader is created."""
        info = self._info()
        state = json.loads(info.app_metadata or b"{}")
        return info.schema, (int(state["batches"]) if state.get("finished") else None)

    def read(self, shard: tuple[int, int]) -> Iterator[pa.RecordBatch]:
        """Stream shard ``shard`` (``(index, count)``) from a DoGet of its own.

        The stream is cancelled when the caller stops early, so the server releases its
        reader at once; a worker process that dies closes the connection, which the
        server notices at its next write. A wait of more than ``timeout`` seconds for
        the next batch (a stalled server or network) cancels the stream and raises
        ``TimeoutError``; the time the caller spends between batches does not count.
        """
        from .flight import ticket

        with self._client() as client:
            stream = client.do_get(ticket(self.name, shard=shard))
            watchdog = _StallWatchdog(self.timeout, stream.cancel)
            try:
                while True:
                    with watchdog.waiting():
                        try:
                            chunk = stream.read_chunk()
                        except StopIteration:
                            return
                        except (pa.ArrowException, OSError) as err:
                            if watchdog.fired:
                                raise TimeoutError(
                                    f"no batch from {self.location} for {self.timeout:g} s "
                                    f"(cache {self.name!r}, shard {shard}); the server or "
                                    "the network stalled: check the server, or pass a "
                                    "larger timeout="
                                ) from err
                            raise
                    yield chunk.data
            finally:
                watchdog.stop()
                stream.cancel()


class _StallWatchdog:
    """Calls ``on_stall`` once if a wait inside ``waiting()`` lasts over ``timeout``
    seconds: pyarrow's Flight reads take a deadline for a whole call only, which a long
    stream would pass."""

    def __init__(self, timeout: float, on_stall: Any) -> None:
        self._timeout = timeout
        self._on_stall = on_stall
        self._since: Optional[float] = None
        self._done = threading.Event()
        self.fired = False
        self._thread = threading.Thread(target=self._watch, name="bc-flight-watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        self._since = time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self._timeout / 4)):
            since = self._since
            if since is not None and time.monotonic() - since > self._timeout:
                self.fired = True
                self._on_stall()
                return

    def stop(self) -> None:
        self._done.set()


@dataclass(frozen=True)
class SaveSource:
    """A save (``StreamCache.persist``) at ``path``, on storage every worker reaches."""

    path: Path
    verify: Optional[bool] = None

    def _open(self) -> Any:
        from ._cache import StreamCache

        return StreamCache.open(self.path, verify=self.verify)

    def plan(self) -> tuple[pa.Schema, Optional[int]]:
        """The save's schema and batch count, from one open."""
        with self._open() as cache:
            return cache.schema, int(cache._opened.batches)

    def read(self, shard: tuple[int, int]) -> Iterator[pa.RecordBatch]:
        """Stream shard ``shard`` of the save, mapped batch by batch."""
        with self._open() as cache:
            yield from cache.reader(shard=shard)


Source = Union[FlightSource, SaveSource]


class Shipped:
    """A schema that travels to the workers as Arrow IPC, not as pickled pyarrow objects:
    pickle drops some of a type (a map's ``keys_sorted``), and then the batches read in a
    worker no longer match it."""

    def __init__(self, schema: pa.Schema) -> None:
        self._ipc = schema.serialize().to_pybytes()

    @property
    def schema(self) -> pa.Schema:
        return pa.ipc.read_schema(pa.py_buffer(self._ipc))


def source(
    where: Union[str, "os.PathLike[str]"],
    name: Optional[str],
    *,
    token: Optional[str],
    tls_root_certs: Union[str, "os.PathLike[str]", bytes, None],
    verify: Optional[bool],
    timeout: float,
) -> Source:
    """The source ``where`` names: a ``grpc://`` (``grpc+tls://``...) location and a
    cache ``name`` served there, or the directory of a save."""
    if isinstance(where, str) and where.startswith("grpc"):
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(
                f"name: reading the Flight server at {where} needs the name of a cache it "
                "serves (name='trades')"
            )
        if verify is not None:
            raise InvalidArgumentError("verify applies to a save, not to a Flight server: leave it out")
        if not timeout > 0:
            raise InvalidArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if tls_root_certs is not None and not isinstance(tls_root_certs, bytes):
            from .flight._security import read_pem

            tls_root_certs = read_pem("tls_root_certs", tls_root_certs)
        return FlightSource(where, name, token, tls_root_certs, float(timeout))
    if not isinstance(where, (str, os.PathLike)):
        raise InvalidArgumentError(
            "source must be a Flight location (a 'grpc://host:port' string) or the path "
            f"of a save (StreamCache.persist), got {type(where).__name__}"
        )
    for key, value in (("name", name), ("token", token), ("tls_root_certs", tls_root_certs)):
        if value is not None:
            raise InvalidArgumentError(
                f"{key} applies to a Flight server, and {os.fspath(where)!r} is the path of a "
                "save: leave it out, or give a 'grpc://host:port' location"
            )
    return SaveSource(Path(os.fspath(where)).absolute(), verify)


def shard_count(known: Optional[int], shards: Optional[int], default: int) -> int:
    """How many shards to read: ``shards`` when given, else ``default`` capped by the
    cache's batch count ``known`` (from ``plan``) when it is known (a shard with no batch
    would be an empty task)."""
    if shards is not None:
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise InvalidArgumentError(f"shards must be a positive integer, got {shards!r}")
        return shards
    return max(1, min(default, known)) if known is not None else max(1, default)
