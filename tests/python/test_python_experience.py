"""Named constructors, len(), reprs, context managers, stats, progress and logging. The
README's and docs' blocks are run by test_docs.py."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import sys

import pyarrow as pa
import pytest

from batchcorder import CacheStats, StreamCache


def table(batches: int = 5, rows: int = 100) -> pa.Table:
    return pa.Table.from_batches(
        [pa.record_batch({"id": list(range(b * rows, (b + 1) * rows))}) for b in range(batches)]
    )


def test_in_memory_and_on_disk(tmp_path):
    memory = StreamCache.in_memory(table(), capacity=1 << 20, max_readers=2)
    assert pa.table(memory).equals(table()) and memory.max_readers == 2
    with pytest.raises(MemoryError, match="memory_capacity"):
        StreamCache.in_memory(table(), capacity=10).ingest_all()

    with StreamCache.on_disk(table(), tmp_path / "spill", 1 << 20, memory_capacity=0) as disk:
        assert pa.table(disk).equals(table())
        assert disk.stats().disk_bytes > 0 and disk.stats().memory_bytes == 0
        assert "tier=memory+disk" in repr(disk) and "disk_bytes=" in repr(disk)
    assert os.listdir(tmp_path / "spill") == []
    with pytest.raises(ValueError, match="write_policy"):
        StreamCache.on_disk(table(), str(tmp_path), 1 << 20, write_policy="sometimes")


def test_len_needs_an_exhausted_upstream():
    cache = StreamCache(table(4).to_reader())
    with pytest.raises(TypeError, match=r"ingest_all\(\)"):
        len(cache)
    cache.ingest_all()
    assert len(cache) == 4


def test_reprs_show_the_key_fields():
    cache = StreamCache(table(3).to_reader())
    text = repr(cache)
    for part in ("ingested=0", "exhausted=False", "schema=(id: int64)", "tier=memory", "memory_bytes="):
        assert part in text, text
    reader = cache.reader()
    next(reader)
    assert re.search(r"position=1 closed=False schema=\(id: int64\)", repr(reader))
    list(reader)
    assert "closed" in repr(reader)
    view = cache.cast(pa.schema([("id", pa.int32())]))
    assert "target=(id: int32)" in repr(view)


def test_reader_context_manager_releases_it():
    cache = StreamCache(table())
    with cache.reader() as reader:
        next(reader)
        assert cache.stats().readers_live == 1
    assert reader.closed and cache.stats().readers_live == 0


def test_stats_is_a_frozen_dataclass():
    cache = StreamCache(table(2))
    cache.ingest_all()
    stats = cache.stats()
    assert isinstance(stats, CacheStats) and dataclasses.is_dataclass(stats)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.rows_ingested = 0  # type: ignore[misc]
    assert {f.name for f in dataclasses.fields(stats)} >= {
        "batches_ingested", "rows_ingested", "memory_bytes", "disk_bytes", "batches_evicted",
        "segments_deleted", "readers_live", "readers_created", "upstream_exhausted",
        "upstream_wait_seconds",
    }


def test_callback_sees_every_batch():
    cache = StreamCache(table(4).to_reader())
    seen: list[CacheStats] = []
    assert cache.ingest_all(callback=seen.append) == 4
    assert [s.batches_ingested for s in seen] == [1, 2, 3, 4]
    assert [s.rows_ingested for s in seen] == [100, 200, 300, 400]


def test_progress_bar_shows_rows_and_total(capsys):
    cache = StreamCache(table(4))  # a Table: its length is known
    assert cache.ingest_all(progress=True) == 4
    err = capsys.readouterr().err
    assert "400/400" in err and "rows" in err and "batches=4" in err


def test_progress_without_tqdm_names_the_extra():
    script = (
        "import sys; sys.modules['tqdm'] = None; sys.modules['tqdm.auto'] = None\n"
        "import pyarrow as pa; from batchcorder import StreamCache\n"
        "try:\n"
        "    StreamCache(pa.table({'x': [1]})).ingest_all(progress=True)\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "ImportError:" in out.stdout and "batchcorder[progress]" in out.stdout


def test_spills_evictions_and_deletions_are_logged_at_debug(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="batchcorder")
    cache = StreamCache(
        table(50, 1000).to_reader(), memory_capacity=0, disk_path=tmp_path,
        disk_capacity=1 << 30, max_readers=1, segment_bytes=16 << 10,
    )
    assert sum(b.num_rows for b in cache.reader()) == 50_000
    cache.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "batchcorder"]
    assert any(m.startswith("spilled") for m in messages), messages
    assert any(m.startswith("evicted") for m in messages), messages
    assert any(m.startswith("deleted") and "segments" in m for m in messages), messages
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "batchcorder")
