"""CacheServer: a Flight server whose DoGet streams are readers of StreamCaches."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Optional

import pyarrow as pa
import pyarrow.flight as flight

from .._cache import StreamCache
from .._reader import StreamCacheReader
from ._binding import bind_location, exposure, start_error, with_port
from ._errors import FLIGHT_METHODS, answers, answers_get_schema, client_error
from ._info import flight_info
from ._security import BearerTokenAuth, PathArg, tls_pair
from ._tickets import Request, check_name, from_descriptor

__all__ = ["CacheServer", "DEFAULT_MAX_STREAMS", "DEFAULT_MAX_STREAMS_PER_CLIENT"]

log = logging.getLogger("batchcorder.flight")

DEFAULT_MAX_STREAMS = 256
DEFAULT_MAX_STREAMS_PER_CLIENT = 32

# One IPC writer per stream, so a dictionary goes once, again when a batch replaces it,
# and as a delta when a batch's dictionary extends the one before.
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(emit_dictionary_deltas=True)


class CacheServer(flight.FlightServerBase):  # type: ignore[misc]
    """A Flight server that serves :class:`~batchcorder.StreamCache` objects by name.

    Every DoGet creates a real reader of the cache it names (so ``max_readers`` counts
    remote readers) and streams it batch by batch; the reader is released as soon as
    the stream ends, fails, or its client disconnects or cancels. GetFlightInfo,
    GetSchema and ListFlights answer from the cache's schema and counters without
    creating a reader. The server is running once the constructor returns.

    Parameters
    ----------
    caches
        The caches to serve, by name (more can be added with :meth:`add`).
    location
        Where to listen: ``"grpc://HOST:PORT"`` (``"grpc+tls://..."`` with TLS). The
        default, ``grpc://127.0.0.1:0``, takes a free port on the loopback interface
        only; :attr:`location` says which. Serve other machines by naming an address
        of theirs, or ``0.0.0.0``, and then use a token and TLS: without either, the
        ``batchcorder.flight`` logger warns.
    token
        Keyword-only: every call must carry the header ``authorization: Bearer
        <token>`` (:func:`batchcorder.flight.connect` sends it); other calls get
        ``FlightUnauthenticatedError`` and no data.
    tls_cert, tls_key
        Keyword-only: paths to a PEM certificate chain and its private key, given
        together; the server then speaks TLS (``grpc+tls://``). Both are read before the
        server binds: a missing or unreadable file raises ``FileNotFoundError``,
        ``PermissionError`` (any ``OSError`` of ``open``) naming the parameter.
    max_streams
        Keyword-only: DoGet streams served at once by the server; more get
        ``FlightUnavailableError``. ``None`` for no limit.
    max_streams_per_client
        Keyword-only: DoGet streams at once over one client connection (one
        ``FlightClient``), so that one client cannot take every stream. ``None`` for no
        limit.

    Examples
    --------
    >>> import pyarrow as pa
    >>> from batchcorder import StreamCache
    >>> from batchcorder.flight import CacheServer, connect, ticket
    >>> cache = StreamCache(pa.table({"x": [1, 2, 3]}))
    >>> with CacheServer({"numbers": cache}) as server:
    ...     client = connect(server.location)
    ...     client.do_get(ticket("numbers")).read_all().num_rows
    3
    """

    def __init__(
        self,
        caches: Optional[Mapping[str, StreamCache]] = None,
        location: Optional[str] = None,
        *,
        token: Optional[str] = None,
        tls_cert: Optional[PathArg] = None,
        tls_key: Optional[PathArg] = None,
        max_streams: Optional[int] = DEFAULT_MAX_STREAMS,
        max_streams_per_client: Optional[int] = DEFAULT_MAX_STREAMS_PER_CLIENT,
    ) -> None:
        # Everything that can be refused is checked before the server binds.
        tls = tls_pair(tls_cert, tls_key)
        location = bind_location(location, tls is not None)
        self._max_streams = _limit("max_streams", max_streams)
        self._max_per_client = _limit("max_streams_per_client", max_streams_per_client)
        middleware = {"auth": BearerTokenAuth(token)} if token is not None else None
        self._lock = threading.Lock()
        self._caches: dict[str, StreamCache] = {}
        self._streams: set[_Stream] = set()
        self._per_client: dict[str, int] = {}
        self._stopping = threading.Event()
        self._shutdown_thread: Optional[threading.Thread] = None
        for name, cache in (caches or {}).items():
            self.add(name, cache)
        try:
            super().__init__(location, tls_certificates=[tls] if tls else None, middleware=middleware)
        except pa.ArrowException as err:
            raise start_error(location, tls is not None, err) from None
        self._location = with_port(location, self.port)
        # Created after pyarrow's own finalizer, so it runs first at interpreter exit:
        # streams then end at their next batch instead of running to their end.
        weakref.finalize(self, self._stopping.set)
        count = len(self._caches)
        log.info("serving %d %s at %s", count, "cache" if count == 1 else "caches", self._location)
        exposed = exposure(location, token is not None, tls is not None)
        if exposed:
            log.warning("serving %s beyond loopback %s", self._location, exposed)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A subclass's own Flight methods keep tracebacks from clients too.
        super().__init_subclass__(**kwargs)
        for name, wrap in FLIGHT_METHODS.items():
            if name in cls.__dict__:
                setattr(cls, name, wrap(cls.__dict__[name]))

    # -- the caches -------------------------------------------------------------------

    @property
    def location(self) -> str:
        """Where the server listens, with the real port: ``grpc://127.0.0.1:40123``."""
        return self._location

    @property
    def caches(self) -> dict[str, StreamCache]:
        """A copy of the served caches, by name."""
        with self._lock:
            return dict(self._caches)

    @property
    def active_streams(self) -> int:
        """DoGet streams being served now (each holds one reader)."""
        with self._lock:
            return len(self._streams)

    def add(self, name: str, cache: StreamCache) -> None:
        """Serve ``cache`` as ``name`` from now on; ``ValueError`` if the name is taken."""
        check_name(name)
        if not isinstance(cache, StreamCache):
            raise TypeError(f"cache must be a StreamCache, got {type(cache).__name__}")
        with self._lock:
            if name in self._caches:
                raise ValueError(f"a cache named {name!r} is already served")
            self._caches[name] = cache

    def remove(self, name: str) -> StreamCache:
        """Stop serving ``name`` and return its cache (``KeyError`` if none). Streams
        already open keep reading; the cache is not closed."""
        with self._lock:
            return self._caches.pop(name)

    # -- Flight methods ---------------------------------------------------------------

    # Each one is wrapped (FLIGHT_METHODS) so that no exception reaches a client as a
    # traceback.

    @answers
    def list_flights(self, context: Any, criteria: bytes) -> Iterator[Any]:
        """One FlightInfo per cache whose name starts with ``criteria`` (all when empty),
        with its ingestion state in ``app_metadata`` (see :func:`cache_state`)."""
        prefix = bytes(criteria or b"").decode("utf-8", "replace")
        for name, cache in sorted(self.caches.items()):
            if name.startswith(prefix):
                yield flight_info(Request(name), cache)

    @answers
    def get_flight_info(self, context: Any, descriptor: Any) -> Any:
        """The schema, the state and a ticket of the cache a descriptor names: a path of
        one element (its name) or a command holding a ticket. A ticket's order that
        DoGet would refuse is refused here, with DoGet's error; no reader is made."""
        request = from_descriptor(descriptor)
        cache = self._cache(request.cache)
        try:
            cache._check_reader(request.from_start, **request.reader_order())
            return flight_info(request, cache)
        except BaseException as err:  # as DoGet sends what its reader() raises
            raise client_error(err, request.cache) from None

    @answers_get_schema
    def get_schema(self, context: Any, descriptor: Any) -> Any:
        """The schema of the cache a descriptor names; creates no reader."""
        request = from_descriptor(descriptor)
        return flight.SchemaResult(self._cache(request.cache).schema)

    @answers
    def do_get(self, context: Any, ticket: Any) -> Any:
        """A fresh reader of the cache the ticket names, streamed from its start (or the
        frontier); see :mod:`batchcorder.flight` for the ticket format."""
        request = Request.decode(bytes(ticket.ticket))
        cache = self._cache(request.cache)
        stream = self._open(request, cache, context.peer())
        batches = stream.batches()
        # A stream dropped before its first batch never runs the generator's finally.
        weakref.finalize(batches, stream.release)
        source = pa.RecordBatchReader.from_batches(cache.schema, batches)
        return flight.GeneratorStream(cache.schema, stream.payloads(source), _IPC_OPTIONS)

    @answers
    def list_actions(self, context: Any) -> list[Any]:
        return []

    @answers
    def do_action(self, context: Any, action: Any) -> Iterator[bytes]:
        # Not action.type: decoding a type that is not UTF-8 would fail.
        raise flight.FlightServerError("this server has no actions: it is read-only")

    @answers
    def do_put(self, context: Any, descriptor: Any, reader: Any, writer: Any) -> None:
        raise flight.FlightServerError("this server is read-only: it does not take DoPut")

    @answers
    def do_exchange(self, context: Any, descriptor: Any, reader: Any, writer: Any) -> None:
        raise flight.FlightServerError("this server is read-only: it does not take DoExchange")

    # -- shutting down ----------------------------------------------------------------

    def shutdown(self, timeout: Optional[float] = None) -> None:
        """Stop taking calls and end every stream at its next batch with
        ``FlightUnavailableError``, then wait for the calls in progress to finish.

        A stream blocked on a client that stopped reading finishes only when that
        client reads or disconnects (gRPC gives no way to cancel it from the server);
        with ``timeout`` (seconds), ``TimeoutError`` says how many are left instead of
        waiting longer. Safe to call more than once, and from any thread but a
        Flight method's.
        """
        self._stopping.set()
        with self._lock:
            if self._shutdown_thread is None:
                self._shutdown_thread = threading.Thread(
                    target=super().shutdown, name="batchcorder-flight-shutdown", daemon=True
                )
                self._shutdown_thread.start()
            waiting = self._shutdown_thread
        waiting.join(timeout)
        if waiting.is_alive():
            raise TimeoutError(
                f"the server at {self._location} has {self.active_streams} streams still "
                "writing to clients that are not reading; it stops once they read or "
                "disconnect"
            )
        log.info("stopped serving at %s", self._location)

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        super().__exit__(*exc)

    # -- streams ----------------------------------------------------------------------

    def _cache(self, name: str) -> StreamCache:
        with self._lock:
            cache = self._caches.get(name)
            names = sorted(self._caches) if cache is None else []
        if cache is None:
            listed = ", ".join(repr(n) for n in names[:20]) or "none"
            raise flight.FlightServerError(f"no cache named {name!r} is served here (served: {listed})")
        return cache

    def _open(self, request: Request, cache: StreamCache, peer: str) -> _Stream:
        """Take a stream slot for ``peer`` and a reader of ``cache``, or refuse."""
        with self._lock:
            if self._stopping.is_set():
                raise flight.FlightUnavailableError("the server is shutting down")
            if self._max_streams is not None and len(self._streams) >= self._max_streams:
                log.info("refused a stream of %r from %s: max_streams reached", request.cache, peer)
                raise flight.FlightUnavailableError(
                    f"the server is serving its limit of {self._max_streams} streams "
                    "(max_streams); try again later"
                )
            held = self._per_client.get(peer, 0)
            if self._max_per_client is not None and held >= self._max_per_client:
                log.info("refused a stream of %r from %s: max_streams_per_client reached", request.cache, peer)
                raise flight.FlightUnavailableError(
                    f"this client already has {held} streams open, the limit of one client "
                    "connection (max_streams_per_client); read or cancel them first"
                )
            try:
                reader = cache.reader(from_start=request.from_start, **request.reader_order())
            except BaseException as err:
                raise client_error(err, request.cache) from None
            stream = _Stream(self, request.cache, peer, reader)
            self._streams.add(stream)
            self._per_client[peer] = held + 1
        log.debug("stream of %r to %s opened at %s", request.cache, peer, request.start)
        return stream

    def _forget(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.discard(stream)
            left = self._per_client.get(stream.peer, 1) - 1
            if left > 0:
                self._per_client[stream.peer] = left
            else:
                self._per_client.pop(stream.peer, None)


class _Stream:
    """One DoGet: a reader of a cache, and the slot it holds on the server."""

    __slots__ = ("_server", "name", "peer", "_reader", "_released", "_failure", "__weakref__")

    def __init__(self, server: CacheServer, name: str, peer: str, reader: StreamCacheReader) -> None:
        self._server = server
        self.name = name
        self.peer = peer
        self._reader = reader
        self._released = False
        self._failure: Optional[BaseException] = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The reader's batches, until the reader ends, fails or the server stops; a
        failure is kept for :meth:`payloads`. Releases the reader however it ends."""
        stopping = self._server._stopping
        try:
            while not stopping.is_set():
                try:
                    batch = next(self._reader)
                except StopIteration:
                    return
                except BaseException as err:
                    self._failure = client_error(err, self.name)
                    return
                yield batch
            self._failure = flight.FlightUnavailableError(
                f"the server is shutting down; the stream of {self.name!r} ends here"
            )
        finally:
            self.release()

    def payloads(self, source: pa.RecordBatchReader) -> Iterator[Any]:
        """What the GeneratorStream of a DoGet sends: ``source`` (the reader over
        :meth:`batches`) through one IPC writer, which sends each dictionary as Arrow's
        IPC stream format says; then the failure, if any. An exception inside
        ``source`` would reach the client through C++ with a traceback, so
        :meth:`batches` never raises and the failure is raised here, as a Flight error."""
        yield flight.RecordBatchStream(source, _IPC_OPTIONS)
        if self._failure is not None:
            raise self._failure

    def release(self) -> None:
        """Close the reader (so eviction can pass it) and free the slot. Idempotent."""
        if self._released:
            return
        self._released = True
        self._reader.close()
        self._server._forget(self)
        log.debug("stream of %r to %s released", self.name, self.peer)


def _limit(name: str, value: Optional[int]) -> Optional[int]:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{name} must be an int of at least 1 or None, got {value!r}")
    return value
