"""The ticket format: which cache a DoGet reads, and from where.

A ticket is either a JSON object, ``{"cache": "trades", "start": "frontier"}``, or the
cache's name alone as UTF-8 bytes (``b"trades"``), which reads from the beginning.
``start`` is ``"beginning"`` (the default: a fresh reader at batch 0) or ``"frontier"``
(a reader at the ingestion frontier, which sees only batches not yet pulled from the
source). Unknown keys are refused, so a misspelt ``"strat"`` is an error, not a
silent read from the beginning.

Three optional keys order the reader as ``StreamCache.reader`` does: ``"seed"`` (an
integer: ``shuffle=seed``), ``"window"`` (an integer: ``shuffle_window``) and
``"shard"`` (``[index, count]``: ``shard=(index, count)``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, Optional, cast

import pyarrow.flight as flight

__all__ = ["Request", "TicketError", "ticket", "START_VALUES", "MAX_TICKET_BYTES"]

Start = Literal["beginning", "frontier"]
START_VALUES: tuple[Start, ...] = ("beginning", "frontier")
# Tickets are names, not payloads: a bound keeps a hostile client from making the
# server parse megabytes of JSON.
MAX_TICKET_BYTES = 4096
_KEYS = frozenset({"cache", "start", "seed", "window", "shard"})
# A seed, window or shard number: a uint64, as the C library takes it.
_U64_MAX = 2**64 - 1


class TicketError(ValueError):
    """A ticket or descriptor that does not follow the ticket format."""


@dataclass(frozen=True)
class Request:
    """What a ticket asks for: a cache by name, where its reader starts, and
    optionally its shuffle seed, shuffle window and shard.

    >>> Request.decode(b'{"cache": "trades", "start": "frontier"}')
    Request(cache='trades', start='frontier')
    >>> Request.decode(b"trades")
    Request(cache='trades', start='beginning')
    >>> Request("trades").encode()
    b'{"cache":"trades","start":"beginning"}'
    >>> Request.decode(b'{"cache": "trades", "seed": 7, "shard": [1, 4]}')
    Request(cache='trades', start='beginning', seed=7, shard=(1, 4))
    """

    cache: str
    start: Start = "beginning"
    seed: Optional[int] = None
    window: Optional[int] = None
    shard: Optional[tuple[int, int]] = None

    def __post_init__(self) -> None:
        check_name(self.cache)
        if self.start not in START_VALUES:
            raise TicketError(
                f'"start" must be "beginning" or "frontier", got {self.start!r}'
            )
        for key in ("seed", "window"):
            _check_number(getattr(self, key), key)
        if self.shard is not None:
            shard = self.shard
            if not isinstance(shard, (tuple, list)) or len(shard) != 2:
                raise TicketError(f'"shard" must be [index, count], got {shard!r}')
            for number in shard:
                _check_number(number, "shard", optional=False)
            object.__setattr__(self, "shard", tuple(shard))

    def __repr__(self) -> str:
        ordered = "".join(
            f", {key}={getattr(self, key)!r}"
            for key in ("seed", "window", "shard")
            if getattr(self, key) is not None
        )
        return f"Request(cache={self.cache!r}, start={self.start!r}{ordered})"

    @property
    def from_start(self) -> bool:
        """The ``from_start`` argument of :meth:`StreamCache.reader` for this request."""
        return self.start == "beginning"

    def reader_order(self) -> dict[str, Any]:
        """The ordering arguments of :meth:`StreamCache.reader` for this request."""
        return {"shuffle": self.seed, "shuffle_window": self.window, "shard": self.shard}

    def encode(self) -> bytes:
        """The JSON form of this request, as ticket bytes."""
        fields: dict[str, Any] = {"cache": self.cache, "start": self.start}
        for key in ("seed", "window", "shard"):
            value = getattr(self, key)
            if value is not None:
                fields[key] = list(value) if key == "shard" else value
        return json.dumps(fields, separators=(",", ":")).encode()

    def ticket(self) -> Any:
        """This request as a ``pyarrow.flight.Ticket``."""
        return flight.Ticket(self.encode())

    @classmethod
    def decode(cls, raw: bytes) -> "Request":
        """Parse ticket bytes: a JSON object or a bare cache name; ``TicketError`` if
        they are neither."""
        if not raw:
            raise TicketError("the ticket is empty: send a cache name or a JSON object")
        if len(raw) > MAX_TICKET_BYTES:
            raise TicketError(f"the ticket is {len(raw)} bytes, more than {MAX_TICKET_BYTES}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TicketError("the ticket is not UTF-8 text") from None
        if not text.lstrip().startswith("{"):
            return cls(text)
        return cls._from_json(text)

    @classmethod
    def _from_json(cls, text: str) -> "Request":
        # Checked before parsing: how deep Python's parser goes before RecursionError
        # differs between versions. A ticket is one object of plain values; one level
        # more still gets the message that names the key.
        if _nesting(text) > 2:
            raise TicketError("the ticket's JSON nests too deeply: a ticket is one object of plain values")
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as err:
            raise TicketError(f"the ticket is not valid JSON: {err.msg} at character {err.pos}") from None
        except RecursionError:  # a few KB of brackets are enough
            raise TicketError("the ticket's JSON nests too deeply") from None
        if not isinstance(fields, dict):
            raise TicketError("a JSON ticket must be an object")
        unknown = sorted(set(fields) - _KEYS)
        if unknown:
            raise TicketError(
                f'unknown ticket keys {unknown}: a ticket has "cache", "start", and optionally '
                '"seed", "window" and "shard"'
            )
        if "cache" not in fields:
            raise TicketError('the ticket has no "cache" key naming the cache to read')
        name, start = fields["cache"], fields.get("start", "beginning")
        if not isinstance(name, str):
            raise TicketError(f'"cache" must be a string, got {type(name).__name__}')
        if start not in START_VALUES:
            raise TicketError(f'"start" must be "beginning" or "frontier", got {start!r}')
        return cls(name, cast(Start, start), fields.get("seed"), fields.get("window"), fields.get("shard"))


def _check_number(value: object, key: str, optional: bool = True) -> None:
    """An integer a ``uint64_t`` holds (not a bool), or ``None`` when ``optional``;
    ``TicketError`` if not."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TicketError(f'"{key}" must hold integers, got {type(value).__name__} {value!r}')
    if not 0 <= value <= _U64_MAX:
        raise TicketError(f'"{key}" must hold integers from 0 to 2**64 - 1, got {value}')


def check_name(name: object) -> str:
    """A cache name: a non-empty string without control characters.

    >>> check_name("trades")
    'trades'
    """
    if not isinstance(name, str):
        raise TicketError(f"a cache name must be a string, got {type(name).__name__}")
    if not name:
        raise TicketError("a cache name cannot be empty")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise TicketError(f"a cache name cannot hold control characters: {name!r}")
    return name


def ticket(
    cache: str,
    start: Start = "beginning",
    *,
    seed: Optional[int] = None,
    window: Optional[int] = None,
    shard: Optional[tuple[int, int]] = None,
) -> Any:
    """A ``pyarrow.flight.Ticket`` that reads the cache ``cache`` from ``start``; with
    ``seed`` (and ``window``) shuffled, with ``shard=(index, count)`` that shard, as
    ``StreamCache.reader(shuffle=seed, shuffle_window=window, shard=shard)`` does.

    >>> ticket("trades", "frontier").ticket
    b'{"cache":"trades","start":"frontier"}'
    >>> ticket("trades", seed=3, shard=(0, 2)).ticket
    b'{"cache":"trades","start":"beginning","seed":3,"shard":[0,2]}'
    """
    return Request(cache, start, seed, window, shard).ticket()


def from_descriptor(descriptor: Any) -> Request:
    """The request a ``FlightDescriptor`` names: a path of one element (the cache's
    name) or a command holding ticket bytes."""
    if descriptor.descriptor_type == flight.DescriptorType.PATH:
        path = descriptor.path or []
        if len(path) != 1:
            raise TicketError(f"a path descriptor names one cache, got {len(path)} path elements")
        element = path[0]
        return Request(element.decode("utf-8", "replace") if isinstance(element, bytes) else element)
    if descriptor.descriptor_type == flight.DescriptorType.CMD:
        return Request.decode(bytes(descriptor.command))
    raise TicketError("the descriptor is neither a path nor a command")


def _nesting(text: str) -> int:
    """How deep the arrays and objects of JSON ``text`` nest (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest
