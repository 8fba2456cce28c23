"""What a Flight client is told when a call fails: a Flight error with a message, never
the server's traceback.

pyarrow sends a client the formatted traceback of any exception a Flight method raises,
except a ``FlightError`` raised where its callback expects one. :func:`client_error`
turns every exception into such an error, and :func:`answers` applies it to a whole
Flight method. GetSchema is the exception: pyarrow's callback for it catches no
``FlightError``, so :func:`answers_get_schema` raises one that the traceback module
cannot format, and pyarrow then sends only its message and class name.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable, Optional, TypeVar, cast

import pyarrow.flight as flight

from .._exceptions import (
    BatchcorderError,
    BatchEvictedError,
    CacheClosedError,
    InternalError,
    ReaderCapError,
)
from ._tickets import TicketError

__all__ = ["client_error", "answers", "answers_get_schema", "FLIGHT_METHODS", "MAX_MESSAGE_BYTES"]

log = logging.getLogger("batchcorder.flight")

# gRPC sends the message in two trailers, one percent-encoded (up to 3 bytes a byte),
# and refuses trailers past 8 KiB at random, past 16 KiB always: a bound keeps a long
# source error or cache name readable.
MAX_MESSAGE_BYTES = 1024

Method = TypeVar("Method", bound=Callable[..., Any])


def client_error(err: BaseException, cache: Optional[str] = None) -> flight.FlightError:
    """The Flight error a client gets for ``err``, raised while serving the cache named
    ``cache`` (if any).

    The message keeps batchcorder's text, names the cache and is valid UTF-8 of at most
    :data:`MAX_MESSAGE_BYTES` bytes. An exception of a type the server does not
    expect is logged with its traceback; its client gets ``FlightInternalError`` with
    the type's name only, as its text may hold server paths.

    >>> client_error(TicketError("the ticket is empty"))
    FlightServerError('malformed ticket: the ticket is empty')
    >>> client_error(ZeroDivisionError("division by zero"), "trades")
    FlightInternalError("cache 'trades': internal error (ZeroDivisionError); the server's log has the details")
    """
    if isinstance(err, flight.FlightError):
        # Made by this server, so already worded for a client.
        sendable = _sendable(str(err))
        return err if sendable == str(err) else type(err)(sendable, err.extra_info)
    prefix = "" if cache is None else f"cache {cache!r}: "
    kind: Any = flight.FlightServerError
    if isinstance(err, TicketError):
        message = f"malformed ticket: {err}"
    elif isinstance(err, (CacheClosedError, BatchEvictedError, ReaderCapError)):
        kind, message = flight.FlightUnavailableError, f"{prefix}{err}"
    elif isinstance(err, InternalError):
        log.error("internal error serving %s", cache or "a call", exc_info=err)
        kind, message = flight.FlightInternalError, f"{prefix}{err}"
    elif isinstance(err, (BatchcorderError, KeyboardInterrupt, SystemExit)):
        # An upstream failure (every reader reaching it gets it), a budget, the disk.
        log.warning("serving %s failed: %s", cache or "a call", err)
        message = f"{prefix}{err}"
    else:
        log.error("unexpected error serving %s", cache or "a call", exc_info=err)
        kind = flight.FlightInternalError
        message = f"{prefix}internal error ({type(err).__name__}); the server's log has the details"
    made: flight.FlightError = kind(_sendable(message))
    return made


def _sendable(message: str) -> str:
    r"""``message`` as pyarrow can send it: UTF-8 (a lone surrogate is escaped) and
    bounded.

    >>> _sendable("lone \ud800"), _sendable("é" * 600)[-2:], len(_sendable("é" * 600).encode())
    ('lone \\ud800', 'é…', 1023)
    """
    raw = message.encode("utf-8", "backslashreplace")
    if len(raw) <= MAX_MESSAGE_BYTES:
        return raw.decode("utf-8")
    ellipsis = "…"
    cut = raw[: MAX_MESSAGE_BYTES - len(ellipsis.encode())]
    return cut.decode("utf-8", "ignore") + ellipsis  # "ignore": a character cut in two


def answers(method: Method) -> Method:
    """Wrap a Flight method so that whatever it raises reaches the client as
    :func:`client_error` makes it. A generator it returns (ListFlights, DoAction) is
    run here, where its errors are caught too."""
    return _guarded(method, lambda error: error)


def answers_get_schema(method: Method) -> Method:
    """:func:`answers` for GetSchema, whose pyarrow callback sends the traceback of any
    exception, ``FlightError`` included: the error raised here cannot be formatted by
    the traceback module, so pyarrow falls back to its message and class name."""
    return _guarded(method, _untraceable)


def _guarded(method: Method, raised: Callable[[flight.FlightError], BaseException]) -> Method:
    @functools.wraps(method)
    def answer(*args: Any, **kwargs: Any) -> Any:
        try:
            result = method(*args, **kwargs)
            return list(result) if inspect.isgenerator(result) else result
        except BaseException as err:
            raise raised(client_error(err)) from None

    return cast(Method, answer)


# Every method of pyarrow's FlightServerBase that answers a call, and its wrapper.
FLIGHT_METHODS: dict[str, Callable[[Any], Any]] = {
    "list_flights": answers,
    "get_flight_info": answers,
    "get_schema": answers_get_schema,
    "do_get": answers,
    "do_put": answers,
    "do_exchange": answers,
    "do_action": answers,
    "list_actions": answers,
}


def _unformattable(self: BaseException) -> bool:
    # traceback.TracebackException reads this attribute; raising makes
    # traceback.format_exception fail. Raising and chaining set the C field directly.
    raise TypeError("this error is sent without a traceback")


_UNTRACEABLE: dict[type, type] = {}


def _untraceable(error: flight.FlightError) -> BaseException:
    """``error`` as an instance of a subclass of its class, of the same name, that the
    traceback module cannot format."""
    kind = type(error)
    made = _UNTRACEABLE.get(kind)
    if made is None:
        made = type(kind.__name__, (kind,), {"__suppress_context__": property(_unformattable)})
        _UNTRACEABLE[kind] = made
    untraceable: BaseException = made(str(error), error.extra_info)
    return untraceable
