"""Every Arrow type family of tests/python/test_types.py's catalogue, through Ray Data and
Dask, from a cache served over Flight and from a save, compared with the source.

Each source batch carries a `row` column (its global row number), so the rows an engine
returns in shard order are put back in the source's order before the comparison. What an
engine cannot carry as it is, it converts or refuses in the way `CONVERTED` says, and the
test asserts exactly that, so a change in either engine shows up here.
"""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pytest
from test_types import CATALOGUE, NAMES, TaggedType, make_batches

from batchcorder import StreamCache
from batchcorder.flight import CacheServer

SHARDS = 3
ROWS = [40, 7, 1, 40, 12, 40, 3]  # seven batches: shards of three, two and two


def has_own_extension(type_: pa.DataType) -> bool:
    """Whether a test-defined extension type sits in `type_` (only a process that
    registered it reads it back as itself; the workers did not)."""
    if isinstance(type_, TaggedType):
        return True
    if isinstance(type_, pa.BaseExtensionType):
        return has_own_extension(type_.storage_type)
    return any(has_own_extension(type_.field(i).type) for i in range(type_.num_fields))


COLUMNS = [name for name in NAMES if not has_own_extension(CATALOGUE[name].type)]


def source_batches() -> tuple[pa.Schema, list[pa.RecordBatch]]:
    schema, batches = make_batches(COLUMNS, ROWS, "shared", seed=31)
    schema = schema.append(pa.field("row", pa.int64(), nullable=False))
    start, out = 0, []
    for batch in batches:
        rows = pa.array(range(start, start + batch.num_rows), pa.int64())
        out.append(pa.RecordBatch.from_arrays([*batch.columns, rows], schema=schema))
        start += batch.num_rows
    return schema, out


SCHEMA, BATCHES = source_batches()
TABLE = pa.Table.from_batches(BATCHES, SCHEMA)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Iterator[dict[str, tuple]]:
    """The same stream as a served cache and as a save: (source, name) for read_cache."""
    cache = StreamCache(pa.RecordBatchReader.from_batches(SCHEMA, BATCHES))
    saved = cache.persist(tmp_path_factory.mktemp("types") / "save")
    with cache, CacheServer({"types": cache}) as server:
        yield {"flight": (server.location, "types"), "save": (str(saved.path), None)}


def in_source_order(table: pa.Table) -> pa.Table:
    """`table`'s runs of consecutive rows (each a source batch, or several) put back in
    the source's order by slicing, which every type allows (`take` does not)."""
    rows = table.column("row").to_pylist()
    starts = [i for i in range(len(rows)) if i == 0 or rows[i] != rows[i - 1] + 1]
    runs = sorted(zip(starts, [*starts[1:], len(rows)]), key=lambda run: rows[run[0]])
    return pa.concat_tables([table.slice(start, end - start) for start, end in runs])


def differing(got: pa.Table) -> dict[str, str]:
    """The columns of `got` that are not the source's, with what they became."""
    got = in_source_order(got)
    assert got.num_rows == TABLE.num_rows
    out = {}
    for field in SCHEMA:
        column = got.column(field.name)
        if column.type != field.type or not column.equals(TABLE.column(field.name)):
            out[field.name] = str(column.type)
    return out


# What each engine gives for a column it does not carry as it is (name: its type there).
# Ray carries every one; Dask's meta needs pyarrow's `take`, which view and run-end
# encoded types lack, and pickle drops a map's keys_sorted, so
# batchcorder.dask.carried_type converts them (values unchanged,
# as test_dask_conversions_keep_the_values checks).
CONVERTED: dict[str, dict[str, str]] = {
    "ray": {},
    "dask": {
        **{name: "large_binary" for name in COLUMNS if CATALOGUE[name].type == pa.binary_view()},
        **{name: "large_string" for name in COLUMNS if CATALOGUE[name].type == pa.string_view()},
        **{name: str(CATALOGUE[name].type.value_type) for name in COLUMNS
           if pa.types.is_run_end_encoded(CATALOGUE[name].type)},
        "map_keys_sorted": "map<string, int64>",
    },
}


@pytest.mark.parametrize("kind", ["flight", "save"])
def test_ray_carries_every_type_family(ray_session, sources, kind):
    import ray

    from batchcorder.ray import read_cache

    where, name = sources[kind]
    dataset = read_cache(where, name, shards=SHARDS)
    assert dataset.schema().base_schema == SCHEMA.remove_metadata() or dataset.schema().base_schema.equals(SCHEMA)
    tables = [ray.get(ref) for ref in dataset.to_arrow_refs()]
    got = pa.concat_tables(tables)
    assert differing(got) == CONVERTED["ray"]


@pytest.mark.parametrize("kind", ["flight", "save"])
def test_dask_carries_every_type_family(dask_client, sources, kind):
    from batchcorder.dask import read_cache

    where, name = sources[kind]
    frame = read_cache(where, name, shards=SHARDS)
    assert frame.npartitions == SHARDS
    assert list(frame.columns) == SCHEMA.names
    got = frame.compute()
    assert differing(pa.Table.from_pandas(got, preserve_index=False)) == CONVERTED["dask"]


def test_dask_conversions_keep_the_values(dask_client, sources):
    """The columns Dask gets in another type hold the same values."""
    from batchcorder.dask import read_cache

    got = in_source_order(pa.Table.from_pandas(read_cache(*sources["save"], shards=SHARDS).compute(),
                                               preserve_index=False))
    for name in CONVERTED["dask"]:
        assert got.column(name).to_pylist() == TABLE.column(name).to_pylist(), name
