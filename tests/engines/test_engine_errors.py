"""Failures reach the driver as the documented exception, with no hang: a wrong token, a
server that vanished, a save damaged after the read was planned; and a worker killed in
the middle of its stream releases its reader on the server."""

from __future__ import annotations

import importlib
import os
import signal
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from conftest import WAIT, wait_until

from batchcorder import CorruptCacheError, InvalidArgumentError, StreamCache
from batchcorder.flight import CacheServer

TABLE = pa.table({"x": range(60_000), "y": [1.5] * 60_000})


def served(**kwargs) -> tuple[StreamCache, CacheServer]:
    cache = StreamCache(TABLE.to_reader(max_chunksize=5_000))
    return cache, CacheServer({"t": cache}, **kwargs)


def damage(save: Path) -> None:
    """Flip bytes in the middle of the save's data file, as a bad copy would."""
    data = save / "data.arrow"
    raw = bytearray(data.read_bytes())
    middle = len(raw) // 2
    raw[middle:middle + 64] = bytes(b ^ 0xFF for b in raw[middle:middle + 64])
    data.write_bytes(bytes(raw))


# -- the arguments: checked on the driver, naming the parameter ----------------------------


@pytest.mark.parametrize("engine", ["ray", "dask"])
def test_arguments_are_checked_before_any_task(engine, tmp_path):
    read_cache = importlib.import_module(f"batchcorder.{engine}").read_cache
    with pytest.raises(InvalidArgumentError, match="name: reading the Flight server"):
        read_cache("grpc://127.0.0.1:1")
    with pytest.raises(InvalidArgumentError, match="token applies to a Flight server"):
        read_cache(tmp_path, token="s3cret")
    with pytest.raises(InvalidArgumentError, match="shards must be a positive integer"):
        read_cache(tmp_path, shards=0)
    with pytest.raises(FileNotFoundError):
        read_cache(tmp_path / "nothing-here")


# -- a wrong token ------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["ray", "dask"])
def test_a_wrong_token_is_refused_when_the_read_is_planned(engine, request):
    request.getfixturevalue("ray_session" if engine == "ray" else "dask_client")
    read_cache = importlib.import_module(f"batchcorder.{engine}").read_cache
    cache, server = served(token="right")
    with cache, server:
        with pytest.raises(flight.FlightUnauthenticatedError):
            read_cache(server.location, "t", token="wrong")
        assert cache.stats().readers_created == 0


def test_a_token_the_server_stopped_taking_fails_the_ray_task(ray_session):
    """Planned with the right token, the tasks meet a server (same location) that takes
    another one: the worker's FlightUnauthenticatedError reaches the driver."""
    from batchcorder.ray import read_cache

    cache, first = served(token="old")
    with cache:
        with first:
            location = first.location
            dataset = read_cache(location, "t", token="old", shards=2)
        with CacheServer({"t": cache}, location, token="new"):
            with pytest.raises(flight.FlightUnauthenticatedError):
                dataset.materialize()
            assert cache.stats().readers_created == 0


def test_a_token_the_server_stopped_taking_fails_the_dask_task(dask_client):
    from batchcorder.dask import read_cache

    cache, first = served(token="old")
    with cache:
        with first:
            location = first.location
            frame = read_cache(location, "t", token="old", shards=2)
        with CacheServer({"t": cache}, location, token="new"):
            with pytest.raises(flight.FlightUnauthenticatedError):
                dask_client.compute(frame).result(timeout=WAIT)
            assert cache.stats().readers_created == 0


# -- a vanished server --------------------------------------------------------------------


def test_a_vanished_server_fails_ray_tasks_at_once(ray_session):
    from batchcorder.ray import read_cache

    cache, server = served()
    with cache:
        with server:
            dataset = read_cache(server.location, "t", shards=2)
        with pytest.raises(flight.FlightUnavailableError):
            dataset.materialize()


def test_a_vanished_server_fails_dask_tasks_at_once(dask_client):
    from batchcorder.dask import read_cache

    cache, server = served()
    with cache:
        with server:
            frame = read_cache(server.location, "t", shards=2)
        with pytest.raises(flight.FlightUnavailableError):
            dask_client.compute(frame).result(timeout=WAIT)


def test_a_server_gone_before_planning_fails_read_cache(ray_session):
    from batchcorder.ray import read_cache

    cache, server = served()
    with cache:
        with server:
            location = server.location
        with pytest.raises(flight.FlightUnavailableError):
            read_cache(location, "t", timeout=10)


# -- a damaged save -----------------------------------------------------------------------


def test_a_save_damaged_after_planning_fails_the_ray_task(ray_session, tmp_path):
    from batchcorder.ray import read_cache

    with StreamCache(TABLE.to_reader(max_chunksize=5_000)) as cache:
        saved = cache.persist(tmp_path / "save")
    dataset = read_cache(saved.path, shards=2)
    damage(saved.path)
    with pytest.raises(CorruptCacheError):
        dataset.materialize()


def test_a_save_damaged_after_planning_fails_the_dask_task(dask_client, tmp_path):
    from batchcorder.dask import read_cache

    with StreamCache(TABLE.to_reader(max_chunksize=5_000)) as cache:
        saved = cache.persist(tmp_path / "save")
    frame = read_cache(saved.path, shards=2)
    damage(saved.path)
    with pytest.raises(CorruptCacheError):
        dask_client.compute(frame).result(timeout=WAIT)


def test_a_damaged_save_is_refused_when_the_read_is_planned(tmp_path):
    from batchcorder.dask import read_cache

    with StreamCache(TABLE.to_reader(max_chunksize=5_000)) as cache:
        saved = cache.persist(tmp_path / "save")
    (saved.path / "manifest.json").write_text("{}")
    with pytest.raises(CorruptCacheError):
        read_cache(saved.path)


# -- a worker killed mid-read -------------------------------------------------------------


def read_slowly(src, shard, pid_file: str) -> int:
    """Take one batch of the shard, say which process this is, then wait to be killed."""
    import time

    batches = src.read(shard)
    next(batches)
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(3600)
    return 0


def big_cache() -> StreamCache:
    # 64 batches of 1 MiB: more than gRPC buffers, so the server's stream is mid-way.
    table = pa.table({"x": pa.array(range(64 * 131_072), pa.int64())})
    return StreamCache(table.to_reader(max_chunksize=131_072))


def test_a_killed_ray_worker_releases_its_flight_reader(ray_session, tmp_path):
    import ray

    from batchcorder._engines import FlightSource

    pid_file = tmp_path / "pid"
    with big_cache() as cache, CacheServer({"big": cache}) as server:
        task = ray.remote(max_retries=0)(read_slowly).remote(
            FlightSource(server.location, "big"), (0, 1), str(pid_file))
        wait_until(lambda: pid_file.exists() or ray.wait([task], timeout=0)[0],
                   "the Ray task started reading")
        assert cache.stats().readers_live == 1
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        with pytest.raises(ray.exceptions.RayError):
            ray.get(task, timeout=WAIT)
        wait_until(lambda: cache.stats().readers_live == 0, "the killed worker's reader released")
        wait_until(lambda: server.active_streams == 0, "the killed worker's stream ended")


def test_a_killed_dask_worker_releases_its_flight_reader(dask_client, tmp_path):
    from distributed import KilledWorker

    from batchcorder._engines import FlightSource

    pid_file = tmp_path / "pid"
    with big_cache() as cache, CacheServer({"big": cache}) as server:
        future = dask_client.submit(read_slowly, FlightSource(server.location, "big"), (0, 1),
                                    str(pid_file), pure=False)
        wait_until(lambda: pid_file.exists() or future.done(), "the Dask task started reading")
        assert cache.stats().readers_live == 1
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        with pytest.raises(KilledWorker):
            future.result(timeout=WAIT)
        wait_until(lambda: cache.stats().readers_live == 0, "the killed worker's reader released")
        wait_until(lambda: server.active_streams == 0, "the killed worker's stream ended")
    dask_client.wait_for_workers(2, timeout=WAIT)  # the nanny restarts it for the next tests


# -- TLS and a token: what a server beyond loopback asks for -------------------------------


@pytest.mark.parametrize("engine", ["ray", "dask"])
def test_a_server_with_tls_and_a_token_is_read_with_both(engine, request, tmp_path):
    import trustme

    request.getfixturevalue("ray_session" if engine == "ray" else "dask_client")
    read_cache = importlib.import_module(f"batchcorder.{engine}").read_cache
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    ca, cert, key = tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key"
    authority.cert_pem.write_to_path(str(ca))
    issued.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    cache = StreamCache(TABLE.to_reader(max_chunksize=5_000))
    with cache, CacheServer({"t": cache}, "grpc+tls://127.0.0.1:0", tls_cert=cert, tls_key=key,
                            token="s3cret") as server:
        assert server.location.startswith("grpc+tls://")
        data = read_cache(server.location, "t", token="s3cret", tls_root_certs=ca, shards=3)
        if engine == "ray":
            assert data.sum("x") == sum(range(TABLE.num_rows))
        else:
            assert data.x.sum().compute() == sum(range(TABLE.num_rows))
        assert cache.stats().readers_created == 3
        with pytest.raises(flight.FlightUnavailableError):  # no roots: the certificate is not trusted
            read_cache(server.location, "t", token="s3cret", timeout=10)


# -- a stalled server ---------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["ray", "dask"])
def test_a_stream_that_stalls_fails_its_task_after_the_timeout(engine, request):
    """The served cache's source stops giving batches after the first two (a stuck
    upstream), so a DoGet waits with no batch: the task gives up after `timeout` seconds
    with TimeoutError, and the stream it cancelled releases its reader as soon as the
    server's handler, stuck in the upstream until then, can see it."""
    import threading

    request.getfixturevalue("ray_session" if engine == "ray" else "dask_client")
    read_cache = importlib.import_module(f"batchcorder.{engine}").read_cache
    release = threading.Event()

    def stuck():
        for batch in TABLE.to_batches(max_chunksize=5_000)[:2]:
            yield batch
        release.wait(WAIT)

    cache = StreamCache(stuck(), schema=TABLE.schema)
    with cache, CacheServer({"t": cache}) as server:
        try:
            data = read_cache(server.location, "t", shards=1, timeout=3)
            with pytest.raises(TimeoutError, match="no batch from .* for 3 s"):
                data.materialize() if engine == "ray" else data.compute()
            release.set()
            wait_until(lambda: cache.stats().readers_live == 0, "the stalled reader released")
        finally:
            release.set()
