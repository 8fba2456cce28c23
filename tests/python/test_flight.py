"""batchcorder.flight: caches served over Arrow Flight, read by real pyarrow.flight clients
on loopback, from real threads and processes.

No assertion is about time; every wait that could block has a bound (a call timeout, a
future's timeout, a deadline on a polled condition), so a bug fails a test instead of
hanging it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.flight as fl
import pyarrow.parquet as pq
import pytest

from conftest import listening_location, posix_only
import batchcorder
from batchcorder import StreamCache
from batchcorder.flight import CacheServer, Request, TicketError, connect, ticket

# A bound on every call a test makes: long enough for a slow machine, short enough
# that a hang fails the test.
CALL = fl.FlightCallOptions(timeout=60)
WAIT = 30.0


def table(rows: int = 20_000, start: int = 0) -> pa.Table:
    ids = range(start, start + rows)
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "price": pa.array([i / 4 for i in ids], pa.float64()),
            "name": pa.array([f"name-{i}" for i in ids], pa.string()),
        }
    )


def big_table(batches: int = 128, rows: int = 16_384) -> pa.Table:
    """About 0.5 MiB a batch, 64 MiB by default: far more than gRPC buffers for a client
    that does not read, so a stream is still being written when a test acts in the
    middle of it. The batches share their buffers, so the table costs one batch."""
    chunk = pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "payload": pa.array(["x" * 24] * rows, pa.string()),
        }
    )
    return pa.concat_tables([chunk] * batches)


def single_use(data: pa.Table, chunk: int = 1_000) -> pa.RecordBatchReader:
    return pa.RecordBatchReader.from_batches(data.schema, data.to_batches(max_chunksize=chunk))


def wait_until_blocked(ingested: Callable[[], int], timeout: float = WAIT) -> None:
    """Wait until a client that does not read has stopped the server's writes: the
    cache's ingestion count stays still for a while (gRPC's flow control holds the
    stream). A second: on a loaded machine a server can be descheduled for a few tenths
    of one without being blocked."""
    deadline = time.monotonic() + timeout
    last, still_since = -1, time.monotonic()
    while time.monotonic() - still_since < 1.0:
        if time.monotonic() > deadline:
            pytest.fail("the server's writes to an idle client never stopped")
        now = ingested()
        if now != last:
            last, still_since = now, time.monotonic()
        time.sleep(0.01)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` until it holds; fail (never hang) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextmanager
def serving(caches: dict[str, StreamCache], **options) -> Iterator[CacheServer]:
    server = CacheServer(caches, **options)
    try:
        yield server
    finally:
        server.shutdown(timeout=WAIT)


def read_all(location: str, request=None, **client) -> pa.Table:
    with connect(location, **client) as c:
        return c.do_get(request if request is not None else ticket("data"), CALL).read_all()


def read_error(location: str, request, **client) -> BaseException:
    """The error a client gets reading ``request`` to its end."""
    with connect(location, **client) as c:
        with pytest.raises(fl.FlightError) as caught:
            c.do_get(request, CALL).read_all()
    return caught.value


# Where the server's code is installed: a traceback would name these.
SERVER_PATHS = sorted(
    {
        str(Path(batchcorder.__file__).parent),
        str(Path(batchcorder.__file__).resolve().parent),
        str(Path(pa.__file__).parent),
        sysconfig.get_paths()["purelib"],
        sys.prefix,
    }
)


def assert_tells_nothing_of_the_server(text: str) -> None:
    """An error text a client got holds no traceback and no server install path."""
    for leak in ("Traceback", 'File "', *SERVER_PATHS):
        assert leak not in text, f"the client got {leak!r}: {text}"


# -- the package --------------------------------------------------------------------------


def test_import_batchcorder_does_not_import_flight():
    code = (
        "import sys, pyarrow as pa, batchcorder; "
        "batchcorder.StreamCache(pa.table({'x': [1]})).ingest_all(); "
        "loaded = [m for m in ('pyarrow.flight', 'pyarrow._flight', 'batchcorder.flight') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=WAIT)


def test_ticket_format():
    assert Request.decode(b"trades") == Request("trades", "beginning")
    assert Request.decode(b'{"cache": "trades"}') == Request("trades", "beginning")
    assert Request.decode(b'{"cache": "t", "start": "frontier"}') == Request("t", "frontier")
    assert Request.decode(ticket("t", "frontier").ticket) == Request("t", "frontier")
    assert Request.decode("名前".encode()) == Request("名前")
    for bad, says in [
        (b"", "empty"),
        (b"\xff\xfe", "not UTF-8"),
        (b"{not json", "not valid JSON"),
        (b'{"cache": 3}', '"cache" must be a string'),
        (b'{"start": "beginning"}', 'no "cache" key'),
        (b'{"cache": "t", "start": "middle"}', '"start" must be'),
        (b'{"cache": "t", "strat": "frontier"}', "unknown ticket keys ['strat']"),
        (b'{"cache": ""}', "cannot be empty"),
        (b"a\nb", "control characters"),
        (b"x" * 5000, "more than 4096"),
    ]:
        with pytest.raises(TicketError) as caught:
            Request.decode(bad)
        assert says in str(caught.value), (bad, caught.value)


# -- serving ------------------------------------------------------------------------------


def test_sixteen_concurrent_readers_get_identical_data():
    data = table(40_000)
    with StreamCache(single_use(data)) as cache, serving({"data": cache}) as server:

        def read(_: int) -> pa.Table:
            return read_all(server.location)

        with ThreadPoolExecutor(16) as pool:
            tables = [f.result(timeout=WAIT) for f in [pool.submit(read, i) for i in range(16)]]
        assert all(t.equals(data) for t in tables)
        stats = cache.stats()
        # Each remote stream was a reader of its own, and the source was read once.
        assert stats.readers_created == 16 and stats.batches_ingested == 40
        wait_for(lambda: cache.stats().readers_live == 0, "readers released")
        assert server.active_streams == 0


def test_a_frontier_ticket_reads_only_batches_not_yet_ingested():
    data = table(10_000)
    with StreamCache(single_use(data)) as cache, serving({"data": cache}) as server:
        local = cache.reader()
        for _ in range(4):
            next(local)  # pulls 4 batches
        frontier = read_all(server.location, ticket("data", "frontier"))
        assert frontier.equals(data.slice(4_000))
        assert read_all(server.location, fl.Ticket(b"data")).equals(data)
        local.close()


def test_list_flights_info_and_schema_report_state_without_creating_a_reader():
    data = table(5_000)
    with StreamCache(single_use(data), max_readers=1) as cache, serving({"data": cache}) as server:
        with connect(server.location) as client:
            for _ in range(3):
                [info] = client.list_flights(options=CALL)
                assert info.descriptor.path == [b"data"] and info.schema == data.schema
                assert info.total_records == -1  # not known before the source ends
                state = json.loads(info.app_metadata)
                assert state["finished"] is False and state["max_readers"] == 1
                described = client.get_flight_info(fl.FlightDescriptor.for_path("data"), CALL)
                assert described.schema == data.schema
                assert client.get_schema(fl.FlightDescriptor.for_path("data"), CALL).schema == data.schema
            by_command = client.get_flight_info(
                fl.FlightDescriptor.for_command(Request("data", "frontier").encode()), CALL
            )
            assert Request.decode(by_command.endpoints[0].ticket.ticket).start == "frontier"
            assert cache.stats().readers_created == 0
            # The one reader max_readers allows is still there for a real read, through the
            # endpoint's own ticket.
            assert client.do_get(described.endpoints[0].ticket, CALL).read_all().equals(data)
            [info] = client.list_flights(options=CALL)
            state = json.loads(info.app_metadata)
            assert (state["batches"], state["rows"], state["finished"]) == (5, 5_000, True)
            assert info.total_records == 5_000
            assert list(client.list_flights(b"other", CALL)) == []


def test_the_start_log_counts_caches_in_words(caplog):
    caplog.set_level(logging.INFO, logger="batchcorder.flight")
    with StreamCache(table(10)) as cache:
        for names in (["a"], ["a", "b"]):
            with serving({name: cache for name in names}) as server:
                pass
            said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("serving")]
            caplog.clear()
            noun = "cache" if len(names) == 1 else "caches"
            assert said == [f"serving {len(names)} {noun} at {server.location}"], said


def test_caches_added_and_removed_while_serving():
    first, second = StreamCache(table(100)), StreamCache(table(200))
    with serving({}) as server, connect(server.location) as client:
        assert list(client.list_flights(options=CALL)) == []
        server.add("first", first)
        server.add("second", second)
        with pytest.raises(ValueError, match="already served"):
            server.add("first", second)
        assert [i.descriptor.path[0] for i in client.list_flights(options=CALL)] == [b"first", b"second"]
        open_stream = client.do_get(ticket("second"), CALL)
        assert server.remove("second") is second
        # A stream opened before the removal reads to its end; a new one is refused.
        assert open_stream.read_all().num_rows == 200
        with pytest.raises(fl.FlightServerError, match="no cache named 'second'"):
            client.do_get(ticket("second"), CALL).read_all()
    first.close()
    second.close()


# -- remote readers are readers -----------------------------------------------------------


def test_max_readers_counts_remote_readers_and_a_refusal_is_readable():
    data = table(2_000)
    with StreamCache(single_use(data), max_readers=2) as cache, serving({"data": cache}) as server:
        assert read_all(server.location).equals(data)
        assert read_all(server.location).equals(data)
        err = read_error(server.location, ticket("data"))
        assert isinstance(err, fl.FlightUnavailableError)
        assert "cache 'data'" in str(err) and "max_readers" in str(err)
        assert cache.stats().readers_created == 2


# A client in another process: reads `half` batches, says so, and waits to be killed.
READ_HALF = """
import sys, pyarrow.flight as fl
from batchcorder.flight import connect, ticket
client = connect(sys.argv[1])
stream = client.do_get(ticket("data"))
for _ in range(int(sys.argv[2])):
    stream.read_chunk()
print("half", flush=True)
sys.stdin.read()
"""


def leave_half_way(location: str, half: int, how: str) -> Callable[[], None]:
    """Start a client that reads ``half`` batches; return what makes it leave."""
    if how == "cancel":
        client = connect(location)
        stream = client.do_get(ticket("data"), CALL)
        for _ in range(half):
            stream.read_chunk()

        def cancel() -> None:
            stream.cancel()
            client.close()

        return cancel
    process = subprocess.Popen(
        [sys.executable, "-c", READ_HALF, location, str(half)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert process.stdout.readline() == "half\n"

    def kill() -> None:
        process.kill()  # the connection drops with the process: no goodbye
        process.wait(timeout=WAIT)
        process.stdin.close()
        process.stdout.close()

    return kill


def drain(stream) -> int:
    """Read a stream to its end, keeping nothing; the rows read."""
    rows = 0
    for chunk in stream:
        rows += chunk.data.num_rows
    return rows


@pytest.mark.parametrize("how", ["cancel", "killed-process"])
def test_clients_that_leave_half_way_release_their_readers(how):
    # Long enough that the leavers' streams are still being written when they go,
    # whatever gRPC had buffered for them.
    data = big_table(512)
    batches = data.num_rows // 16_384
    with StreamCache(single_use(data, 16_384), max_readers=4) as cache, serving({"data": cache}) as server:
        leave = [leave_half_way(server.location, 8, how) for _ in range(2)]
        stayers = [connect(server.location) for _ in range(2)]
        streams = [c.do_get(ticket("data"), CALL) for c in stayers]
        wait_for(lambda: cache.stats().readers_live == 4, "four readers")
        for go in leave:
            go()
        wait_for(lambda: cache.stats().readers_live == 2, "the two leavers' readers released")
        assert cache.stats().batches_ingested < batches  # they left in the middle
        with ThreadPoolExecutor(2) as pool:
            results = [pool.submit(drain, s) for s in streams]
            assert [r.result(timeout=WAIT) for r in results] == [data.num_rows] * 2
        wait_for(lambda: cache.stats().readers_live == 0, "every reader released")
        # Every batch was dropped once the readers still there had passed it: the
        # leavers no longer hold eviction back.
        assert cache.stats().batches_evicted == batches
        assert server.active_streams == 0
        for client in stayers:
            client.close()


def test_a_client_that_never_reads_does_not_stop_the_others():
    data = big_table()
    with StreamCache(single_use(data, 16_384)) as cache, serving({"data": cache}) as server:
        idle_client = connect(server.location)
        idle = idle_client.do_get(ticket("data"), CALL)  # never read
        with ThreadPoolExecutor(4) as pool:
            results = [pool.submit(read_all, server.location) for _ in range(4)]
            assert all(r.result(timeout=WAIT).equals(data) for r in results)
        # At most the idle client's reader is left (none if gRPC buffered its whole
        # stream on the client's side).
        assert cache.stats().readers_live <= 1
        idle.cancel()
        idle_client.close()
        wait_for(lambda: server.active_streams == 0, "the idle stream released")


class Gate:
    """A single-use source that yields ``before`` batches and then waits for
    :meth:`open`: streams of it stay open however much a client buffers."""

    def __init__(self, before: int = 2, after: int = 2) -> None:
        self.opened = threading.Event()
        self.data = table(1_000 * (before + after))
        self._before = before

    def source(self) -> pa.RecordBatchReader:
        def produce():
            for index, batch in enumerate(self.data.to_batches(max_chunksize=1_000)):
                if index == self._before and not self.opened.wait(WAIT):
                    raise TimeoutError("the gate was never opened")
                yield batch

        return pa.RecordBatchReader.from_batches(self.data.schema, produce())

    def open(self) -> None:
        self.opened.set()


def admitted(stream) -> bool:
    """Whether the server took a stream: its refusal comes with the first read."""
    try:
        stream.read_chunk()
        return True
    except fl.FlightUnavailableError:
        return False


def endings(streams) -> list[object]:
    """How each stream ends when read to its end: its rows, or its error."""
    found: list[object] = []
    for stream in streams:
        try:
            found.append(stream.read_all().num_rows)
        except fl.FlightError as err:
            found.append(f"{type(err).__name__}: {str(err)[:160]}")
    return found


def test_a_client_opening_a_thousand_streams_is_refused_past_its_limit():
    gate, data = Gate(), table(3_000)
    with StreamCache(gate.source()) as held, StreamCache(single_use(data)) as cache, serving(
        {"held": held, "data": cache}, max_streams_per_client=8
    ) as server:
        greedy = connect(server.location)
        streams = []
        for _ in range(1_000):
            try:
                streams.append(greedy.do_get(ticket("held"), CALL))
            except fl.FlightUnavailableError:
                streams.append(None)  # refused at once; most refusals come at the read
        taken = [s for s in streams if s is not None and admitted(s)]
        assert len(taken) == 8
        # A refused stream's handler may still be finishing: its count settles at once.
        deadline = time.monotonic() + 5
        while server.active_streams != 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        if server.active_streams != 8:  # seen once in about 100 runs: say how each ended
            gate.open()
            pytest.fail(f"{server.active_streams} streams active for 8 taken: {endings(taken)}")
        with pytest.raises(fl.FlightUnavailableError, match="max_streams_per_client"):
            greedy.do_get(ticket("held"), CALL).read_all()
        # Everyone else is still served, and the streams taken still read.
        assert read_all(server.location).equals(data)
        gate.open()
        assert taken[0].read_all().num_rows == gate.data.num_rows - 1_000
        for stream in taken[1:]:
            stream.cancel()
        greedy.close()
        wait_for(lambda: server.active_streams == 0, "the greedy client's streams released")
        assert held.stats().readers_live == 0


def test_max_streams_bounds_the_whole_server():
    gate = Gate()
    with StreamCache(gate.source()) as cache, serving({"data": cache}, max_streams=2) as server:
        clients = [connect(server.location) for _ in range(3)]
        held = [c.do_get(ticket("data"), CALL) for c in clients[:2]]
        assert all(admitted(stream) for stream in held)
        with pytest.raises(fl.FlightUnavailableError, match="max_streams"):
            clients[2].do_get(ticket("data"), CALL).read_all()
        gate.open()
        for stream in held:
            stream.read_all()
        wait_for(lambda: server.active_streams == 0, "streams released")
        assert clients[2].do_get(ticket("data"), CALL).read_all().equals(gate.data)
        for client in clients:
            client.close()


# -- failures while serving -------------------------------------------------------------


def test_an_upstream_error_reaches_every_remote_reader_with_its_message():
    schema = table(1).schema

    def produce():
        for i in range(5):
            yield table(1_000, start=i * 1_000).to_batches()[0]
        raise RuntimeError("feed dropped at batch 5")

    source = pa.RecordBatchReader.from_batches(schema, produce())
    with StreamCache(source) as cache, serving({"data": cache}) as server:

        def read_until_error(_: int) -> tuple[int, BaseException]:
            rows = 0
            with connect(server.location) as client:
                stream = client.do_get(ticket("data"), CALL)
                try:
                    while True:
                        rows += stream.read_chunk().data.num_rows
                except fl.FlightError as err:
                    return rows, err
            raise AssertionError("the stream ended without the upstream's error")

        with ThreadPoolExecutor(6) as pool:
            outcomes = [f.result(timeout=WAIT) for f in [pool.submit(read_until_error, i) for i in range(6)]]
        for rows, err in outcomes:
            assert rows == 5_000  # every batch before the failure
            assert isinstance(err, fl.FlightServerError)
            assert "feed dropped at batch 5" in str(err) and "cache 'data'" in str(err)
            assert_tells_nothing_of_the_server(str(err))  # the server's stack stays on it
        wait_for(lambda: cache.stats().readers_live == 0, "readers released")


def test_a_cache_closed_while_served_ends_its_streams_with_an_error():
    data = big_table(512)
    cache = StreamCache(single_use(data, 16_384))
    with serving({"data": cache}) as server:
        clients = [connect(server.location) for _ in range(3)]
        streams = [c.do_get(ticket("data"), CALL) for c in clients]
        for stream in streams:
            stream.read_chunk()
        cache.close()
        for stream in streams:
            with pytest.raises(fl.FlightUnavailableError, match="cache 'data'.*closed") as caught:
                while True:
                    stream.read_chunk()
            assert_tells_nothing_of_the_server(str(caught.value))
        wait_for(lambda: server.active_streams == 0, "streams released")
        err = read_error(server.location, ticket("data"))
        assert isinstance(err, fl.FlightUnavailableError) and "closed" in str(err)
        with connect(server.location) as client:
            [info] = client.list_flights(options=CALL)
            assert json.loads(info.app_metadata) == {"closed": True}
            with pytest.raises(fl.FlightUnavailableError, match="closed"):
                client.get_flight_info(fl.FlightDescriptor.for_path("data"), CALL)
        assert isinstance(assert_refused_alike(server.location, b"data"), fl.FlightUnavailableError)
        for client in clients:
            client.close()


def test_shutdown_while_readers_are_connected_ends_their_streams_with_an_error():
    data = big_table(512)  # far longer than what the clients read before the shutdown
    with StreamCache(single_use(data, 16_384)) as cache:
        server = CacheServer({"data": cache})
        clients = [connect(server.location) for _ in range(4)]
        reading = threading.Barrier(5, timeout=WAIT)

        def read_on(client) -> BaseException:
            stream = client.do_get(ticket("data"), CALL)
            stream.read_chunk()
            reading.wait()
            try:
                while True:
                    stream.read_chunk()
            except StopIteration:
                raise AssertionError("the stream ran to its end past shutdown") from None
            except fl.FlightError as err:
                return err

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(read_on, c) for c in clients]
            reading.wait()  # every client is reading
            server.shutdown(timeout=WAIT)
            errors = [f.result(timeout=WAIT) for f in futures]
        for err in errors:
            assert isinstance(err, fl.FlightUnavailableError) and "shutting down" in str(err)
            assert_tells_nothing_of_the_server(str(err))
        assert cache.stats().readers_live == 0
        # Nothing listens any more.
        with pytest.raises(fl.FlightUnavailableError):
            clients[0].list_flights(options=fl.FlightCallOptions(timeout=5)).__next__()
        for client in clients:
            client.close()


def test_shutdown_with_a_timeout_reports_a_client_that_stopped_reading():
    data = big_table()
    with StreamCache(single_use(data, 16_384)) as cache:
        server = CacheServer({"data": cache})
        idle_client = connect(server.location)
        idle = idle_client.do_get(ticket("data"), CALL)
        wait_until_blocked(lambda: cache.stats().batches_ingested)
        assert server.active_streams == 1  # its writes wait for the client to read
        with pytest.raises(TimeoutError, match="not reading"):
            server.shutdown(timeout=0.5)
        idle.cancel()
        idle_client.close()
        server.shutdown(timeout=WAIT)  # finishes once the client is gone
        assert cache.stats().readers_live == 0


# -- dictionary-encoded columns -----------------------------------------------------------


def encoded(
    indices: list[Optional[int]], values: Union[list[Any], pa.Array], index: pa.DataType = pa.int32()
) -> pa.Array:
    dictionary = values if isinstance(values, pa.Array) else pa.array(values)
    return pa.DictionaryArray.from_arrays(pa.array(indices, index), dictionary)


def listed(offsets: list[int], values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


CITIES = pa.array(["Oslo", "Lima", "Pune"])


def cities(indices: list[Optional[int]], values: Union[list[Any], pa.Array] = CITIES) -> pa.RecordBatch:
    return pa.record_batch({"city": encoded(indices, values), "n": pa.array(range(len(indices)), pa.int64())})


def structs(child: pa.Array, numbers: pa.Array) -> pa.RecordBatch:
    return pa.record_batch({"s": pa.StructArray.from_arrays([child, numbers], ["d", "n"])})


def tagged(offsets: list[int], indices: list[int], values: list[str]) -> pa.RecordBatch:
    return pa.record_batch({"tags": listed(offsets, encoded(indices, values))})


def dictionary_streams() -> dict[str, list[pa.RecordBatch]]:
    """Streams with dictionary-encoded columns, by shape: what Arrow's IPC stream format
    carries (a dictionary kept, replaced or extended by a delta; nested dictionaries;
    zero-row batches)."""
    return {
        "one dictionary": [cities([0, 1]), cities([2, None, 0]), cities([1])],
        "replaced per batch": [cities([0, 1], ["a", "b"]), cities([0], ["c"]), cities([1, 0], ["d", "a"])],
        "extended by deltas": [
            cities([0, 1], ["a", "b"]), cities([2], ["a", "b", "c"]), cities([3, 0], ["a", "b", "c", "d"])
        ],
        "int8 indices, int64 values with a null": [
            pa.record_batch({"code": encoded([0, 1, 2], pa.array([7, None, 9]), pa.int8())}),
            pa.record_batch({"code": encoded([2, 2], pa.array([7, None, 9]), pa.int8())}),
        ],
        "list<dictionary>": [tagged([0, 2, 3], [0, 1, 0], ["a", "b"]), tagged([0, 1], [0], ["q"])],
        "struct with a dictionary child": [
            structs(encoded([0, 1], ["a", "b"]), pa.array([1, 2])),
            structs(encoded([2], ["a", "b", "c"]), pa.array([3])),
        ],
        "dictionary<list<dictionary>>": [
            pa.record_batch({"dl": encoded([0, 1, 0], listed([0, 2, 3], encoded([0, 1, 1], ["x", "y"])))}),
            pa.record_batch({"dl": encoded([1], listed([0, 1, 2], encoded([0, 0], ["z"])))}),
        ],
        "zero rows first": [cities([]), cities([0, 1]), cities([2])],
        "zero rows in the middle": [cities([0]), cities([]), cities([1, 2])],
        "zero rows last": [cities([0, 2]), cities([1]), cities([])],
        "zero rows in a nested dictionary": [
            tagged([0, 1], [1], ["a", "b"]), tagged([0], [], ["a", "b"]), tagged([0, 2], [0, 1], ["a", "b"])
        ],
    }


# What pyarrow's client counts (IpcReadStats) for the shapes where it tells the IPC
# writer's choice: (dictionary messages, deltas, replacements).
DICTIONARY_MESSAGES = {
    "one dictionary": (1, 0, 0),
    "replaced per batch": (3, 0, 2),
    "extended by deltas": (3, 2, 0),
}


def dictionaries(array: pa.Array) -> list[pa.Array]:
    """Every dictionary in ``array``: its own, and those nested in its lists, structs and
    dictionaries, outermost first."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        return [array.dictionary, *dictionaries(array.dictionary)]
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return dictionaries(array.values)
    if pa.types.is_struct(kind):
        return [d for i in range(kind.num_fields) for d in dictionaries(array.field(i))]
    return []


def assert_same_batches(got: list[pa.RecordBatch], sent: list[pa.RecordBatch]) -> None:
    """The same batches, row for row, each with the same dictionaries (at every level,
    zero-row batches included: ``equals`` does not compare the dictionaries of a
    zero-row batch)."""
    schema = sent[0].schema
    assert pa.Table.from_batches(got, schema).equals(pa.Table.from_batches(sent, schema))
    assert [b.num_rows for b in got] == [b.num_rows for b in sent]
    for index, (mine, theirs) in enumerate(zip(got, sent)):
        assert mine.equals(theirs), index
        for column in range(theirs.num_columns):
            mine_d, theirs_d = dictionaries(mine.column(column)), dictionaries(theirs.column(column))
            assert len(mine_d) == len(theirs_d) and all(a.equals(b) for a, b in zip(mine_d, theirs_d)), (
                f"batch {index}, column {column}: dictionaries {[d.to_pylist() for d in mine_d]}, "
                f"sent {[d.to_pylist() for d in theirs_d]}"
            )


@pytest.mark.parametrize("shape", list(dictionary_streams()))
def test_dictionary_columns_reach_a_pyarrow_client_exactly(shape):
    sent = dictionary_streams()[shape]
    source = pa.RecordBatchReader.from_batches(sent[0].schema, sent)
    with StreamCache(source) as cache, serving({"data": cache}) as server, connect(server.location) as client:
        for _ in range(2):  # the first stream reads the source, the second replays it
            stream = client.do_get(ticket("data"), CALL)
            got = [chunk.data for chunk in stream]
            # Flight's part: the client gets what the cache hands any reader...
            assert_same_batches(got, list(cache.reader()))
            # ...which is the source (the cache's part).
            assert_same_batches(got, sent)
            if shape in DICTIONARY_MESSAGES:
                stats = stream.stats
                counted = (stats.num_dictionary_batches, stats.num_dictionary_deltas, stats.num_replaced_dictionaries)
                assert counted == DICTIONARY_MESSAGES[shape]


def arrow_of(relation: Any) -> pa.Table:
    """A DuckDB relation's result as a table (``arrow()`` gives a reader in DuckDB 1.4 on)."""
    out = relation.arrow()
    return out.read_all() if isinstance(out, pa.RecordBatchReader) else out


@pytest.mark.parametrize("shape", list(dictionary_streams()))
def test_dictionary_columns_reach_duckdb_as_they_do_from_the_table(shape):
    import duckdb

    sent = dictionary_streams()[shape]
    table_of_it = pa.Table.from_batches(sent)
    expected = arrow_of(duckdb.sql("select * from table_of_it"))
    assert expected.num_rows == table_of_it.num_rows
    source = pa.RecordBatchReader.from_batches(sent[0].schema, sent)
    with StreamCache(source) as cache, serving({"data": cache}) as server, connect(server.location) as client:
        stream = client.do_get(ticket("data"), CALL).to_reader()
        assert arrow_of(duckdb.sql("select * from stream")).equals(expected)


def test_a_stream_failing_after_dictionary_batches_sends_them_then_its_error():
    sent = dictionary_streams()["replaced per batch"]

    def produce():
        yield from sent
        raise RuntimeError("feed dropped after 3 batches")

    with StreamCache(pa.RecordBatchReader.from_batches(sent[0].schema, produce())) as cache, serving(
        {"data": cache}
    ) as server, connect(server.location) as client:
        stream = client.do_get(ticket("data"), CALL)
        got = [stream.read_chunk().data for _ in sent]
        assert_same_batches(got, sent)
        with pytest.raises(fl.FlightServerError, match="feed dropped after 3 batches") as caught:
            stream.read_chunk()
        assert_tells_nothing_of_the_server(str(caught.value))
        wait_for(lambda: cache.stats().readers_live == 0, "the reader released")


# -- bad input ----------------------------------------------------------------------------


def test_bad_tickets_get_clear_errors_and_the_server_keeps_serving():
    with StreamCache(table(500)) as cache, serving({"data": cache, "other": cache}) as server:
        err = read_error(server.location, ticket("nope"))
        assert isinstance(err, fl.FlightServerError)
        assert "no cache named 'nope'" in str(err) and "'data', 'other'" in str(err)
        for raw, says in [
            (b"{oops", "not valid JSON"),
            (b'{"cache": "data", "start": "middle"}', '"start" must be'),
            (b"\xff\x00", "not UTF-8"),
            (b"x" * 10_000, "more than 4096"),
        ]:
            err = read_error(server.location, fl.Ticket(raw))
            assert isinstance(err, fl.FlightServerError) and "malformed ticket" in str(err)
            assert says in str(err)
        with connect(server.location) as client:
            # pyarrow's GetSchema handler passes no Flight error class on: the client
            # gets a plain ArrowException, with the message.
            with pytest.raises(pa.ArrowException, match="one cache, got 2"):
                client.get_schema(fl.FlightDescriptor.for_path("data", "x"), CALL)
            with pytest.raises(fl.FlightServerError, match="no cache named 'nope'"):
                client.get_flight_info(fl.FlightDescriptor.for_path("nope"), CALL)
            with pytest.raises(fl.FlightServerError, match="read-only"):
                client.do_put(fl.FlightDescriptor.for_path("data"), cache.schema, CALL)[0].close()
        assert read_all(server.location).num_rows == 500
        assert cache.stats().readers_created == 1 and server.active_streams == 0


# About 3 KB of nesting, under the 4 KB ticket limit: deep enough to exhaust the JSON
# parser's recursion.
DEEP_JSON = b'{"cache": ' + b"[" * 1_500 + b"]" * 1_500 + b"}"
LONG_NAME = "é" * 2_048  # 4 096 bytes: the longest ticket taken


def by_path(*path: str) -> fl.FlightDescriptor:
    return fl.FlightDescriptor.for_path(*path)


def by_command(raw: bytes) -> fl.FlightDescriptor:
    return fl.FlightDescriptor.for_command(raw)


def put_a_batch(client: fl.FlightClient) -> None:
    writer, _ = client.do_put(by_path("data"), table(10).schema, CALL)
    writer.write_table(table(10))
    writer.close()


def exchange(client: fl.FlightClient) -> None:
    writer, reader = client.do_exchange(by_path("data"), CALL)
    writer.begin(table(10).schema)
    writer.write_table(table(10))
    writer.done_writing()
    reader.read_all()


# Each Flight call with a hostile input, and what its refusal says.
HOSTILE: dict[str, tuple[Callable[[fl.FlightClient], object], str]] = {
    "DoGet deep JSON": (lambda c: c.do_get(fl.Ticket(DEEP_JSON), CALL).read_all(), "nests too deeply"),
    "DoGet lone surrogate": (
        lambda c: c.do_get(fl.Ticket(b'{"cache": "\\ud800"}'), CALL).read_all(), "no cache named '\\ud800'"
    ),
    "DoGet 4 KB name": (lambda c: c.do_get(fl.Ticket(LONG_NAME.encode()), CALL).read_all(), "no cache named"),
    "DoGet binary": (lambda c: c.do_get(fl.Ticket(b"\xff\x00\xfe"), CALL).read_all(), "not UTF-8"),
    "DoGet start an object": (
        lambda c: c.do_get(fl.Ticket(b'{"cache": "data", "start": {"a": 1}}'), CALL).read_all(), '"start" must be'
    ),
    "GetSchema unknown cache": (lambda c: c.get_schema(by_path("nope"), CALL), "no cache named 'nope'"),
    "GetSchema two path elements": (lambda c: c.get_schema(by_path("data", "x"), CALL), "one cache, got 2"),
    "GetSchema deep JSON": (lambda c: c.get_schema(by_command(DEEP_JSON), CALL), "nests too deeply"),
    "GetSchema binary": (lambda c: c.get_schema(by_command(b"\xff"), CALL), "not UTF-8"),
    "GetFlightInfo unknown cache": (lambda c: c.get_flight_info(by_path("nope"), CALL), "no cache named 'nope'"),
    "GetFlightInfo deep JSON": (lambda c: c.get_flight_info(by_command(DEEP_JSON), CALL), "nests too deeply"),
    "GetFlightInfo lone surrogate": (
        lambda c: c.get_flight_info(by_command(b'{"cache": "\\udfff"}'), CALL), "no cache named"
    ),
    "DoAction 100 KB body": (lambda c: list(c.do_action(fl.Action("drop", b"x" * 100_000), CALL)), "no actions"),
    "DoPut": (put_a_batch, "read-only"),
    "DoExchange": (exchange, "read-only"),
}


@pytest.mark.parametrize("call", list(HOSTILE))
def test_no_refused_call_sends_the_client_a_traceback(call):
    attempt, says = HOSTILE[call]
    with StreamCache(table(100)) as cache, serving({"data": cache}) as server:
        with connect(server.location) as client:
            # GetSchema's refusals arrive as a plain ArrowException: pyarrow's client
            # passes no Flight error class on for that call.
            with pytest.raises(pa.ArrowException) as caught:
                attempt(client)
            assert says in str(caught.value), caught.value
            assert_tells_nothing_of_the_server(str(caught.value))
            # Calls that take no input answer as usual, and the server still serves.
            assert client.list_actions(CALL) == []
            assert list(client.list_flights(b"\xff\xfe", CALL)) == []
        assert read_all(server.location).num_rows == 100
        assert server.active_streams == 0 and cache.stats().readers_live == 0


# Ordering tickets a client may send, and what the refusal says.
HOSTILE_ORDERS: list[tuple[bytes, str]] = [
    (b'{"cache": "data", "shard": [0, 0]}', "shard count is 0"),
    (b'{"cache": "data", "shard": [5, 5]}', "shard index 5 is out of range for 5 shards"),
    (b'{"cache": "data", "shard": [-1, 2]}', '"shard" must hold integers from 0 to 2**64 - 1'),
    (b'{"cache": "data", "shard": [0, -3]}', '"shard" must hold integers from 0 to 2**64 - 1'),
    (b'{"cache": "data", "shard": [0, 18446744073709551616]}', "from 0 to 2**64 - 1"),
    (b'{"cache": "data", "shard": [0]}', '"shard" must be [index, count]'),
    (b'{"cache": "data", "shard": [0, 1, 2]}', '"shard" must be [index, count]'),
    (b'{"cache": "data", "shard": "0/2"}', '"shard" must be [index, count]'),
    (b'{"cache": "data", "shard": {"index": 0}}', '"shard" must be [index, count]'),
    (b'{"cache": "data", "shard": [0.5, 2]}', '"shard" must hold integers, got float'),
    (b'{"cache": "data", "shard": [true, 2]}', '"shard" must hold integers, got bool'),
    (b'{"cache": "data", "shard": [0, null]}', '"shard" must hold integers, got NoneType'),
    (b'{"cache": "data", "shard": [null, 2]}', '"shard" must hold integers, got NoneType'),
    (b'{"cache": "data", "seed": "7"}', '"seed" must hold integers, got str'),
    (b'{"cache": "data", "seed": 1.5}', '"seed" must hold integers, got float'),
    (b'{"cache": "data", "seed": 1e400}', '"seed" must hold integers, got float'),
    (b'{"cache": "data", "seed": NaN}', '"seed" must hold integers, got float'),
    (b'{"cache": "data", "seed": true}', '"seed" must hold integers, got bool'),
    (b'{"cache": "data", "seed": [7]}', '"seed" must hold integers, got list'),
    (b'{"cache": "data", "seed": -1}', '"seed" must hold integers from 0 to 2**64 - 1'),
    (b'{"cache": "data", "seed": ' + b"9" * 4000 + b"}", '"seed" must hold integers from 0'),
    (b'{"cache": "data", "window": 3}', "shuffle_window (bc_reader_options_set_shuffle_window) needs a shuffle"),
    (b'{"cache": "data", "seed": 1, "window": 0}', "shuffle_window is 0"),
    (b'{"cache": "data", "seed": 1, "window": -4}', '"window" must hold integers from 0'),
    (b'{"cache": "data", "seed": 1, "window": "all"}', '"window" must hold integers, got str'),
    (b'{"cache": "data", "seed": 1, "start": "frontier"}', "shuffle needs a reader from the start"),
    (b'{"cache": "data", "seed": 1, "shard": [0, 2], "extra": 1}', "unknown ticket keys ['extra']"),
]


@pytest.mark.parametrize("raw, says", HOSTILE_ORDERS, ids=[raw[:60].decode() for raw, _ in HOSTILE_ORDERS])
def test_hostile_ordering_tickets_are_refused_by_name(raw, says):
    with StreamCache(table(1_000).to_reader(max_chunksize=100)) as cache, serving({"data": cache}) as server:
        err = read_error(server.location, fl.Ticket(raw))
        assert isinstance(err, fl.FlightServerError), err
        assert says in str(err), err
        assert_tells_nothing_of_the_server(str(err))
        assert read_all(server.location).num_rows == 1_000
        assert server.active_streams == 0 and cache.stats().readers_live == 0


def info_error(location: str, raw: bytes) -> BaseException:
    """The error a client gets for GetFlightInfo of a command holding ticket ``raw``."""
    with connect(location) as client:
        with pytest.raises(fl.FlightError) as caught:
            client.get_flight_info(by_command(raw), CALL)
    return caught.value


def assert_refused_alike(location: str, raw: bytes) -> BaseException:
    """GetFlightInfo and DoGet of ``raw`` fail with the same Flight error and message (a
    stream's error goes on with the gRPC client's own context, which is cut off here)."""
    described, read = info_error(location, raw), read_error(location, fl.Ticket(raw))
    sent = str(read).split(". gRPC client debug context:")[0]
    assert (type(described), str(described)) == (type(read), sent)
    assert_tells_nothing_of_the_server(str(described))
    return described


@pytest.mark.parametrize("raw, says", HOSTILE_ORDERS, ids=[raw[:60].decode() for raw, _ in HOSTILE_ORDERS])
def test_get_flight_info_refuses_an_ordering_ticket_as_do_get_does(raw, says):
    with StreamCache(table(1_000).to_reader(max_chunksize=100)) as cache, serving({"data": cache}) as server:
        err = assert_refused_alike(server.location, raw)
        assert isinstance(err, fl.FlightServerError) and says in str(err), err
        assert cache.stats().readers_created == 0


def test_get_flight_info_refuses_a_window_the_memory_budget_cannot_hold():
    data = table(1_000)
    with StreamCache(single_use(data, 100), memory_capacity=64 * 1024, max_readers=2) as cache, \
            serving({"data": cache}) as server:
        local = cache.reader()
        next(local)  # a batch's size is known from here on
        err = assert_refused_alike(server.location, ticket("data", seed=1, window=500).ticket)
        assert isinstance(err, fl.FlightServerError), err
        assert "cache 'data': shuffle_window=500 keeps at least 500 batches" in str(err), err
        assert "memory_capacity" in str(err)
        local.close()
        assert cache.stats().readers_created == 1, "neither call counted a reader"


def test_get_flight_info_of_a_valid_ordering_ticket_makes_no_reader():
    data = table(1_000)
    top = 2**64 - 1
    requests = [
        Request("data", seed=7, window=3, shard=(1, 2)),
        Request("data", seed=top, shard=(top - 1, top)),
        Request("data", "frontier", shard=(0, 2)),
        Request("data", "frontier"),
    ]
    with StreamCache(single_use(data, 100), max_readers=1) as full, \
            StreamCache(single_use(data, 100), max_readers=2) as cache, \
            serving({"full": full, "data": cache}) as server, connect(server.location) as client:
        held = [full.reader(), cache.reader()]
        # At its max_readers, a cache still describes its tickets; DoGet is refused.
        info = client.get_flight_info(by_command(Request("full", seed=7, window=3).encode()), CALL)
        assert info.schema == data.schema and full.stats().readers_created == 1
        with pytest.raises(fl.FlightUnavailableError, match="max_readers"):
            client.do_get(info.endpoints[0].ticket, CALL).read_all()
        # One reader short of it, as many descriptions as asked leave that reader to DoGet.
        for _ in range(3):
            for request in requests:
                described = client.get_flight_info(by_command(request.encode()), CALL)
                assert described.schema == data.schema
                assert Request.decode(described.endpoints[0].ticket.ticket) == request
        assert cache.stats().readers_created == 1
        first = client.get_flight_info(by_command(requests[0].encode()), CALL)
        got = batch_ids(client.do_get(first.endpoints[0].ticket, CALL).read_all())
        assert cache.stats().readers_created == 2
        for reader in held:
            reader.close()
    local = StreamCache(data.to_reader(max_chunksize=100)).reader(shuffle=7, shuffle_window=3, shard=(1, 2))
    assert got == [batch.column("id").to_pylist() for batch in local] and len(got) == 5


def batch_ids(data: pa.Table) -> list[list[int]]:
    return [batch.column("id").to_pylist() for batch in data.to_batches() if batch.num_rows]


def test_extreme_ordering_tickets_read_what_a_local_reader_reads():
    """The largest values a ticket takes: a shard count past 2**63 splits the stream with
    no batch twice, a window past the stream shuffles all of it."""
    top = 2**64 - 1
    with StreamCache(table(1_000).to_reader(max_chunksize=100)) as cache, serving({"data": cache}) as server:
        cases = [
            ({"seed": top, "window": top}, 10),
            ({"seed": 0, "window": 1, "shard": (top - 1, top)}, 0),
            ({"shard": (0, top)}, 1),
            ({"shard": (2**63 - 1, 2**63 + 1)}, 0),
            ({"shard": (2**63, 2**63 + 1)}, 0),
            ({"seed": 5, "shard": (top - 1, top)}, 0),
        ]
        for order, batches in cases:
            got = batch_ids(read_all(server.location, ticket("data", **order)))
            local = cache.reader(shuffle=order.get("seed"), shuffle_window=order.get("window"),
                                 shard=order.get("shard"))
            assert got == [batch.column("id").to_pylist() for batch in local], order
            assert len(got) == batches, (order, got)


def test_mangled_ordering_tickets_never_break_the_server():
    """Ordering tickets with random values of any type (huge, negative, floats, strings,
    lists of any length), and valid ones cut short or with bytes flipped, dropped or
    repeated: each is read as the ticket says (as a local reader with the same request
    reads it) or refused with a Flight error that names the problem, and the server
    serves on."""
    rng = random.Random(8)
    top = 2**64 - 1
    # Values a reader takes, and values of every other kind, a quarter of the time.
    good = [0, 1, 2, 3, 7, 2**63 - 1, 2**63, 2**63 + 1, top - 1, top]
    bad = [top + 1, -1, 2.5, 1.0, "3", None, True, []]
    pairs = [[0, 2], [1, 3], [2, 3], [0, top], [top - 1, top], [2**63 - 1, 2**63 + 1], [2**63, 2**63 + 1]]
    odd = [[0, 0], [3, 2], [0, None], [1], [0, 1, 2], "0/2", [2.0, 3], [-1, 2], None]
    pools = {
        "seed": (good, bad),
        "window": (good, bad),
        "shard": (pairs, odd),
        "start": (["beginning", "frontier"], ["middle", 1, None]),
    }
    tickets = set()
    while len(tickets) < 300:
        fields: dict[str, Any] = {"cache": "data"}
        for key, (fine, wrong) in pools.items():
            if rng.random() < 0.5:
                fields[key] = rng.choice(fine if rng.random() < 0.75 else wrong)
        tickets.add(json.dumps(fields).encode())
    valid = [
        ticket("data", seed=7, window=3, shard=(1, 2)).ticket,
        ticket("data", seed=top, shard=(0, 3)).ticket,
        ticket("data", shard=(2, 4)).ticket,
        ticket("data", "frontier", shard=(0, 2)).ticket,
    ]
    tickets |= {raw[:cut] for raw in valid for cut in range(0, len(raw), 3)}
    while len(tickets) < 500:
        raw = bytearray(rng.choice(valid))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(raw))
            how = rng.randrange(3)
            if how == 0:
                raw[at] = rng.choice(b'0123456789-[]{},:."e ' + bytes([rng.randrange(256)]))
            elif how == 1:
                del raw[at]
            else:
                raw[at:at] = raw[at : at + rng.randint(1, 8)]
        tickets.add(bytes(raw))
    outcomes = {"read": 0, "refused": 0}
    with StreamCache(table(1_000).to_reader(max_chunksize=100)) as cache, serving({"data": cache}) as server:
        cache.ingest_all()
        with connect(server.location) as client:
            for raw in sorted(tickets):
                expected: Union[list, str]
                try:
                    request = Request.decode(raw)
                    if request.cache != "data":
                        expected = "no cache named"
                    else:
                        local = cache.reader(from_start=request.from_start, **request.reader_order())
                        expected = [batch.column("id").to_pylist() for batch in local]
                except (TicketError, batchcorder.BatchcorderError) as err:
                    expected = str(err)
                try:
                    got = batch_ids(client.do_get(fl.Ticket(raw), CALL).read_all())
                except fl.FlightError as err:
                    assert isinstance(err, fl.FlightServerError), (raw, err)
                    assert isinstance(expected, str) and expected in str(err), (raw, err, expected)
                    assert_tells_nothing_of_the_server(str(err))
                    outcomes["refused"] += 1
                else:
                    assert got == expected, raw
                    outcomes["read"] += 1
        assert read_all(server.location).num_rows == 1_000
        assert server.active_streams == 0
    assert outcomes["read"] > 50 and outcomes["refused"] > 200, outcomes


class Audited(CacheServer):
    """An application's server that checks an audit log before each call, and fails
    with an error the server does not expect, whose text holds a server path."""

    def fail(self) -> None:
        raise LookupError(f"audit log {SERVER_PATHS[0]}/audit.log is unavailable")

    def do_get(self, context, ticket):
        self.fail()

    def get_schema(self, context, descriptor):
        self.fail()

    def get_flight_info(self, context, descriptor):
        self.fail()

    def list_flights(self, context, criteria):
        yield from super().list_flights(context, criteria)
        self.fail()  # after the first answer: pyarrow is iterating

    def do_action(self, context, action):
        self.fail()

    def list_actions(self, context):
        self.fail()

    def do_put(self, context, descriptor, reader, writer):
        self.fail()

    def do_exchange(self, context, descriptor, reader, writer):
        self.fail()


def test_an_unexpected_error_reaches_the_client_as_an_internal_error_and_is_logged(caplog):
    with StreamCache(table(100)) as cache:
        server = Audited({"data": cache})
        try:
            with connect(server.location) as client, caplog.at_level(logging.ERROR, "batchcorder.flight"):
                for call in (
                    lambda: client.do_get(ticket("data"), CALL).read_all(),
                    lambda: client.get_flight_info(by_path("data"), CALL),
                    lambda: list(client.list_flights(options=CALL)),
                    lambda: list(client.do_action(fl.Action("audit", b""), CALL)),
                    lambda: client.list_actions(CALL),
                    lambda: put_a_batch(client),
                    lambda: exchange(client),
                ):
                    with pytest.raises(fl.FlightInternalError) as caught:
                        call()
                    assert "internal error (LookupError); the server's log has the details" in str(caught.value)
                    assert_tells_nothing_of_the_server(str(caught.value))
                with pytest.raises(pa.ArrowException) as caught:
                    client.get_schema(by_path("data"), CALL)
                assert "internal error (LookupError)" in str(caught.value)
                assert_tells_nothing_of_the_server(str(caught.value))
        finally:
            server.shutdown(timeout=WAIT)
    # The server's log has what the clients were not sent.
    logged = [r for r in caplog.records if r.name == "batchcorder.flight" and r.levelno == logging.ERROR]
    assert len(logged) == 8
    assert all(r.exc_info and "audit.log is unavailable" in str(r.exc_info[1]) for r in logged)


def test_a_port_already_in_use_is_an_error_naming_the_location():
    with StreamCache(table(10)) as cache, serving({"data": cache}) as server:
        with pytest.raises(OSError) as caught:
            CacheServer({"data": cache}, server.location)
        assert caught.value.errno == errno.EADDRINUSE
        assert server.location in str(caught.value)
        assert read_all(server.location).num_rows == 10  # the first server is unharmed
    with pytest.raises(ValueError, match="scheme"):
        CacheServer({}, "http://127.0.0.1:0")
    with pytest.raises(ValueError, match="needs TLS"):
        CacheServer({}, "grpc+tls://127.0.0.1:0")


# -- security -----------------------------------------------------------------------------


def test_a_token_is_required_for_every_call():
    data = table(300)
    with StreamCache(data) as cache, serving({"data": cache}, token="s3cret-token") as server:
        for token in (None, "wrong", "s3cret-tokeN"):
            with connect(server.location, token=token) as client:
                for call in (
                    lambda: client.do_get(ticket("data"), CALL).read_all(),
                    lambda: list(client.list_flights(options=CALL)),
                    lambda: client.get_flight_info(fl.FlightDescriptor.for_path("data"), CALL),
                    lambda: client.get_schema(fl.FlightDescriptor.for_path("data"), CALL),
                    lambda: client.list_actions(CALL),
                    lambda: list(client.do_action(fl.Action("drop", b""), CALL)),
                    lambda: put_a_batch(client),
                    lambda: exchange(client),
                ):
                    # pyarrow's client raises GetSchema's refusal as a plain OSError.
                    with pytest.raises((fl.FlightUnauthenticatedError, OSError), match="token") as caught:
                        call()
                    assert_tells_nothing_of_the_server(str(caught.value))
        assert cache.stats().readers_created == 0  # no data went out
        assert read_all(server.location, token="s3cret-token").equals(data)
        # The header by hand, as another Flight client would send it.
        with fl.connect(server.location) as plain:
            headers = fl.FlightCallOptions(headers=[(b"authorization", b"Bearer s3cret-token")], timeout=60)
            assert plain.do_get(ticket("data"), headers).read_all().equals(data)
    with pytest.raises(ValueError, match="empty"):
        CacheServer({}, token="")


def test_the_bearer_scheme_is_matched_whatever_its_case():
    data = table(300)
    with StreamCache(data) as cache, serving({"data": cache}, token="s3cret") as server:
        with fl.connect(server.location) as plain:
            # HTTP authentication schemes are case-insensitive; spaces may be several.
            for header in (b"Bearer s3cret", b"bearer s3cret", b"BEARER s3cret", b"bEaReR   s3cret"):
                options = fl.FlightCallOptions(headers=[(b"authorization", header)], timeout=60)
                assert plain.do_get(ticket("data"), options).read_all().equals(data), header
            for header in (b"Basic s3cret", b"Bearers3cret", b"Bearer", b"s3cret", b"Bearer s3cret2"):
                options = fl.FlightCallOptions(headers=[(b"authorization", header)], timeout=60)
                with pytest.raises(fl.FlightUnauthenticatedError):
                    plain.do_get(ticket("data"), options).read_all()
        assert cache.stats().readers_created == 4


def beyond_loopback_warnings(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.name == "batchcorder.flight" and r.levelno == logging.WARNING and "beyond loopback" in r.getMessage()
    ]


def test_serving_beyond_loopback_without_a_token_or_tls_logs_a_warning(caplog, certificates):
    tls = {"tls_cert": certificates["cert"], "tls_key": certificates["key"]}
    # 0.0.0.0 listens on every interface; the test only binds, and sends nothing.
    cases = [
        ("grpc://0.0.0.0:0", {}, "without a token or TLS"),
        ("grpc://0.0.0.0:0", {"token": "t0ken"}, "without TLS"),
        ("grpc+tls://0.0.0.0:0", tls, "without a token:"),
        ("grpc+tls://0.0.0.0:0", {"token": "t0ken", **tls}, None),
        ("grpc://127.0.0.1:0", {}, None),
        ("grpc://localhost:0", {}, None),
    ]
    for location, options, says in cases:
        caplog.clear()
        with caplog.at_level(logging.INFO, "batchcorder.flight"):
            CacheServer({}, location, **options).shutdown(timeout=WAIT)
        warned = beyond_loopback_warnings(caplog)
        if says is None:
            assert warned == [], (location, options)
        else:
            assert len(warned) == 1 and says in warned[0], (location, options, warned)
            assert warned[0].startswith("serving grpc")  # with the real port, not :0
            assert not warned[0].split(" ")[1].endswith(":0")


@pytest.fixture
def certificates(tmp_path: Path) -> dict[str, Path]:
    """A certificate authority and a server certificate for 127.0.0.1, made now."""
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "server.pem", "key": tmp_path / "server.key"}
    authority.cert_pem.write_to_path(str(paths["ca"]))
    issued.private_key_pem.write_to_path(str(paths["key"]))
    paths["cert"].write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    return paths


def test_tls_with_a_certificate_made_in_the_test(certificates):
    data = table(1_000)
    with StreamCache(data) as cache, serving(
        {"data": cache}, tls_cert=certificates["cert"], tls_key=str(certificates["key"]), token="t0ken"
    ) as server:
        assert server.location.startswith("grpc+tls://127.0.0.1:")
        assert read_all(server.location, tls_root_certs=certificates["ca"], token="t0ken").equals(data)
        # A client that does not trust the authority, or speaks plain gRPC, gets nothing.
        with connect(server.location, token="t0ken") as untrusting:
            with pytest.raises(fl.FlightUnavailableError):
                untrusting.do_get(ticket("data"), fl.FlightCallOptions(timeout=10)).read_all()
        plain_location = server.location.replace("grpc+tls", "grpc")
        with connect(plain_location, token="t0ken") as plain:
            with pytest.raises(fl.FlightError):
                plain.do_get(ticket("data"), fl.FlightCallOptions(timeout=10)).read_all()
        assert cache.stats().readers_created == 1


def test_a_missing_or_unreadable_certificate_is_refused_before_binding(certificates, tmp_path):
    cert, key = certificates["cert"], certificates["key"]
    with pytest.raises(FileNotFoundError, match="tls_cert.*nowhere.pem"):
        CacheServer({}, tls_cert=tmp_path / "nowhere.pem", tls_key=key)
    with pytest.raises(IsADirectoryError, match="tls_key"):
        CacheServer({}, tls_cert=cert, tls_key=tmp_path)
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    with pytest.raises(ValueError, match="tls_key.*no PEM block"):
        CacheServer({}, tls_cert=cert, tls_key=not_pem)
    with pytest.raises(ValueError, match="tls_key is missing"):
        CacheServer({}, tls_cert=cert)
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root reads any; Windows' chmod only marks read-only
        locked = tmp_path / "locked.pem"
        locked.write_bytes(cert.read_bytes())
        locked.chmod(0)
        with pytest.raises(PermissionError, match="tls_cert"):
            CacheServer({}, tls_cert=locked, tls_key=key)
    # A certificate and a key that do not belong together: gRPC refuses to start, and
    # the error says what to check.
    other = tmp_path / "other.key"
    pytest.importorskip("trustme").CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(other))
    with pytest.raises(OSError, match="tls_cert and tls_key"):
        CacheServer({}, tls_cert=cert, tls_key=other)


# -- the command line ---------------------------------------------------------------------


@contextmanager
def command(*args: str, env: Optional[dict[str, str]] = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run ``python -m batchcorder.flight ARGS`` until it prints where it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "batchcorder.flight", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        location = listening_location(process, process.stderr.read, WAIT)
        yield process, location
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=WAIT)
        process.stdout.close()
        process.stderr.close()


def stop(process: subprocess.Popen) -> None:
    """Stops the command as a service manager does, with SIGTERM: it exits 0. On Windows
    send_signal(SIGTERM) is TerminateProcess, so only the end is certain there."""
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=WAIT)
    if sys.platform != "win32":
        assert code == 0, code


def test_the_command_serves_a_parquet_file_and_a_persisted_cache(tmp_path):
    data = table(30_000)
    pq.write_table(data, tmp_path / "trades.parquet", row_group_size=5_000)
    saved = StreamCache(single_use(data)).persist(tmp_path / "saved")
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    with command(
        str(tmp_path / "trades.parquet"), f"events={saved.path}", "--token-file", str(token_file),
        "--max-readers", "3",
    ) as (process, location):
        assert location.startswith("grpc://127.0.0.1:")
        with connect(location, token="from-a-file") as client:
            names = sorted(i.descriptor.path[0] for i in client.list_flights(options=CALL))
            assert names == [b"events", b"trades"]
            assert client.do_get(ticket("trades"), CALL).read_all().equals(data)
            assert client.do_get(ticket("events"), CALL).read_all().equals(data)
            [events] = [i for i in client.list_flights(options=CALL) if i.descriptor.path == [b"events"]]
            assert json.loads(events.app_metadata)["max_readers"] == 3
        stop(process)
        assert "WARNING" not in process.stderr.read()  # loopback only: nothing to warn of


def test_the_command_reports_bad_input_clearly(tmp_path):
    data = table(10)
    pq.write_table(data, tmp_path / "t.parquet")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cases = [
        ([str(tmp_path / "t.parquet"), "--location", f"grpc://127.0.0.1:{port}"],
         f"cannot serve at grpc://127.0.0.1:{port}: "  # then the system's words for EADDRINUSE
         + ("" if sys.platform == "win32" else "Address already in use")),
        ([str(tmp_path / "t.parquet"), "--tls-cert", str(tmp_path / "no.pem"), "--tls-key", str(tmp_path / "no.key")],
         "tls_cert: cannot read"),
        ([str(tmp_path / "missing.parquet")], "missing.parquet: no such file"),
        ([str(tmp_path / "empty")], "empty: a directory with no Parquet files in it"),
    ]
    (tmp_path / "empty").mkdir()
    try:
        for args, says in cases:
            result = subprocess.run(
                [sys.executable, "-m", "batchcorder.flight", *args],
                capture_output=True, text=True, timeout=WAIT,
            )
            assert result.returncode == 2, result
            assert says in result.stderr, result.stderr
    finally:
        busy.close()


def test_the_command_refuses_an_empty_token_from_the_environment(tmp_path):
    pq.write_table(table(10), tmp_path / "t.parquet")
    # Taking an empty variable for "no token" would serve without authentication.
    for value, says in [("", "BATCHCORDER_FLIGHT_TOKEN is set but empty"),
                        (" ", "BATCHCORDER_FLIGHT_TOKEN must be printable ASCII")]:
        result = subprocess.run(
            [sys.executable, "-m", "batchcorder.flight", str(tmp_path / "t.parquet")],
            capture_output=True, text=True, timeout=WAIT,
            env={**os.environ, "BATCHCORDER_FLIGHT_TOKEN": value},
        )
        assert result.returncode == 2, result
        assert says in result.stderr, result.stderr
        assert "listening" not in result.stdout and "cache 't'" not in result.stdout


def test_the_command_warns_on_stderr_when_serving_beyond_loopback_unprotected(tmp_path):
    pq.write_table(table(10), tmp_path / "t.parquet")
    # Binds every interface; the test connects through loopback only.
    with command(str(tmp_path / "t.parquet"), "--location", "grpc://0.0.0.0:0") as (process, location):
        port = location.rsplit(":", 1)[1]
        assert read_all(f"grpc://127.0.0.1:{port}", ticket("t")).num_rows == 10
        stop(process)
        warned = [line for line in process.stderr.read().splitlines() if "WARNING" in line]
    assert len(warned) == 1, warned
    says = f"batchcorder.flight WARNING: serving grpc://0.0.0.0:{port} beyond loopback without a token or TLS"
    assert says in warned[0]


def test_the_command_serves_a_parquet_file_with_a_categorical_column(tmp_path):
    # Each row group written with a dictionary of its own, as a categorical column
    # written piece by piece is: the scan replaces the dictionary at each row group.
    pieces = [["Oslo", "Lima"] * 15, ["Pune", "Kyiv", "Oslo"] * 10, ["Lima"] * 30]
    parts = [
        pa.table({"city": pa.array(names).dictionary_encode(), "temp": [float(i + 30 * n) for i in range(30)]})
        for n, names in enumerate(pieces)
    ]
    path = tmp_path / "weather.parquet"
    with pq.ParquetWriter(path, parts[0].schema) as writer:
        for part in parts:
            writer.write_table(part)
    scanned = ds.dataset(path, format="parquet").to_table()
    dictionaries_scanned = [c.dictionary.to_pylist() for c in scanned.column("city").chunks]
    assert dictionaries_scanned == [["Oslo", "Lima"], ["Pune", "Kyiv", "Oslo"], ["Lima"]]
    import duckdb

    local = pa.concat_tables(parts)
    query = "select city, max(temp) as hottest, count(*) as days from {} group by city order by city"
    expected = duckdb.sql(query.format("local")).fetchall()
    with command(str(path)) as (process, location), connect(location) as client:
        stream = client.do_get(ticket("weather"), CALL)
        assert stream.read_all().equals(scanned)
        assert stream.stats.num_replaced_dictionaries == 2
        flight_stream = client.do_get(ticket("weather"), CALL).to_reader()
        assert duckdb.sql(query.format("flight_stream")).fetchall() == expected
        stop(process)


@posix_only("SIGTERM starts the grace; on Windows it is TerminateProcess")
def test_the_command_exits_after_its_grace_when_a_client_stopped_reading(tmp_path):
    pq.write_table(big_table(), tmp_path / "big.parquet", row_group_size=16_384)
    with command(str(tmp_path / "big.parquet"), "--grace", "0.5") as (process, location):
        with connect(location) as client:
            idle = client.do_get(ticket("big"), CALL)  # never read
            idle.read_chunk()
            # The server's writes stop once gRPC's buffers for the idle client are full:
            # its ingestion count, which ListFlights reports, then stays still.
            wait_until_blocked(lambda: json.loads(next(client.list_flights(options=CALL)).app_metadata)["batches"])
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=WAIT) == 1
            assert "not reading" in process.stderr.read()


def test_the_console_script_is_declared():
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("batchcorder-flight") == "batchcorder.flight._cli:main"
