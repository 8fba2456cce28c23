"""Shuffled epochs and shards (issue 30, items 1 and 2): ``cache.reader(shuffle=,
shuffle_window=, shuffle_rows=, shard=)``, ``worker_shard()``, and Flight tickets that
name a seed and a shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import batchcorder
from batchcorder import InvalidArgumentError, ReaderCapError, StreamCache
from batchcorder.flight import CacheServer, connect, ticket

BATCHES = 40


def numbered(batches: int = BATCHES, rows: int = 5) -> pa.Table:
    """Batch ``b`` holds ``rows`` rows whose ``batch`` column is ``b``."""
    return pa.table({
        "batch": [b for b in range(batches) for _ in range(rows)],
        "row": list(range(batches * rows)),
    })


def single_use(batches: int = BATCHES, rows: int = 5) -> pa.RecordBatchReader:
    """``numbered`` as a stream of batches that share no buffers, so that each one
    evicted gives its memory back."""
    table = numbered(batches, rows)
    fresh = (
        pa.record_batch([pa.array(column.to_pylist()) for column in batch.columns], schema=table.schema)
        for batch in table.to_batches(max_chunksize=rows)
    )
    return pa.RecordBatchReader.from_batches(table.schema, fresh)


def order_of(reader) -> list[int]:
    """The batch numbers a reader returns, in its order."""
    return [batch.column("batch")[0].as_py() for batch in reader]


def caches(tmp_path: Path) -> dict[str, StreamCache]:
    """The same stream in memory, on disk, and as an opened save."""
    tmp_path.mkdir(exist_ok=True)
    saved = StreamCache(single_use())
    saved.persist(tmp_path / "save")
    return {
        "memory": StreamCache(single_use()),
        "disk": StreamCache.on_disk(single_use(), tmp_path / "spill", 1 << 30, memory_capacity=0),
        "opened": StreamCache.open(tmp_path / "save"),
    }


def test_a_seed_gives_the_same_order_in_every_tier_and_process(tmp_path):
    orders = {name: order_of(cache.reader(shuffle=11)) for name, cache in caches(tmp_path).items()}
    assert len(set(map(tuple, orders.values()))) == 1, orders
    first = orders["memory"]
    assert sorted(first) == list(range(BATCHES)) and first != sorted(first)
    script = (
        "import json, sys, pyarrow as pa, batchcorder\n"
        "cache = batchcorder.StreamCache.open(sys.argv[1])\n"
        "print(json.dumps([b.column('batch')[0].as_py() for b in cache.reader(shuffle=11)]))\n"
    )
    other = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "save")],
        capture_output=True, text=True, check=True,
    )
    assert json.loads(other.stdout) == first
    assert order_of(StreamCache(single_use()).reader(shuffle=12)) != first


@pytest.mark.parametrize("window", [None, 4])
def test_shards_split_one_order_and_cover_the_stream_once(tmp_path, window):
    for name, cache in caches(tmp_path / str(window)).items():
        whole = order_of(cache.reader(shuffle=3, shuffle_window=window))
        shards = [order_of(cache.reader(shuffle=3, shuffle_window=window, shard=(i, 3))) for i in range(3)]
        for index, shard in enumerate(shards):
            assert shard == whole[index::3], (name, index)
        assert sorted(sum(shards, [])) == list(range(BATCHES)), name
        plain = [order_of(cache.reader(shard=(i, 4))) for i in range(4)]
        assert plain == [list(range(i, BATCHES, 4)) for i in range(4)], name


def test_a_window_shuffles_a_live_stream_as_it_reads():
    pulled = []

    def generator():
        for batch in numbered().to_batches(max_chunksize=5):
            pulled.append(batch)
            yield batch

    cache = StreamCache(generator())
    reader = cache.reader(shuffle=5, shuffle_window=6)
    next(reader)
    assert cache.stats().batches_ingested == 6, "one window, not the stream"
    assert len(order_of(reader)) == BATCHES - 1
    full = cache.reader(shuffle=5)
    assert cache.stats().batches_ingested == BATCHES


def test_shuffled_rows_are_a_seeded_permutation_of_each_batch():
    cache = StreamCache(single_use(rows=16))
    got = list(cache.reader(shuffle=2, shuffle_window=3, shuffle_rows=True))
    again = list(cache.reader(shuffle=2, shuffle_window=3, shuffle_rows=True))
    assert [b.to_pydict() for b in got] == [b.to_pydict() for b in again]
    assert any(b.column("row").to_pylist() != sorted(b.column("row").to_pylist()) for b in got)
    for batch in got:
        assert len(set(batch.column("batch").to_pylist())) == 1
        rows = sorted(batch.column("row").to_pylist())
        assert rows == list(range(rows[0], rows[0] + 16))
    unshuffled = order_of(cache.reader(shuffle=2, shuffle_window=3))
    assert order_of(got) == unshuffled, "rows move, not batches"


def test_position_counts_the_batches_an_ordered_reader_returned():
    cache = StreamCache(single_use())
    reader = cache.reader(shuffle=1, shard=(2, 5))
    assert reader.position == 0
    next(reader), next(reader)
    assert reader.position == 2
    plain = cache.reader(from_start=False)
    assert plain.position == BATCHES, "a reader in stream order: the stream index"


@pytest.mark.parametrize(
    "arguments, error, words",
    [
        ({"shard": (3, 3)}, InvalidArgumentError, "shard index 3 is out of range for 3 shards"),
        ({"shard": (0, 0)}, InvalidArgumentError, "shard count is 0"),
        ({"shard": (-1, 2)}, ValueError, "the shard index must be from 0"),
        ({"shard": 2}, TypeError, "shard must be a pair (index, count)"),
        ({"shuffle": "7"}, TypeError, "shuffle must be an int"),
        ({"shuffle": True}, TypeError, "shuffle must be an int"),
        ({"shuffle": 1.5}, TypeError, "shuffle must be an int"),
        ({"shuffle": -1}, ValueError, "shuffle must be from 0 to 2**64 - 1"),
        ({"shuffle": 2**64}, ValueError, "shuffle must be from 0 to 2**64 - 1"),
        ({"shuffle": 1, "from_start": False}, InvalidArgumentError, "pass from_start=true"),
        ({"shuffle": 1, "shuffle_window": 0}, InvalidArgumentError, "shuffle_window is 0"),
        ({"shuffle_rows": True}, InvalidArgumentError, "shuffle_rows"),
        ({"shuffle_window": 4}, InvalidArgumentError, "shuffle_window"),
        ({"shuffle": 1, "shuffle_rows": 1}, TypeError, "shuffle_rows must be a bool"),
    ],
)
def test_bad_orders_are_refused_naming_what_is_wrong(arguments, error, words):
    cache = StreamCache(single_use())
    with pytest.raises(error) as raised:
        cache.reader(**arguments)
    assert words in str(raised.value)
    assert cache.stats().readers_created == 0, "a refused reader does not count"


def test_a_window_larger_than_the_memory_budget_is_refused():
    cache = StreamCache(single_use(rows=1000), memory_capacity=256 * 1024, max_readers=2)
    first = cache.reader()
    next(first)  # the size of a batch is known from here on
    with pytest.raises(InvalidArgumentError, match=r"shuffle_window=500 .*about 8000000 bytes.*memory_capacity"):
        cache.reader(shuffle=1, shuffle_window=500)
    first.close()
    assert sorted(order_of(cache.reader(shuffle=1, shuffle_window=2))) == list(range(BATCHES))


def test_max_readers_counts_shard_readers_and_memory_stays_bounded():
    batches = 400
    cache = StreamCache(single_use(batches, rows=256), max_readers=2)
    readers = [cache.reader(shuffle=9, shuffle_window=8, shard=(i, 2)) for i in range(2)]
    with pytest.raises(ReaderCapError):
        cache.reader(shard=(0, 2))
    seen, most = [], 0
    while len(seen) < batches:
        for reader in readers:
            batch = next(reader, None)
            if batch is not None:
                seen.append(batch.column("batch")[0].as_py())
            most = max(most, cache.stats().memory_bytes)
    assert sorted(seen) == list(range(batches))
    stats = cache.stats()
    assert stats.batches_evicted >= batches - 64, stats
    one_batch = 256 * 16
    assert most <= 64 * one_batch, f"{most} bytes held at most"


def test_a_flight_ticket_names_a_seed_a_window_and_a_shard():
    cache = StreamCache(single_use())
    with CacheServer({"numbers": cache}) as server:
        client = connect(server.location)
        for kwargs in [{"seed": 4}, {"seed": 4, "window": 5, "shard": (1, 2)}, {"shard": (0, 3)}]:
            got = client.do_get(ticket("numbers", **kwargs)).read_all()
            local = cache.reader(shuffle=kwargs.get("seed"), shuffle_window=kwargs.get("window"),
                                 shard=kwargs.get("shard"))
            assert got.to_batches() and [b.to_pydict() for b in got.to_batches()] == [
                b.to_pydict() for b in local
            ]
        with pytest.raises(Exception, match="shard index 2 is out of range"):
            client.do_get(ticket("numbers", shard=(2, 2))).read_all()
        with pytest.raises(Exception, match='"seed" must hold integers'):
            client.do_get(pa.flight.Ticket(b'{"cache": "numbers", "seed": "x"}')).read_all()


# -- worker_shard -----------------------------------------------------------------------

_SHARD_SCRIPT = (
    "import sys, batchcorder\n"
    "print(*batchcorder.worker_shard())\n"
    "print('torch' in sys.modules)\n"
)


def _worker_shard_in(environ: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    return subprocess.run(
        [sys.executable, "-c", _SHARD_SCRIPT], env={**clean, **environ},
        capture_output=True, text=True,
    )


def test_worker_shard_reads_torchruns_environment_in_real_processes():
    ranks = [_worker_shard_in({"RANK": str(r), "WORLD_SIZE": "3"}) for r in range(3)]
    assert [p.stdout.split("\n")[:2] for p in ranks] == [[f"{r} 3", "False"] for r in range(3)]
    alone = _worker_shard_in({})
    assert alone.stdout.split("\n")[:2] == ["0 1", "False"], "torch is never imported"
    broken = _worker_shard_in({"RANK": "3", "WORLD_SIZE": "3"})
    assert broken.returncode != 0 and "RANK must be from 0 to WORLD_SIZE - 1" in broken.stderr
    half = _worker_shard_in({"WORLD_SIZE": "2"})
    assert half.returncode != 0 and "sets WORLD_SIZE but not RANK" in half.stderr


def test_worker_shards_read_a_save_in_spawned_processes(tmp_path):
    StreamCache(single_use()).persist(tmp_path / "save")
    script = (
        "import json, sys, batchcorder\n"
        "cache = batchcorder.StreamCache.open(sys.argv[1])\n"
        "reader = cache.reader(shuffle=7, shard=batchcorder.worker_shard())\n"
        "print(json.dumps([b.column('batch')[0].as_py() for b in reader]))\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "save")],
                         env={**clean, "RANK": str(r), "WORLD_SIZE": "4"}, stdout=subprocess.PIPE, text=True)
        for r in range(4)
    ]
    shares = [json.loads(worker.communicate()[0]) for worker in workers]
    whole = order_of(StreamCache.open(tmp_path / "save").reader(shuffle=7))
    assert shares == [whole[r::4] for r in range(4)]


def test_a_cast_view_reads_in_the_same_orders_as_its_cache():
    cache = StreamCache(single_use())
    view = cache.cast(pa.schema([("batch", pa.string()), ("row", pa.int64())]))
    for order in ({"shuffle": 4}, {"shuffle": 4, "shard": (1, 3)}, {"shard": (2, 3)}):
        cast = [b.column("batch")[0].as_py() for b in view.reader(**order)]
        assert cast == [str(b) for b in order_of(cache.reader(**order))]
    with pytest.raises(ValueError, match="shard"):
        view.reader(shard=(3, 3))
