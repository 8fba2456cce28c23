"""Where a server listens: the location checked against TLS, what it lacks to be safe
beyond loopback, and why a bind failed."""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Optional
from urllib.parse import urlsplit

__all__ = ["bind_location", "exposure", "with_port", "start_error"]


_SCHEMES = {"grpc": False, "grpc+tcp": False, "grpc+tls": True}


def bind_location(location: Optional[str], tls: bool) -> str:
    """The location to bind, checked against whether TLS is on."""
    if location is None:
        return "grpc+tls://127.0.0.1:0" if tls else "grpc://127.0.0.1:0"
    if not isinstance(location, str):
        raise TypeError(f"location must be a str like 'grpc://127.0.0.1:0', got {type(location).__name__}")
    parts = urlsplit(location)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"location {location!r}: the scheme must be grpc, grpc+tcp or grpc+tls")
    if not parts.hostname or parts.port is None:
        raise ValueError(f"location {location!r} needs a host and a port (0 picks a free one)")
    if _SCHEMES[parts.scheme] != tls:
        hint = "give tls_cert and tls_key" if not tls else "use grpc+tls://"
        raise ValueError(f"location {location!r} {'needs' if not tls else 'has no'} TLS: {hint}")
    return location


def exposure(location: str, token: bool, tls: bool) -> str:
    """What a server at ``location`` lacks to be safe beyond loopback ("" when it binds
    loopback only, or has both a token and TLS)."""
    if token and tls:
        return ""
    host = urlsplit(location).hostname or ""
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
    except socket.gaierror:
        addresses = set()
    # ip_address takes no zone (fe80::1%eth0); an address with one is not loopback.
    if addresses and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        return ""
    if not token and not tls:
        return "without a token or TLS: any client that reaches it reads every cache, unencrypted"
    if not token:
        return "without a token: any client that reaches it reads every cache"
    return "without TLS: the token and the data cross the network unencrypted"


def with_port(location: str, port: int) -> str:
    parts = urlsplit(location)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}:{port}"


def start_error(location: str, tls: bool, err: Exception) -> OSError:
    """Why the server did not start; gRPC only says that it did not."""
    parts = urlsplit(location)
    host, port = parts.hostname or "", parts.port or 0
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as lookup:
        return OSError(errno.EADDRNOTAVAIL, f"cannot serve at {location}: the host does not resolve ({lookup})")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        try:
            probe.bind(address)
        except OSError as bind:
            return type(bind)(bind.errno, f"cannot serve at {location}: {bind.strerror}")
    what = " (check that tls_cert and tls_key are a matching certificate and key)" if tls else ""
    return OSError(errno.EIO, f"cannot serve at {location}: the Flight server did not start{what}: {err}")
