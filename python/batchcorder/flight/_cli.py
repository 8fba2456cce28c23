"""``batchcorder-flight``: serve Parquet files or persisted caches over Arrow Flight."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from .._cache import StreamCache
from ._security import check_token
from ._server import DEFAULT_MAX_STREAMS, DEFAULT_MAX_STREAMS_PER_CLIENT, CacheServer

__all__ = ["main", "open_source"]

TOKEN_ENV = "BATCHCORDER_FLIGHT_TOKEN"


def parser() -> argparse.ArgumentParser:
    """The command line's arguments."""
    p = argparse.ArgumentParser(
        prog="batchcorder-flight",
        description="Serve Parquet files or persisted batchcorder caches over Arrow Flight. "
        "Each source is read once, as clients ask, and replayed to every client.",
        epilog=f"The token may also come from the {TOKEN_ENV} environment variable, which "
        "keeps it out of the process list.",
    )
    p.add_argument(
        "sources", nargs="+", metavar="[NAME=]PATH",
        help="a Parquet file, a directory of Parquet files, or a persisted cache directory "
        "(StreamCache.persist); NAME defaults to the file's name without its suffix",
    )
    p.add_argument("--location", default=None,
                   help="where to listen (default grpc://127.0.0.1:0, a free port on loopback; "
                   "grpc+tls://... with TLS)")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token", help="require 'authorization: Bearer TOKEN' on every call")
    token.add_argument("--token-file", type=Path, help="read the token from this file")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain (with --tls-key)")
    p.add_argument("--tls-key", type=Path, help="PEM private key (with --tls-cert)")
    p.add_argument("--max-readers", type=int, default=None,
                   help="cap each cache's readers (so remote streams); batches every reader "
                   "has passed are then dropped: bounded memory")
    p.add_argument("--max-streams", type=int, default=DEFAULT_MAX_STREAMS,
                   help=f"streams served at once (default {DEFAULT_MAX_STREAMS})")
    p.add_argument("--max-streams-per-client", type=int, default=DEFAULT_MAX_STREAMS_PER_CLIENT,
                   help=f"streams at once over one client connection (default {DEFAULT_MAX_STREAMS_PER_CLIENT})")
    p.add_argument("--grace", type=float, default=10.0,
                   help="seconds to wait at shutdown for streams blocked on clients that stopped reading")
    return p


def split_source(text: str) -> tuple[str, Path]:
    """``NAME=PATH`` or ``PATH`` (named after the file, without its suffix).

    >>> split_source("trades=/data/t.parquet")
    ('trades', PosixPath('/data/t.parquet'))
    >>> split_source("/data/t.parquet")
    ('t', PosixPath('/data/t.parquet'))
    """
    name, sep, path = text.partition("=")
    if sep and name and "/" not in name:
        return name, Path(path)
    source = Path(text)
    return source.stem or source.name, source


def open_source(path: Path, max_readers: Optional[int]) -> tuple[StreamCache, str]:
    """A cache over ``path``, and what it is: a persisted cache directory is opened, a
    Parquet file or directory is scanned lazily (read once, as clients ask)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir() and (path / "manifest.json").is_file():
        return StreamCache.open(path, max_readers=max_readers), "persisted cache"
    import pyarrow.dataset as ds

    dataset = ds.dataset(path, format="parquet")
    if not dataset.files:
        # Served, it would be a stream of no columns and no rows, which helps no client.
        raise ValueError(f"{path}: a directory with no Parquet files in it: nothing to serve")
    return StreamCache(dataset, max_readers=max_readers), "Parquet"


def read_token(args: argparse.Namespace) -> Optional[str]:
    """The token from ``--token``, ``--token-file`` or the environment, checked; None
    when none is given. ``ValueError`` names where a bad one came from: an empty
    variable is refused, not taken for no token, which would turn authentication off."""
    if args.token is not None:
        token, source = str(args.token), "--token"
    elif args.token_file is not None:
        token, source = args.token_file.read_text().strip(), f"--token-file {args.token_file}"
    elif TOKEN_ENV in os.environ:
        token, source = os.environ[TOKEN_ENV], TOKEN_ENV
        if not token:
            raise ValueError(f"{TOKEN_ENV} is set but empty: set it to the token, or unset it "
                             "to serve without one")
    else:
        return None
    check_token(token, source)
    return token


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Serve until SIGINT or SIGTERM; the location is printed once the server listens."""
    p = parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    named = [split_source(text) for text in args.sources]
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        p.error(f"two sources have one name: {names}; name them with NAME=PATH")
    caches: dict[str, StreamCache] = {}
    try:
        token = read_token(args)  # before any source is opened
        for name, path in named:
            caches[name], kind = open_source(path, args.max_readers)
            print(f"cache {name!r}: {kind} {path}", flush=True)
        server = CacheServer(
            caches, args.location, token=token, tls_cert=args.tls_cert,
            tls_key=args.tls_key, max_streams=args.max_streams,
            max_streams_per_client=args.max_streams_per_client,
        )
    except (OSError, ValueError, TypeError) as err:
        for cache in caches.values():
            cache.close()
        print(f"batchcorder-flight: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # Only now: a signal sent as soon as this line is seen shuts down cleanly.
    print(f"listening at {server.location}", flush=True)
    while not stop.wait(1.0):
        pass
    print("shutting down", flush=True)
    try:
        server.shutdown(timeout=args.grace)
    except TimeoutError as err:
        print(f"batchcorder-flight: {err}; exiting anyway", file=sys.stderr, flush=True)
        for cache in caches.values():
            cache.close()
        # gRPC would wait for those clients at interpreter exit too.
        os._exit(1)
    for cache in caches.values():
        cache.close()
    return 0
