"""Persisted caches from Python: save, open from other processes, pickle by reference.

Real files, real processes (spawn, ProcessPoolExecutor, fork), and the data read back by
pyarrow, Polars and DuckDB without batchcorder.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shutil
import textwrap
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from conftest import posix_only, run_child, wait_for_child

import batchcorder

from batchcorder import (
    CorruptCacheError,
    DiskError,
    InvalidArgumentError,
    PersistedCache,
    StreamCache,
)


def table(rows: int = 10_000) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "score": pa.array([i / 7 for i in range(rows)], pa.float64()),
            "name": pa.array([f"name-{i}" for i in range(rows)], pa.string()),
            "kind": pa.array([["a", "b", "c"][i % 3] for i in range(rows)]).dictionary_encode(),
            "tags": pa.array([[i, i + 1] for i in range(rows)], pa.list_(pa.int32())),
        }
    )


def single_use(data: pa.Table, chunk: int = 1_000) -> pa.RecordBatchReader:
    return pa.RecordBatchReader.from_batches(data.schema, data.to_batches(max_chunksize=chunk))


@pytest.fixture
def saved(tmp_path: Path) -> tuple[pa.Table, PersistedCache]:
    data = table()
    with StreamCache(single_use(data)) as cache:
        return data, cache.persist(tmp_path / "saved")


# How long a worker process may take before its pool's map fails.
WORKER_SECONDS = 120


# Module level, so that spawned workers can import them.
def sum_ids(cache: StreamCache) -> int:
    return sum(pa.compute.sum(batch.column("id")).as_py() for batch in cache)


def open_and_sum(path: str) -> int:
    with StreamCache.open(path) as cache:
        return sum_ids(cache)


def persist_to(args: tuple[str, int]) -> str:
    path, rows = args
    try:
        StreamCache(single_use(table(rows))).persist(path)
        return "saved"
    except InvalidArgumentError as err:
        return f"refused: {err}"


def test_persist_then_open_replays_the_same_stream(saved, tmp_path):
    data, info = saved
    assert info.path == tmp_path / "saved" and info.batches == 10 and info.rows == 10_000
    assert len(info.id) == 32
    assert sorted(os.listdir(info.path)) == ["checksums.xxh3", "data.arrow", "manifest.json"]
    with StreamCache.open(info.path) as cache:
        assert cache.schema == data.schema
        assert pa.table(cache) == data
        assert pa.table(cache) == data  # a second pass
        assert len(cache) == 10 and cache.upstream_exhausted
        assert cache.stats().rows_ingested == 10_000
        assert "persisted=" in repr(cache) and "batches=10" in repr(cache)
    # Several opens at once, and closing one deletes nothing.
    first, second = StreamCache.open(info.path), StreamCache.open(str(info.path))
    first.close()
    assert pa.table(second) == data
    second.close()
    assert (info.path / "data.arrow").exists()


def test_the_save_is_plain_arrow_ipc_for_pyarrow_polars_and_duckdb(saved):
    data, info = saved
    arrow_file = info.path / "data.arrow"
    assert pa.ipc.open_file(arrow_file).read_all() == data
    assert pl.scan_ipc(arrow_file).select(pl.col("id").sum()).collect().item() == sum(range(10_000))
    dataset = ds.dataset(arrow_file, format="arrow")  # noqa: F841 - DuckDB finds it by name
    assert duckdb.sql("select count(*), max(name) from dataset").fetchall()[0] == (
        10_000,
        max(f"name-{i}" for i in range(10_000)),
    )
    manifest = json.loads((info.path / "manifest.json").read_text())
    assert manifest["format"] == "batchcorder-persisted-cache"
    assert manifest["format_version"] == 1
    assert (manifest["id"], manifest["batches"], manifest["rows"]) == (info.id, 10, 10_000)
    assert [f["name"] for f in manifest["schema"]] == data.column_names


def test_engines_read_an_opened_cache_directly(saved):
    data, info = saved
    with StreamCache.open(info.path) as cache:
        assert duckdb.sql("select sum(id) from cache").fetchall()[0][0] == sum(range(10_000))
        assert duckdb.sql("select count(*) from cache").fetchall()[0][0] == 10_000
        assert pl.from_arrow(pa.table(cache)).height == 10_000


def test_spawned_processes_open_one_save_at_once(saved):
    _, info = saved
    # ProcessPoolExecutor, not multiprocessing.Pool: a worker that dies fails the map
    # (BrokenProcessPool) instead of leaving it waiting for good.
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        sums = list(pool.map(open_and_sum, [str(info.path)] * 4, timeout=WORKER_SECONDS))
    assert sums == [sum(range(10_000))] * 4


def test_reading_a_save_to_its_end_keeps_few_of_its_pages_resident(tmp_path):
    # docs/processes.md: a process's memory does not grow with the size of the save it
    # reads (windows are unmapped as readers pass them), unlike a whole-file mapping's.
    schema = pa.schema([("x", pa.float64())])
    batches = (pa.record_batch([pa.array(np.full(1 << 20, float(i)))], schema=schema)
               for i in range(48))  # 48 x 8 MiB
    StreamCache(pa.RecordBatchReader.from_batches(schema, batches)).persist(tmp_path / "big")
    script = textwrap.dedent(
        """
        import sys, pyarrow.compute as pc
        from batchcorder import StreamCache
        from conftest import peak_resident_kib as peak_kib
        with StreamCache.open(sys.argv[1]) as cache:
            reader = cache.reader()
            total = pc.sum(next(reader).column(0)).as_py()
            base = peak_kib()
            for batch in reader:
                total += pc.sum(batch.column(0)).as_py()  # every page of the batch read
            print(int(total), peak_kib() - base)
        """
    )
    total, grown_kib = map(int, run_child(script, str(tmp_path / "big")).split())
    assert total == sum(range(48)) << 20
    assert grown_kib < 96 * 1024, f"reading a 384 MiB save grew the peak RSS by {grown_kib} KiB"


def test_open_takes_max_readers_with_the_rules_of_a_new_cache(saved):
    data, info = saved
    with StreamCache.open(info.path, max_readers=1) as cache:
        assert cache.max_readers == 1 and pa.table(cache) == data
        with pytest.raises(batchcorder.ReaderCapError, match="max_readers=1"):
            cache.reader()
    # One home for the rules: bc_options_set_max_readers refuses 0, as for StreamCache().
    with pytest.raises(InvalidArgumentError, match="max_readers must be at least 1"):
        StreamCache.open(info.path, max_readers=0)
    with pytest.raises(TypeError, match="max_readers must be an int"):
        StreamCache.open(info.path, max_readers="2")
    with StreamCache.open(info.path) as uncapped:
        assert [pa.table(uncapped).num_rows for _ in range(3)] == [data.num_rows] * 3


def test_stats_say_how_an_opened_save_is_checked(saved, tmp_path):
    data, info = saved
    assert StreamCache(data).stats().validation is None
    copy = tmp_path / "copy"
    shutil.copytree(info.path, copy)  # a fresh file: too new for a validation note
    for verify, expected in ((None, "full"), (False, "full"), (True, "checksums")):
        with StreamCache.open(copy, verify=verify) as cache:
            assert cache.stats().validation == expected, verify
            assert pa.table(cache) == data
    # Modified after its save: the default checks checksums.
    os.utime(copy / "data.arrow", ns=(1, 1))
    with StreamCache.open(copy) as cache:
        assert cache.stats().validation == "checksums"
        assert pa.table(cache) == data


def test_a_persisted_cache_pickles_as_a_reference(saved):
    data, info = saved
    with StreamCache.open(info.path) as cache:
        again = pickle.loads(pickle.dumps(cache))
        assert pa.table(again) == data
        again.close()
    # So does a cache that was persisted, and the reference is small.
    with StreamCache(single_use(data)) as cache:
        cache.persist(info.path.parent / "second")
        blob = pickle.dumps(cache)
        assert len(blob) < 500
        assert pa.table(pickle.loads(blob)) == data


@pytest.mark.parametrize("how", ["persist", "open", "disk_path", "persist_path"])
def test_a_reference_made_from_a_relative_path_opens_after_a_change_of_directory(tmp_path, monkeypatch, how):
    data = pa.table({"id": range(100)})
    monkeypatch.chdir(tmp_path)
    if how == "disk_path":
        cache = StreamCache(single_use(data), disk_path="spill", disk_capacity=1 << 20)
    elif how == "persist_path":
        cache = StreamCache(single_use(data), persist_path="relative")
        cache.ingest_all()
    else:
        cache = StreamCache(single_use(data))
        cache.persist("relative")
        if how == "open":
            cache = StreamCache.open("relative")
    blob = pickle.dumps(cache)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert pa.table(pickle.loads(blob)) == data


def test_spawn_and_process_pools_get_a_cache_they_can_read(saved, tmp_path):
    data, info = saved
    disk_backed = StreamCache(single_use(data), disk_path=tmp_path / "spill", disk_capacity=1 << 30)
    for cache in (StreamCache.open(info.path), disk_backed):
        for method in [m for m in ("spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]:
            with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method)) as pool:
                sums = list(pool.map(sum_ids, [cache, cache], timeout=WORKER_SECONDS))
                assert sums == [sum(range(10_000))] * 2, method
    # The disk-backed cache saved its shared copy inside its private folder, and closing
    # it deletes that with the rest.
    assert pa.table(disk_backed) == data
    disk_backed.close()
    assert os.listdir(tmp_path / "spill") == []


def test_a_memory_only_cache_or_a_reader_refuses_pickling_and_says_how_to_share():
    cache = StreamCache(pa.table({"x": [1]}))
    with pytest.raises(TypeError, match="memory-only StreamCache cannot be pickled.*persist"):
        pickle.dumps(cache)
    with pytest.raises(TypeError, match="StreamCacheReader cannot be pickled.*StreamCache"):
        pickle.dumps(cache.reader())
    assert pa.table(cache).num_rows == 1  # refusing touched nothing


def test_pickling_a_disk_cache_whose_stream_no_file_holds_says_why(tmp_path):
    """Pickling saves a disk-backed cache once; a replaced dictionary cannot be saved, and
    the error says that pickling is what needed the save."""
    kind = pa.dictionary(pa.int8(), pa.string())
    batches = [pa.record_batch([pa.array([w]).dictionary_encode().cast(kind)], names=["d"])
               for w in ("a", "b")]
    source = pa.RecordBatchReader.from_batches(batches[0].schema, iter(batches))
    cache = StreamCache(source, disk_path=tmp_path, disk_capacity=1 << 20)
    with pytest.raises(batchcorder.InvalidArgumentError,
                       match=r"cannot be shared with another process \(pickle.*cannot hold batch 1 .*never replaced.*cast"):
        pickle.dumps(cache)
    assert pa.table(cache).column("d").to_pylist() == ["a", "b"]  # the cache still reads


def test_a_reference_to_a_save_that_was_replaced_is_refused(saved):
    data, info = saved
    blob = pickle.dumps(StreamCache.open(info.path))
    shutil.rmtree(info.path)
    StreamCache(single_use(data)).persist(info.path)
    with pytest.raises(CorruptCacheError, match="saved again after this reference"):
        pickle.loads(blob)


@posix_only("os.fork")
def test_a_forked_child_reads_an_opened_cache_and_its_exit_removes_nothing(saved):
    data, info = saved
    cache = StreamCache.open(info.path)
    pid = os.fork()
    if pid == 0:  # the child
        code = 0 if sum_ids(cache) == sum(range(10_000)) else 1
        os._exit(code)
    assert wait_for_child(pid) == 0
    assert pa.table(cache) == data
    assert sorted(os.listdir(info.path)) == ["checksums.xxh3", "data.arrow", "manifest.json"]


# -- bad input ---------------------------------------------------------------------------


def test_open_refuses_what_is_not_a_whole_save_and_deletes_nothing(saved, tmp_path):
    _, info = saved
    with pytest.raises(FileNotFoundError):
        StreamCache.open(tmp_path / "nowhere")
    with pytest.raises(InvalidArgumentError, match="it is a file"):
        StreamCache.open(info.path / "manifest.json")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "theirs.csv").write_text("a,b\n")
    with pytest.raises(CorruptCacheError, match="holds no manifest.json"):
        StreamCache.open(foreign)
    assert (foreign / "theirs.csv").read_text() == "a,b\n"

    half = tmp_path / "half"
    shutil.copytree(info.path, half)
    (half / "manifest.json").unlink()  # a save that stopped before its manifest
    with pytest.raises(CorruptCacheError, match="save did not finish"):
        StreamCache.open(half)

    truncated = tmp_path / "truncated"
    shutil.copytree(info.path, truncated)
    with open(truncated / "data.arrow", "r+b") as f:
        f.truncate(os.path.getsize(info.path / "data.arrow") // 2)
    with pytest.raises(CorruptCacheError, match="truncated or edited"):
        StreamCache.open(truncated)

    newer = tmp_path / "newer"
    shutil.copytree(info.path, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["format_version"] = 2
    (newer / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidArgumentError, match="format version 2.*upgrade batchcorder"):
        StreamCache.open(newer)


def test_an_edited_value_fails_the_read_of_its_batch(saved, tmp_path):
    data, info = saved
    edited = tmp_path / "edited"
    shutil.copytree(info.path, edited)
    raw = bytearray((edited / "data.arrow").read_bytes())
    needle = "name-5555".encode()
    at = raw.find(needle)
    raw[at : at + len(needle)] = b"NAME-5555"
    (edited / "data.arrow").write_bytes(bytes(raw))
    with StreamCache.open(edited) as cache:
        reader = cache.reader()
        before = [next(reader) for _ in range(5)]
        assert pa.Table.from_batches(before) == data.slice(0, 5_000)
        with pytest.raises(CorruptCacheError, match="does not match its checksum"):
            next(reader)
    # verify=False trusts the bytes: the edit shows, and nothing crashes.
    with StreamCache.open(edited, verify=False) as cache:
        names = pa.table(cache).column("name").to_pylist()
        assert names[5555] == "NAME-5555"
    # The default checks only a file modified since its save: put the time back and the
    # edit goes unseen, except with verify=True.
    saved_ns = json.loads((edited / "manifest.json").read_text())["data_modified_ns"]
    os.utime(edited / "data.arrow", ns=(saved_ns, saved_ns))
    with StreamCache.open(edited) as cache:
        assert pa.table(cache).column("name")[5555].as_py() == "NAME-5555"
    with StreamCache.open(edited, verify=True) as cache:
        with pytest.raises(CorruptCacheError, match="does not match its checksum"):
            list(cache)


def test_persist_refuses_a_taken_path_and_keeps_its_files(tmp_path):
    cache = StreamCache(pa.table({"x": [1, 2]}))
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "data.arrow").write_text("not ours")
    with pytest.raises(InvalidArgumentError, match="it is a file"):
        cache.persist(a_file)
    with pytest.raises(InvalidArgumentError, match="not empty"):
        cache.persist(theirs)
    with pytest.raises(DiskError) as info:
        cache.persist(tmp_path / "missing" / "deeper")
    assert isinstance(info.value, FileNotFoundError)
    assert a_file.read_text() == "mine" and (theirs / "data.arrow").read_text() == "not ours"
    assert sorted(os.listdir(tmp_path)) == ["file.txt", "theirs"]
    assert pa.table(cache).num_rows == 2  # still usable


def test_two_processes_persisting_to_one_path_leave_one_whole_save(tmp_path):
    target = str(tmp_path / "race")
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        outcomes = list(pool.map(persist_to, [(target, 200_000)] * 2, timeout=WORKER_SECONDS))
    assert sorted(o.split(":")[0] for o in outcomes) == ["refused", "saved"], outcomes
    # The loser saw the winner's save at its start ("not empty") or at its end.
    refused = next(o for o in outcomes if o.startswith("refused"))
    assert "another save to the same path finished first" in refused or "not empty" in refused
    assert os.listdir(tmp_path) == ["race"]
    assert open_and_sum(target) == sum(range(200_000))


def test_persist_after_eviction_says_why(tmp_path):
    cache = StreamCache(single_use(table(), chunk=5_000), max_readers=1)
    assert pa.table(cache).num_rows == 10_000
    with pytest.raises(InvalidArgumentError, match="max_readers already evicted 2 batches"):
        cache.persist(tmp_path / "late")
    assert os.listdir(tmp_path) == []


def test_closed_caches_refuse_persist_and_pickle(tmp_path):
    cache = StreamCache(pa.table({"x": [1]}), disk_path=tmp_path, disk_capacity=1 << 20)
    cache.close()
    with pytest.raises(ValueError, match="closed"):
        cache.persist(tmp_path / "after")
    with pytest.raises(ValueError, match="closed"):
        pickle.dumps(cache)


def test_persist_path_saves_as_the_source_is_read_in_bounded_memory(tmp_path):
    data = table(50_000)
    target = tmp_path / "as-read"
    with StreamCache(single_use(data), max_readers=1, persist_path=target) as cache:
        assert not target.exists()
        assert sum_ids(cache) == sum(range(50_000))
        assert cache.stats().batches_evicted == 50 and cache.stats().memory_bytes == 0
        # Saved whole although every batch left memory, and it pickles by reference.
        assert pa.table(pickle.loads(pickle.dumps(cache))) == data
    assert pa.ipc.open_file(target / "data.arrow").read_all() == data


def test_persist_path_leaves_nothing_when_the_source_fails_or_the_cache_closes(tmp_path):
    def failing():
        yield pa.record_batch({"x": [1, 2]})
        raise RuntimeError("source broke")

    source = pa.RecordBatchReader.from_batches(pa.schema([("x", pa.int64())]), failing())
    cache = StreamCache(source, persist_path=tmp_path / "failed")
    with pytest.raises(RuntimeError, match="source broke"):
        cache.ingest_all()
    closed = StreamCache(single_use(table()), persist_path=tmp_path / "closed")
    next(iter(closed))
    closed.close()
    assert os.listdir(tmp_path) == []
    # A taken path is refused before the source is read.
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    reader = single_use(table())
    with pytest.raises(InvalidArgumentError, match="not empty"):
        StreamCache(reader, persist_path=tmp_path / "taken")
    assert reader.read_all().num_rows == 10_000
