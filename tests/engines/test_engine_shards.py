"""How many read tasks each engine plans, and what each shard holds."""

from __future__ import annotations

import pyarrow as pa

from batchcorder import StreamCache
from batchcorder.flight import CacheServer

TABLE = pa.table({"x": range(50), "y": [str(i) for i in range(50)]})


def served() -> tuple[StreamCache, CacheServer]:
    cache = StreamCache(TABLE.to_reader(max_chunksize=10))  # 5 batches
    cache.ingest_all()  # finished: the server reports its batch count
    return cache, CacheServer({"t": cache})


def test_ray_plans_one_task_per_batch_when_the_count_is_known(ray_session):
    from batchcorder.ray import read_cache

    cache, server = served()
    with cache, server:
        dataset = read_cache(server.location, "t")
        assert dataset.sum("x") == sum(range(50))
        assert cache.stats().readers_created == 5


def test_ray_tasks_beyond_the_batches_give_empty_shards_with_the_schema(ray_session):
    import ray

    from batchcorder.ray import read_cache

    cache, server = served()
    with cache, server:
        tables = ray.get(read_cache(server.location, "t", shards=7).to_arrow_refs())
        assert sorted(t.num_rows for t in tables if t.num_rows) == [10] * 5
        assert all(t.schema.equals(TABLE.schema) for t in tables)
        assert cache.stats().readers_created == 7


def test_dask_partitions_are_shards_and_fewer_columns_are_read_as_asked(dask_client, tmp_path):
    from batchcorder.dask import read_cache

    with StreamCache(TABLE.to_reader(max_chunksize=10)) as cache:
        saved = cache.persist(tmp_path / "save")
    frame = read_cache(saved.path)
    assert frame.npartitions == 5  # the default, 8, capped by the 5 batches
    assert frame.partitions[1].x.compute().tolist() == list(range(10, 20))
    only_x = frame[["x"]].compute()
    assert list(only_x.columns) == ["x"] and sorted(only_x.x.tolist()) == list(range(50))
    assert read_cache(saved.path, shards=2).partitions[1].x.compute().tolist() == [
        *range(10, 20), *range(30, 40)]
