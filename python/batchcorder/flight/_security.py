"""Token authentication (a bearer token in the ``authorization`` header) and TLS files."""

from __future__ import annotations

import errno
import hmac
import logging
import os
from typing import Any, Optional, Union

import pyarrow.flight as flight

from ._errors import answers

__all__ = ["BearerTokenAuth", "BearerTokenClient", "read_pem", "tls_pair"]

log = logging.getLogger("batchcorder.flight")

PathArg = Union[str, "os.PathLike[str]"]
_HEADER = "authorization"
_SCHEME = "Bearer"


def check_token(token: object, what: str = "token") -> bytes:
    """The token as bytes: a non-empty string of printable ASCII (it travels in a header)."""
    if not isinstance(token, str):
        raise TypeError(f"{what} must be a str, got {type(token).__name__}")
    if not token:
        raise ValueError(f"{what} cannot be empty")
    if not all(0x21 <= ord(c) <= 0x7E for c in token):
        raise ValueError(f"{what} must be printable ASCII without spaces (it is sent in a header)")
    return token.encode("ascii")


class BearerTokenAuth(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Server middleware that refuses every call without ``authorization: Bearer <token>``.

    The comparison takes the same time whatever the token sent, so a client cannot
    find the token byte by byte. A refused call gets ``FlightUnauthenticatedError``
    before any handler runs, so it sees no data, no schema and no cache names.
    """

    def __init__(self, token: str) -> None:
        super().__init__()
        self._expected = check_token(token)

    @answers
    def start_call(self, info: Any, headers: dict[str, list[Any]]) -> None:
        values = headers.get(_HEADER, [])
        sent = bearer_token(values[0]) if len(values) == 1 else None
        if sent is None:
            log.info("refused a %s call without a bearer token", _method_name(info))
            raise flight.FlightUnauthenticatedError(
                "this server needs a token: send the header 'authorization: Bearer <token>'"
            )
        if not hmac.compare_digest(sent, self._expected):
            log.info("refused a %s call with a wrong token", _method_name(info))
            raise flight.FlightUnauthenticatedError("the token is wrong")
        return None


def bearer_token(value: Union[str, bytes]) -> Optional[bytes]:
    """The token of an ``authorization`` header value, or None if its scheme is not
    Bearer. The scheme is case-insensitive, as every HTTP authentication scheme is.

    >>> bearer_token("bearer s3cret"), bearer_token("Basic czNjcmV0")
    (b's3cret', None)
    """
    if isinstance(value, str):
        value = value.encode("utf-8", "replace")
    scheme, space, token = value.partition(b" ")
    if not space or scheme.lower() != _SCHEME.lower().encode():
        return None
    return token.lstrip(b" ")


def _method_name(info: Any) -> str:
    method = getattr(info, "method", None)
    return str(getattr(method, "name", method)).lower()


class _BearerTokenMiddleware(flight.ClientMiddleware):  # type: ignore[misc]
    def __init__(self, header: str) -> None:
        super().__init__()
        self._header = header

    def sending_headers(self) -> dict[str, str]:
        return {_HEADER: self._header}


class BearerTokenClient(flight.ClientMiddlewareFactory):  # type: ignore[misc]
    """Client middleware that sends ``authorization: Bearer <token>`` on every call.

    >>> import pyarrow.flight as flight
    >>> client = flight.connect("grpc://127.0.0.1:1", middleware=[BearerTokenClient("s3cret")])
    """

    def __init__(self, token: str) -> None:
        super().__init__()
        self._header = f"{_SCHEME} {check_token(token).decode('ascii')}"

    def start_call(self, info: Any) -> _BearerTokenMiddleware:
        return _BearerTokenMiddleware(self._header)


def read_pem(parameter: str, path: PathArg) -> bytes:
    """The PEM bytes of the file ``path``, given as ``parameter``.

    A missing or unreadable file raises the ``OSError`` subclass ``open`` raised
    (``FileNotFoundError``, ``PermissionError``, ``IsADirectoryError``) with the
    parameter's name in its message; a file that holds no PEM block ``ValueError``.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{parameter} must be a path (str or os.PathLike), got {type(path).__name__}")
    if os.path.isdir(path):  # open() says PermissionError for a folder on Windows
        raise IsADirectoryError(errno.EISDIR, f"{parameter}: cannot read {os.fspath(path)!r}: Is a directory")
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as err:
        raise type(err)(err.errno, f"{parameter}: cannot read {os.fspath(path)!r}: {err.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{parameter}: {os.fspath(path)!r} holds no PEM block (-----BEGIN ...)")
    return data


def tls_pair(cert: Optional[PathArg], key: Optional[PathArg]) -> Optional[tuple[bytes, bytes]]:
    """The certificate chain and private key for TLS, read now (before the server binds),
    or None when neither is given."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        missing = "tls_cert" if cert is None else "tls_key"
        raise ValueError(f"TLS needs both tls_cert and tls_key; {missing} is missing")
    return read_pem("tls_cert", cert), read_pem("tls_key", key)
