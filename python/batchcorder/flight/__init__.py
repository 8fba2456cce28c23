"""Serve caches to other machines over Arrow Flight (``pip install batchcorder[flight]``).

:class:`CacheServer` serves :class:`~batchcorder.StreamCache` objects by name; any
Flight client reads them (pyarrow's, or Flight clients in other languages), each
DoGet a fresh reader of its own. ``import batchcorder`` does not import this module,
nor ``pyarrow.flight``.

Tickets (see :func:`ticket`) are a JSON object ``{"cache": NAME, "start":
"beginning" | "frontier"}``, or the cache's name alone as UTF-8 bytes, which reads from
the beginning. What comes with the package: ``help(CacheServer)`` (what the server
answers, limits, shutdown), ``help(connect)`` (a client with a token or TLS), and
``batchcorder-flight --help`` (serving Parquet files and persisted caches from the
command line); the source repository's docs/flight.md adds clients in pyarrow, Polars
and DuckDB, and a recipe for workers on other machines.

>>> import pyarrow as pa
>>> from batchcorder import StreamCache
>>> from batchcorder.flight import CacheServer, connect, ticket
>>> with CacheServer({"numbers": StreamCache(pa.table({"x": [1, 2, 3]}))}) as server:
...     [info.descriptor.path for info in connect(server.location).list_flights()]
[[b'numbers']]
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Union

try:
    import pyarrow.flight as _flight
except ImportError as err:  # a pyarrow built without Flight (some distributions' builds)
    raise ImportError(
        "batchcorder.flight needs pyarrow with Flight: pip install 'batchcorder[flight]'"
    ) from err

from ._security import BearerTokenAuth, BearerTokenClient, read_pem
from ._info import cache_state
from ._server import DEFAULT_MAX_STREAMS, DEFAULT_MAX_STREAMS_PER_CLIENT, CacheServer
from ._tickets import START_VALUES, Request, TicketError, ticket

# Refused calls and failed streams are logged here; silent unless the application
# configures logging (the command line shows INFO).
logging.getLogger("batchcorder.flight").addHandler(logging.NullHandler())

__all__ = [
    "CacheServer",
    "connect",
    "ticket",
    "Request",
    "TicketError",
    "BearerTokenAuth",
    "BearerTokenClient",
    "cache_state",
    "START_VALUES",
    "DEFAULT_MAX_STREAMS",
    "DEFAULT_MAX_STREAMS_PER_CLIENT",
]


def connect(
    location: str,
    *,
    token: Optional[str] = None,
    tls_root_certs: Union[str, "os.PathLike[str]", bytes, None] = None,
    **kwargs: Any,
) -> Any:
    """A ``pyarrow.flight.FlightClient`` for a :class:`CacheServer`.

    ``token`` is sent as ``authorization: Bearer <token>`` on every call;
    ``tls_root_certs`` is the PEM certificate (bytes, or a path to it) that the server's
    certificate must chain to, for a ``grpc+tls://`` location whose certificate is not
    signed by a public authority. Other keyword arguments go to
    ``pyarrow.flight.connect``.
    """
    middleware = list(kwargs.pop("middleware", None) or [])
    if token is not None:
        middleware.append(BearerTokenClient(token))
    if tls_root_certs is not None and not isinstance(tls_root_certs, bytes):
        tls_root_certs = read_pem("tls_root_certs", tls_root_certs)
    return _flight.connect(location, middleware=middleware or None, tls_root_certs=tls_root_certs, **kwargs)
