"""What ListFlights and GetFlightInfo say of a cache: its schema, its state, a ticket."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from .._cache import StreamCache
from .._exceptions import CacheClosedError
from ._tickets import Request

__all__ = ["cache_state", "flight_info"]


def cache_state(cache: StreamCache) -> dict[str, Any]:
    """What ListFlights and GetFlightInfo report in ``app_metadata`` (as JSON).

    >>> import pyarrow as pa
    >>> cache = StreamCache(pa.table({"x": [1, 2]}))
    >>> cache_state(cache)["finished"], cache.ingest_all(), cache_state(cache)["rows"]
    (False, 1, 2)
    """
    try:
        stats = cache.stats()
    except CacheClosedError:  # closed before or while we looked
        return {"closed": True}
    return {
        "batches": stats.batches_ingested,
        "rows": stats.rows_ingested,
        "finished": stats.upstream_exhausted,
        "readers_live": stats.readers_live,
        "readers_created": stats.readers_created,
        "max_readers": cache.max_readers,
        "closed": False,
    }


def flight_info(request: Request, cache: StreamCache) -> Any:
    state = cache_state(cache)
    rows = state["rows"] if state.get("finished") else -1
    metadata = {"app_metadata": json.dumps(state, separators=(",", ":")).encode()} if _APP_METADATA else {}
    return flight.FlightInfo(
        cache.schema,
        flight.FlightDescriptor.for_path(request.cache),
        # No locations: the data is on this same server.
        [flight.FlightEndpoint(request.encode(), [])],
        rows,
        -1,
        **metadata,
    )


def _takes_app_metadata() -> bool:
    """Whether this pyarrow's FlightInfo carries app_metadata (pyarrow 19 on); before
    it, ListFlights and GetFlightInfo report only total_records."""
    try:
        flight.FlightInfo(pa.schema([]), flight.FlightDescriptor.for_path("x"), [], -1, -1, app_metadata=b"")
    except TypeError:
        return False
    return True


_APP_METADATA = _takes_app_metadata()
