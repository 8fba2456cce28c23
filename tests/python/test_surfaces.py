"""One type matrix over every surface (issue 26, item 1): every type case, through every
way a user reads a cache back, gives exact data or a refusal that pyarrow itself makes.

The matrix
----------
``SURFACES`` x ``CASES``: 31 surfaces x 31 type cases = 961 cases, in one parametrized
test (``test_every_type_case_through_every_surface``, ids ``CASE-SURFACE``).

* ``SURFACES`` is the one list of surfaces; a surface added later joins by adding one
  entry. A ``Surface`` is a name; a function that takes the source schema and batches and
  a ``Context`` (the case's name, a fresh directory, an ``ExitStack`` closed after the
  checks, the module's shared processes) and returns a test_types ``Replay``, what a user
  reads back; and the pyarrow writers its data goes through. The list holds every cache
  mode of test_types' ``MODES`` (memory; the disk tier alone with no compression, LZ4 and
  Zstd; two interleaved readers; 4 KiB segments deleted under two readers; a cast view to
  the stream's own schema), then the disk tier writing on eviction with each codec; a
  generator of the batches as the source;
  ``persist`` then ``StreamCache.open`` with ``verify`` None (on an untouched save, and on
  one whose data file's mtime moved, which turns checking on), True and False; a save
  opened after a first read noted its validation (validated.json), so the UTF-8 pass is
  skipped; the
  save's ``data.arrow`` read by pyarrow alone; ``persist_path`` (saved as it is read),
  then the save opened; a pickled reference, of a persisted cache and of a disk-backed
  cache (which saves itself to be shared), read in a spawn worker; Flight DoGet (and
  GetSchema) from an in-process ``CacheServer``; and from the ``batchcorder-flight``
  command serving a save of every case, whole and as three shards of one seeded
  shuffle, each its own DoGet ticket. Random access: ``cache[i]`` for every batch
  and ``cache.take`` of a permutation of every row (pyarrow's ``Table.take`` the
  oracle, or a slice per row where pyarrow has no take for the type), in memory, on the
  disk tier with each write policy and on an opened save. Then the reordering readers (issue 30): a
  shuffled reader; a windowed shuffle with shuffled rows over an opened save; three
  shuffled shards over the disk tier; two shards in stream order. Their batches (and
  rows) are put back where they came from, as learnt from twin caches of the same shape,
  then compared exactly (a run-end encoded column whose rows moved, by value).
* ``CASES`` are streams of columns of test_types' ``CATALOGUE``. Every family, its columns
  without a dictionary anywhere in their type in one stream, as consecutive slices of
  one array per column (batches of 7, 300 and 1 rows; 300 for the codecs to compress).
  Dictionary shapes: the catalogue's dictionary columns with one dictionary for the
  stream, and with one replaced in every batch; a delta (each batch's dictionary extends
  the previous one's); the same values in a new dictionary array every batch; the
  dictionaries nested in lists, structs, unions, run-end encoded and extension columns
  and in other dictionaries, one for the stream and replaced every batch. Zero-row
  batches first, in the middle and last, of the columns without dictionaries and of the
  dictionary columns apart. A stream with no batches; zero-column batches.

The rule
--------
Exact data: every read is validated (``validate(full=True)``) and checked as test_types
checks a replay (schemas with metadata; batch by batch, so batch boundaries and
zero-row batches, on every surface here, since each keeps them; the exported C schema
where the surface exports one); besides, every dictionary of every batch, nested ones
too, must equal its source's, which ``RecordBatch.equals`` does not check for a zero-row
array. Or a refusal that pyarrow itself makes: the test runs pyarrow's own writer on
the same batches (``pa.ipc.new_file`` where the surface writes an Arrow IPC file,
``pa.ipc.new_stream`` for Flight). Where one refuses the stream, the surface may refuse
it too, with ``InvalidArgumentError`` (or, where it reaches pyarrow through a C stream,
``ArrowInvalid`` with its text) naming the batch pyarrow refused and saying what to do;
if it does not refuse, its data must be exact. pyarrow's file writer refuses a replaced
dictionary, and a delta too with its default options; the matrix takes it with
``emit_dictionary_deltas``, the most it accepts, so a save must hold a delta. pyarrow's
file reader gives every batch the file's last dictionary, deltas applied, so the save
read by pyarrow alone is compared with what pyarrow reads of its own file of the stream.

One spawn worker, one in-process Flight server and one command-line process serve the
whole module, each started on first use.

Both findings of issue 26 that this matrix showed on bbdd002 are fixed: Flight serves
dictionary columns, and a zero-row batch keeps its dictionaries.
"""

from __future__ import annotations

import functools
import os
import pickle
import random
import re
import signal
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.flight as fl
import pytest
from conftest import listening_location, temporary_directory, wait_until_noteable
from test_types import (
    BIG,
    CATALOGUE,
    MODES,
    NAMES,
    SCHEMA_METADATA,
    Mode,
    Replay,
    _describe,
    check_replay,
    make_batches,
    open_cache,
    read_mode,
    read_passes,
)

from batchcorder import InvalidArgumentError, StreamCache
from batchcorder.flight import CacheServer, connect, ticket

CALL = fl.FlightCallOptions(timeout=60)
WAIT = 120.0  # seconds a worker, the command or a server may take before the test fails

Batches = List[pa.RecordBatch]


# -- the type cases ---------------------------------------------------------------------


def has_dictionary(type_: pa.DataType) -> bool:
    """Whether a dictionary sits anywhere in `type_`."""
    if pa.types.is_dictionary(type_):
        return True
    if isinstance(type_, pa.BaseExtensionType):
        return has_dictionary(type_.storage_type)
    return any(has_dictionary(type_.field(i).type) for i in range(type_.num_fields))


PLAIN = [name for name in NAMES if not has_dictionary(CATALOGUE[name].type)]
FLAT_DICTIONARIES = [name for name in NAMES if CATALOGUE[name].family == "dictionary"]
NESTED_DICTIONARIES = [
    name for name in NAMES if has_dictionary(CATALOGUE[name].type) and name not in FLAT_DICTIONARIES
]
FAMILIES = sorted({CATALOGUE[name].family for name in PLAIN})
SIZES = [7, 300, 1]


def _dictionary_columns(
    batch_dictionaries: Sequence[Sequence[Sequence[object]]],
    value_types: Sequence[pa.DataType],
    seed: int,
) -> Tuple[pa.Schema, Batches]:
    """One dictionary column per value type; batch `i` of column `c` has the dictionary
    `batch_dictionaries[i][c]`, each its own array, and random codes into it."""
    rnd = random.Random(seed)
    schema = pa.schema(
        [pa.field(f"d{c}", pa.dictionary(pa.int16(), t)) for c, t in enumerate(value_types)],
        metadata=SCHEMA_METADATA,
    )
    batches = []
    for rows, per_column in zip([5, 9, 3], batch_dictionaries):
        arrays = []
        for values, value_type in zip(per_column, value_types):
            codes = [None if rnd.random() < 0.2 else rnd.randrange(len(values)) for _ in range(rows)]
            dictionary = pa.array(values, value_type)  # a new array for every batch
            arrays.append(pa.DictionaryArray.from_arrays(pa.array(codes, pa.int16()), dictionary))
        batches.append(pa.record_batch(arrays, schema=schema))
    return schema, batches


WORDS = ["red", "green", "blue", "cyan", "magenta", "a much longer word", ""]
NUMBERS = [7, -3, 1 << 40, 0, 12, -(1 << 62)]
VALUE_TYPES = [pa.string(), pa.int64()]


def dictionary_delta() -> Tuple[pa.Schema, Batches]:
    """Each batch's dictionary is the previous one's with values added at the end."""
    return _dictionary_columns([[WORDS[:n], NUMBERS[:n]] for n in (2, 4, 6)], VALUE_TYPES, seed=1)


def dictionary_same_values() -> Tuple[pa.Schema, Batches]:
    """Every batch has a new dictionary array with the same values."""
    return _dictionary_columns([[WORDS[:5], NUMBERS[:5]]] * 3, VALUE_TYPES, seed=2)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Tuple[pa.Schema, Batches]]


def _catalogue_case(
    name: str, names: Sequence[str], sizes: Sequence[int], form: str, seed: int
) -> Case:
    """Columns of the catalogue in a form of test_types.make_batches."""
    return Case(name, lambda: make_batches(names, sizes, form, seed))


def _family(family: str) -> List[str]:
    return [name for name in PLAIN if CATALOGUE[name].family == family]


CASES: List[Case] = [
    *(
        _catalogue_case(f"family-{family.replace(' ', '-')}", _family(family), SIZES, "shared", seed)
        for seed, family in enumerate(FAMILIES)
    ),
    _catalogue_case("dictionary-one-for-the-stream", FLAT_DICTIONARIES, SIZES, "shared", 40),
    _catalogue_case("dictionary-replaced-every-batch", FLAT_DICTIONARIES, [7, 30, 1], "fresh", 41),
    Case("dictionary-delta", dictionary_delta),
    Case("dictionary-same-values-new-array", dictionary_same_values),
    _catalogue_case(
        "nested-dictionary-one-for-the-stream", NESTED_DICTIONARIES, SIZES, "shared", 42
    ),
    _catalogue_case(
        "nested-dictionary-replaced-every-batch", NESTED_DICTIONARIES, [7, 30, 1], "fresh", 43
    ),
    *(
        _catalogue_case(f"{what}-zero-rows-{where}", names, sizes, "shared", seed)
        for seed, (what, names) in enumerate(
            [("plain", PLAIN), ("dictionary", FLAT_DICTIONARIES + NESTED_DICTIONARIES)], start=50
        )
        for where, sizes in [("first", [0, 6, 9]), ("middle", [6, 0, 9]), ("last", [6, 9, 0])]
    ),
    _catalogue_case("no-batches", NAMES, [], "shared", 60),
    _catalogue_case("zero-columns", [], [3, 0, 2], "fresh", 61),
]
CASE_NAMES = [case.name for case in CASES]


@functools.lru_cache(maxsize=None)
def stream(name: str) -> Tuple[pa.Schema, Batches]:
    """The case's schema and batches, built once, so every surface gets the same ones."""
    return CASES[CASE_NAMES.index(name)].build()


def single_use(schema: pa.Schema, batches: Batches) -> pa.RecordBatchReader:
    return pa.RecordBatchReader.from_batches(schema, iter(batches))


# -- what pyarrow's own writers do with a stream ------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """pyarrow's `writer` refused the stream when given batch `batch`."""

    writer: str
    batch: int
    error: Exception


PyarrowWriter = Callable[[pa.Schema, Batches], Optional[Refusal]]


def _pyarrow_writes(writer: str, open_writer) -> PyarrowWriter:
    """Write a stream with one of pyarrow's IPC writers: None, or where it refused."""

    def run(schema: pa.Schema, batches: Batches) -> Optional[Refusal]:
        sink = pa.BufferOutputStream()
        index = 0
        try:
            with open_writer(sink, schema) as out:
                for index, batch in enumerate(batches):
                    out.write_batch(batch)
                index = len(batches)  # refused at the end, if at all
        except pa.ArrowException as err:
            return Refusal(writer, index, err)
        return None

    run.__name__ = writer
    return run


# The file writer as permissive as pyarrow makes it: with emit_dictionary_deltas, a
# dictionary that a batch extends is written as a delta (the default refuses it).
DELTAS = pa.ipc.IpcWriteOptions(emit_dictionary_deltas=True)
ipc_file = _pyarrow_writes(
    "pa.ipc.new_file", lambda sink, schema: pa.ipc.new_file(sink, schema, options=DELTAS)
)


def pyarrow_file_round_trip(schema: pa.Schema, batches: Batches) -> List[pa.RecordBatch]:
    """What pyarrow reads back of its own IPC file of the stream."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, schema, options=DELTAS) as out:
        for batch in batches:
            out.write_batch(batch)
    reader = pa.ipc.open_file(sink.getvalue())
    return [reader.get_batch(i) for i in range(reader.num_record_batches)]
ipc_stream = _pyarrow_writes("pa.ipc.new_stream", pa.ipc.new_stream)


# -- the surfaces -------------------------------------------------------------------------


@dataclass
class Context:
    """What a surface's function gets besides the stream."""

    case: str
    directory: Path  # fresh for each test, deleted after it
    stack: ExitStack  # closed after the checks
    shared: "Shared"


ReadFunction = Callable[[pa.Schema, Batches, Context], Replay]


@dataclass(frozen=True)
class Surface:
    name: str
    read: ReadFunction
    # pyarrow's writers the data goes through: a stream one of them refuses may be refused.
    pyarrow_writers: Tuple[PyarrowWriter, ...] = ()


def mode_surface(name: str, mode: Mode) -> Surface:
    return Surface(
        name,
        lambda schema, batches, context: read_mode(
            schema, batches, mode, str(context.directory), context.stack
        ),
    )


def _expect_counts(replay: Replay, saved, batches: Batches) -> None:
    def counts() -> None:
        assert (saved.batches, saved.rows) == (len(batches), sum(b.num_rows for b in batches))

    replay.checks.append(counts)


def persist_then_open(verify: Optional[bool], touch: bool = False) -> ReadFunction:
    """``persist`` then ``StreamCache.open(verify=verify)``; `touch` moves the data file's
    mtime first, which makes the default verification check every batch."""

    def read(schema: pa.Schema, batches: Batches, context: Context) -> Replay:
        cache = context.stack.enter_context(StreamCache(single_use(schema, batches)))
        saved = cache.persist(context.directory / "saved")
        if touch:
            data = saved.path / "data.arrow"
            status = data.stat()
            os.utime(data, ns=(status.st_atime_ns, status.st_mtime_ns + 2_000_000_000))
        opened = context.stack.enter_context(StreamCache.open(saved.path, verify=verify))
        replay = Replay()
        read_passes(opened, replay, "the opened save: ")
        _expect_counts(replay, saved, batches)
        return replay

    return read


def read_save_with_pyarrow(schema: pa.Schema, batches: Batches, context: Context) -> Replay:
    """The save's data file is plain Arrow IPC: pyarrow alone reads it."""
    with StreamCache(single_use(schema, batches)) as cache:
        saved = cache.persist(context.directory / "saved")
    reader = pa.ipc.open_file(saved.path / "data.arrow")
    replay = Replay()
    replay.schemas.append(("pa.ipc.open_file's schema", reader.schema))
    got = [reader.get_batch(i) for i in range(reader.num_record_batches)]
    whole = reader.read_all()

    def as_pyarrow_reads_its_own_file() -> None:
        # pyarrow's file reader gives each batch the file's last dictionary, deltas
        # applied: so the batches are what it reads of its own file of the stream.
        own = pyarrow_file_round_trip(schema, batches)
        where = "the save's batches, read by pyarrow"
        assert len(got) == len(own), where
        for index, (mine, its) in enumerate(zip(got, own)):
            mine.validate(full=True)
            assert mine.equals(its, check_metadata=True), (where, index)
        assert_same_dictionaries(got, own, where)
        assert whole.equals(pa.Table.from_batches(own, schema), check_metadata=True)

    replay.checks.append(as_pyarrow_reads_its_own_file)
    _expect_counts(replay, saved, batches)
    return replay


def save_as_read_then_open(schema: pa.Schema, batches: Batches, context: Context) -> Replay:
    """``persist_path``: the cache saves the stream as its readers go; then the save."""
    path = context.directory / "saved"
    cache = context.stack.enter_context(StreamCache(single_use(schema, batches), persist_path=path))
    replay = Replay()
    read_passes(cache, replay, "the cache saving as it reads: ")
    opened = context.stack.enter_context(StreamCache.open(path))
    read_passes(opened, replay, "its save, opened: ")
    return replay


# A spawn worker imports this function from this module.
def read_in_worker(blob: bytes) -> dict:
    """Unpickle a cache reference, read it as ``read_passes`` does, and send every read
    back as Arrow IPC, one stream per batch, so each batch keeps its own schema and
    dictionaries (pickling a pyarrow type loses a map's keys_sorted)."""
    cache = pickle.loads(blob)
    replay = Replay()
    with cache:
        read_passes(cache, replay, "the spawn worker: ")

        def ipc(schema: pa.Schema, batches: Batches) -> bytes:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, schema) as writer:
                for batch in batches:
                    writer.write_batch(batch)
            return sink.getvalue().to_pybytes()

        reads = []
        for where, got in replay.reads:
            if isinstance(got, pa.Table):
                reads.append((where, [ipc(got.schema, got.to_batches())], True))
            else:
                reads.append((where, [ipc(batch.schema, [batch]) for batch in got], False))
    return {
        "schemas": [(where, schema.serialize().to_pybytes()) for where, schema in replay.schemas],
        "reads": reads,
        "c_schema": replay.c_schema,
    }


def _replay_from_worker(sent: dict) -> Replay:
    replay = Replay(c_schema=sent["c_schema"])
    for where, data in sent["schemas"]:
        replay.schemas.append((where, pa.ipc.read_schema(pa.py_buffer(data))))
    for where, streams, table in sent["reads"]:
        if table:
            replay.reads.append((where, pa.ipc.open_stream(streams[0]).read_all()))
        else:
            got = [pa.ipc.open_stream(data).read_next_batch() for data in streams]
            replay.reads.append((where, got))
    return replay


def pickled_to_spawn_worker(disk_backed: bool) -> ReadFunction:
    """A pickled reference read in a spawn worker: of a persisted cache, or of a
    disk-backed cache, which reads the rest of its source and saves itself to be shared."""

    def read(schema: pa.Schema, batches: Batches, context: Context) -> Replay:
        if disk_backed:
            cache = StreamCache(
                single_use(schema, batches), disk_path=context.directory / "spill", disk_capacity=BIG
            )
        else:
            cache = StreamCache(single_use(schema, batches))
        context.stack.enter_context(cache)
        if not disk_backed:
            cache.persist(context.directory / "saved")
        blob = pickle.dumps(cache)
        return _replay_from_worker(context.shared.in_worker(read_in_worker, blob))

    return read


def from_a_generator(schema: pa.Schema, batches: Batches, context: Context) -> Replay:
    """A generator of the batches as the source (``schema=`` given), as users hand one."""
    cache = context.stack.enter_context(StreamCache((b for b in batches), schema=schema))
    replay = Replay()
    read_passes(cache, replay, "a generator's cache: ")
    return replay


def read_flight(client, name: str, where: str) -> Replay:
    """What a Flight client gets: GetSchema's schema, and two DoGets batch by batch."""
    replay = Replay()
    descriptor = fl.FlightDescriptor.for_path(name)
    replay.schemas.append((f"{where}GetSchema", client.get_schema(descriptor, CALL).schema))
    for attempt in ("first", "second"):
        reader = client.do_get(ticket(name), CALL)
        replay.schemas.append((f"{where}DoGet's schema, {attempt} pass", reader.schema))
        got = [chunk.data for chunk in reader]
        replay.reads.append((f"{where}DoGet's batches, {attempt} pass", got))
    return replay


def noted_save_then_open(schema: pa.Schema, batches: Batches, context: Context) -> Replay:
    """The module's save of the case, opened once its validation is noted: a first
    process-wide read validates every batch and writes validated.json, and the open after
    it skips the UTF-8 pass."""
    saves, refused = context.shared.saves()
    if context.case in refused:
        raise refused[context.case]
    path = saves[context.case]
    wait_until_noteable(path)
    with StreamCache.open(path) as first:
        for _ in first:
            pass
    note = path / "validated.json"
    replay = Replay()
    cache = context.stack.enter_context(StreamCache.open(path))
    # What the open decided, as stats() shows it: the note trusted.
    validation = cache.stats().validation
    replay.checks.append(lambda: _assert_noted(note, batches, validation))
    read_passes(cache, replay, "the noted save: ")
    return replay


def _assert_noted(note: Path, batches: Batches, validation: str) -> None:
    # A stream with no batches has nothing to validate, so nothing to note: it is
    # validated in full (there is nothing to validate).
    assert note.exists() == bool(batches), f"{note} exists: {note.exists()}"
    expected = "noted" if batches else "full"
    assert validation == expected, f"stats().validation is {validation!r}, not {expected!r}"


def flight_from_the_api(schema: pa.Schema, batches: Batches, context: Context) -> Replay:
    server, client = context.shared.flight()
    cache = context.stack.enter_context(StreamCache(single_use(schema, batches)))
    server.add(context.case, cache)
    context.stack.callback(server.remove, context.case)
    return read_flight(client, context.case, "CacheServer: ")


def flight_from_the_command(schema: pa.Schema, batches: Batches, context: Context) -> Replay:
    client, refused = context.shared.command()
    if context.case in refused:  # the save the command would serve was refused
        raise refused[context.case]
    return read_flight(client, context.case, "batchcorder-flight: ")


def pyarrow_take(schema: pa.Schema, batches: Batches, rows: List[int]) -> pa.Table:
    """The stream's `rows` as pyarrow gives them: ``Table.take``; where pyarrow has no
    take for a type (view types, run-end encoded, nested or null-holding dictionaries it
    cannot unify) or loses the row count (no columns), one pyarrow slice per row."""
    table = pa.Table.from_batches(batches, schema=schema)
    if schema:
        try:
            return table.take(pa.array(rows, pa.int64()))
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            pass
    return pa.Table.from_batches([b for row in rows for b in table.slice(row, 1).to_batches()], schema)


def assert_taken(taken: pa.RecordBatch, schema: pa.Schema, batches: Batches, rows: List[int]) -> None:
    """``cache.take(rows)`` against pyarrow's own take of the stream (``pyarrow_take``):
    the same schema, and the same values column by column; exactly, except that a column
    holding a dictionary is compared by its values, since one dictionary now covers rows
    of batches whose dictionaries differed."""
    where = "cache.take(a permutation of every row)"
    taken.validate(full=True)
    assert taken.schema.equals(schema, check_metadata=True), f"{where}: schema {taken.schema}"
    expected = pyarrow_take(schema, batches, rows)
    assert taken.num_rows == expected.num_rows == len(rows), where
    for index, field in enumerate(schema):
        got = pa.chunked_array([taken.column(index)], field.type)
        wanted = expected.column(index)
        same = got.to_pylist() == wanted.to_pylist() if has_dictionary(field.type) else got.equals(wanted)
        assert same, f"{where}: {field.name}: got {_describe(got)}, expected {_describe(wanted)}"


def random_access(storage: str) -> ReadFunction:
    """``cache[i]`` for every batch, from a fresh cache (each pulls up to its batch), then
    ``cache[i - n]``; and ``cache.take`` of a seeded permutation of every row, with
    pyarrow's own take as the oracle (``pyarrow_take``). In memory, on the disk tier alone
    (``memory_capacity=0``) with each write policy, or on a save opened with ``open``."""

    def read(schema: pa.Schema, batches: Batches, context: Context) -> Replay:
        if storage == "opened-save":
            with StreamCache(single_use(schema, batches)) as source:
                saved = source.persist(context.directory / "saved")
            cache = context.stack.enter_context(StreamCache.open(saved.path))
        else:
            mode = Mode() if storage == "memory" else Mode(disk=True, write_policy=storage)
            directory = str(context.directory)
            cache = context.stack.enter_context(open_cache(single_use(schema, batches), mode, directory))
        count = len(batches)
        replay = Replay()
        replay.reads.append(("cache[i] for each i", [cache[i] for i in range(count)]))
        replay.reads.append(("cache[i - n] for each i", [cache[i - count] for i in range(count)]))
        rows = list(range(sum(batch.num_rows for batch in batches)))
        random.Random(len(rows)).shuffle(rows)
        taken = cache.take(pa.array(rows, pa.int64()))
        replay.checks.append(lambda: assert_taken(taken, schema, batches, rows))
        return replay

    return read


def _twin_orders(batches: Batches, order: dict, shards: int) -> List[List[Tuple[int, List[int]]]]:
    """For each shard of a reader ordered by ``order``, where each batch it returns came
    from: its stream position and its rows' order. Read from caches of the same shape whose
    values are their positions: an order depends on the seed and the batch and row counts
    only (docs/training.md), never on the values."""
    def read(schema: pa.Schema, twin: List[pa.RecordBatch], index: int) -> List[pa.RecordBatch]:
        cache = StreamCache(pa.RecordBatchReader.from_batches(schema, iter(twin)))
        return list(cache.reader(**order, shard=(index, shards)))

    at, row = pa.schema([("at", pa.int64())]), pa.schema([("row", pa.int64())])
    one_row = [pa.record_batch([pa.array([p], pa.int64())], schema=at) for p in range(len(batches))]
    rows = [pa.record_batch([pa.array(range(b.num_rows), pa.int64())], schema=row) for b in batches]
    return [
        [
            (at.column(0)[0].as_py(), moved.column(0).to_pylist())
            for at, moved in zip(read(at, one_row, index), read(row, rows, index))
        ]
        for index in range(shards)
    ]


def _rows_put_back(batch: pa.RecordBatch, rows: List[int], source: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` whose row ``k`` came from row ``rows[k]`` of ``source``, in its rows' first
    order: each column taken by pyarrow, or as one-row slices concatenated where ``take``
    has no kernel for its type (a view type). A run-end encoded column's runs are its
    encoder's to choose once rows move, so it is compared by value and the source's kept."""
    at = {row: k for k, row in enumerate(rows)}
    order = [at[row] for row in range(len(rows))]
    columns = []
    for column, original in zip(batch.columns, source.columns):
        if pa.types.is_run_end_encoded(column.type):
            values = column.to_pylist()
            assert [values[k] for k in order] == original.to_pylist(), "rows moved, not changed"
            columns.append(original)
            continue
        try:
            columns.append(column.take(pa.array(order, pa.int64())))
        except pa.ArrowNotImplementedError:
            columns.append(pa.concat_arrays([column.slice(k, 1) for k in order]))
    if not columns:
        return batch
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


def _in_stream_order(batches: Batches, order: dict, shards: int, read_shard, replay: Replay) -> None:
    """Read every shard with ``read_shard(index)`` (its label, schema and batches) and put
    each batch back where it came from (its rows too), as learnt from twin caches of the
    same shape, so the data is compared exactly; the reads must be in another order than
    the stream's wherever the stream can be reordered."""
    placed: List[Optional[pa.RecordBatch]] = [None] * len(batches)
    returned: List[int] = []
    for index, came_from in enumerate(_twin_orders(batches, order, shards)):
        label, schema, got = read_shard(index)
        replay.schemas.append((label, schema))
        assert len(got) == len(came_from), f"{label}: {len(got)} batches, not {len(came_from)}"
        for batch, (position, rows) in zip(got, came_from):
            if rows != sorted(rows):
                batch = _rows_put_back(batch, rows, batches[position])
            placed[position] = batch
            returned.append(position)
    assert sorted(returned) == list(range(len(batches))), "every batch once"
    if len(batches) > 3 and order.get("shuffle") is not None:
        assert returned != sorted(returned), "a shuffle reorders"
    replay.reads.append(("batches put back in stream order", placed))


def reordered(order: dict, shards: int = 1, tier: str = "memory") -> ReadFunction:
    """A reader ordered by ``order`` (``shuffle``, ``shuffle_window``, ``shuffle_rows``),
    split into ``shards`` shard readers, over a cache in memory, on disk or opened from a
    save."""

    def read(schema: pa.Schema, batches: Batches, context: Context) -> Replay:
        source = single_use(schema, batches)
        if tier == "disk":
            cache = StreamCache(source, disk_path=context.directory / "spill", disk_capacity=1 << 30)
        else:
            cache = StreamCache(source)
        if tier == "opened":
            cache.persist(context.directory / "save")
            cache = StreamCache.open(context.directory / "save")
        context.stack.callback(cache.close)

        def read_shard(index: int):
            reader = cache.reader(**order, shard=(index, shards))
            return f"shard {index} of {shards}", reader.schema, list(reader)

        replay = Replay()
        _in_stream_order(batches, order, shards, read_shard, replay)
        return replay

    return read


def flight_shuffled_shards(schema: pa.Schema, batches: Batches, context: Context) -> Replay:
    """Three DoGets of the ``batchcorder-flight`` command, each a ticket naming a seed and
    one shard of three: the shards together are the stream, each batch once."""
    client, refused = context.shared.command()
    if context.case in refused:
        raise refused[context.case]

    def read_shard(index: int):
        reader = client.do_get(ticket(context.case, seed=8, shard=(index, 3)), CALL)
        return f"DoGet of shard {index} of 3, seed 8", reader.schema, [chunk.data for chunk in reader]

    replay = Replay()
    _in_stream_order(batches, {"shuffle": 8}, 3, read_shard, replay)
    return replay


SURFACES: List[Surface] = [
    *(mode_surface(name, mode) for name, mode in MODES.items()),
    *(
        mode_surface(
            f"disk-on-eviction{'-' + codec if codec else ''}",
            Mode(disk=True, compression=codec, write_policy="on_eviction"),
        )
        for codec in (None, "lz4", "zstd")
    ),
    Surface("memory-from-a-generator", from_a_generator),
    Surface("persist-open-verify-default", persist_then_open(None), (ipc_file,)),
    Surface("persist-open-verify-default-touched", persist_then_open(None, touch=True), (ipc_file,)),
    Surface("persist-open-verify-always", persist_then_open(True), (ipc_file,)),
    Surface("persist-open-verify-never", persist_then_open(False), (ipc_file,)),
    Surface("persist-open-noted", noted_save_then_open, (ipc_file,)),
    Surface("persist-read-by-pyarrow", read_save_with_pyarrow, (ipc_file,)),
    Surface("persist-path-then-open", save_as_read_then_open, (ipc_file,)),
    Surface("spawn-worker-persisted-reference", pickled_to_spawn_worker(disk_backed=False), (ipc_file,)),
    Surface("spawn-worker-disk-backed-reference", pickled_to_spawn_worker(disk_backed=True), (ipc_file,)),
    Surface("flight-cacheserver", flight_from_the_api, (ipc_stream,)),
    Surface("flight-command-line", flight_from_the_command, (ipc_file, ipc_stream)),
    Surface("flight-shuffled-shards", flight_shuffled_shards, (ipc_file, ipc_stream)),
    Surface("random-access-memory", random_access("memory")),
    Surface("random-access-disk-on-insertion", random_access("on_insertion")),
    Surface("random-access-disk-on-eviction", random_access("on_eviction")),
    Surface("random-access-opened-save", random_access("opened-save"), (ipc_file,)),
    Surface("shuffled-reader", reordered({"shuffle": 5})),
    Surface("shuffle-window-rows-opened", reordered({"shuffle": 6, "shuffle_window": 2, "shuffle_rows": True}, tier="opened"), (ipc_file,)),
    Surface("shuffled-shards-disk", reordered({"shuffle": 7}, shards=3, tier="disk")),
    Surface("shards-in-order", reordered({}, shards=2)),
]
SURFACE_NAMES = [surface.name for surface in SURFACES]


# -- the module's processes and servers ----------------------------------------------------


class Shared:
    """The module's long-lived helpers, each started on first use: one spawn worker (a
    spawn start costs about a second), one in-process Flight server and its client, and
    one ``batchcorder-flight`` process serving a save of every case."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._stack = ExitStack()
        self._pool: Optional[ProcessPoolExecutor] = None
        self._flight = None
        self._command = None
        self._saves = None

    def in_worker(self, function: Callable, argument: object):
        """`function(argument)` in the spawn worker."""
        if self._pool is None:
            pool = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
            self._pool = self._stack.enter_context(pool)
        try:
            return self._pool.submit(function, argument).result(WAIT)
        except BrokenProcessPool:  # the worker died: this case fails, the next gets a new one
            self._pool = None
            raise

    def flight(self):
        if self._flight is None:
            server = self._stack.enter_context(CacheServer({}))
            self._flight = (server, self._stack.enter_context(connect(server.location)))
        return self._flight

    def saves(self):
        """A save of every case, made once, by case name; and the cases persist refused."""
        if self._saves is None:
            saves, refused = {}, {}
            (self.directory / "saves").mkdir()
            for case in CASES:
                schema, batches = stream(case.name)
                path = self.directory / "saves" / case.name
                try:
                    with StreamCache(single_use(schema, batches)) as cache:
                        cache.persist(path)
                except Exception as err:  # re-raised by the case's test
                    refused[case.name] = err
                    continue
                saves[case.name] = path
            self._saves = (saves, refused)
        return self._saves

    def command(self):
        """A client of the command serving every case's save, and the saves refused."""
        if self._command is None:
            saves, refused = self.saves()
            location = self._start([f"{name}={path}" for name, path in saves.items()])
            self._command = (self._stack.enter_context(connect(location)), refused)
        return self._command

    def _start(self, sources: List[str]) -> str:
        log = open(self.directory / "command.log", "w")
        process = subprocess.Popen(
            [sys.executable, "-m", "batchcorder.flight", *sources],
            stdout=subprocess.PIPE, stderr=log, text=True,
        )

        def stop() -> None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()
            log.close()

        self._stack.callback(stop)
        return listening_location(
            process, lambda: (self.directory / "command.log").read_text(), WAIT
        )

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    helpers = Shared(tmp_path_factory.mktemp("surfaces"))
    yield helpers
    helpers.close()


# -- the rule -------------------------------------------------------------------------------


def dictionaries(array: pa.Array, path: str = "") -> List[Tuple[str, pa.Array]]:
    """Every dictionary in `array`, nested ones too, with where it is."""
    if isinstance(array, pa.ExtensionArray):
        return dictionaries(array.storage, path)
    if isinstance(array, pa.DictionaryArray):
        return [(path, array.dictionary)] + dictionaries(array.dictionary, f"{path}<dictionary>")
    if isinstance(array, pa.RunEndEncodedArray):
        return dictionaries(array.values, f"{path}<values>")
    if isinstance(array, pa.StructArray):
        fields = enumerate(array.type)
        return [d for i, f in fields for d in dictionaries(array.field(i), f"{path}.{f.name}")]
    if isinstance(array, pa.UnionArray):
        children = range(array.type.num_fields)
        return [d for i in children for d in dictionaries(array.field(i), f"{path}<{i}>")]
    if array.type.num_fields == 1:  # lists, list views, maps
        return dictionaries(array.values, f"{path}<values>")
    return []


def assert_same_dictionaries(got: Batches, expected: Batches, where: str) -> None:
    for index, (batch, source) in enumerate(zip(got, expected)):
        for column, field in enumerate(source.schema):
            if not has_dictionary(field.type):
                continue
            found = dictionaries(batch.column(column), field.name)
            wanted = dictionaries(source.column(column), field.name)
            assert [p for p, _ in found] == [p for p, _ in wanted], f"{where}: batch {index}"
            for (path, dictionary), (_, source_dictionary) in zip(found, wanted):
                assert dictionary.equals(source_dictionary), (
                    f"{where}: batch {index} ({batch.num_rows} rows), dictionary of {path}: got "
                    f"{_describe(dictionary)}, expected {_describe(source_dictionary)}"
                )


def check_surface(replay: Replay, schema: pa.Schema, batches: Batches) -> None:
    """Exact data: every read valid, equal to the source, dictionaries included."""
    for where, got in replay.reads:
        for item in [got] if isinstance(got, pa.Table) else got:
            item.validate(full=True)
    check_replay(replay, schema, batches)
    for where, got in replay.reads:
        if not isinstance(got, pa.Table):
            assert_same_dictionaries(got, batches, where)


def pyarrow_refusal(surface: Surface, schema: pa.Schema, batches: Batches) -> Optional[Refusal]:
    for writer in surface.pyarrow_writers:
        refusal = writer(schema, batches)
        if refusal is not None:
            return refusal
    return None


@pytest.mark.parametrize("surface", SURFACES, ids=SURFACE_NAMES)
@pytest.mark.parametrize("case", CASE_NAMES)
def test_every_type_case_through_every_surface(case, surface, shared):
    schema, batches = stream(case)
    refusal = pyarrow_refusal(surface, schema, batches)
    with temporary_directory(prefix="bc-surfaces-") as directory, ExitStack() as stack:
        context = Context(case, Path(directory), stack, shared)
        if refusal is None:
            check_surface(surface.read(schema, batches, context), schema, batches)
            return
        try:
            replay = surface.read(schema, batches, context)
        except (InvalidArgumentError, pa.ArrowInvalid) as err:
            # pyarrow refused this stream too: the refusal must say where and what to do.
            # (ArrowInvalid: the refusal reached pyarrow through a C stream, as its text.)
            message = str(err)
            assert re.search(rf"\bbatch {refusal.batch}\b", message), (message, refusal)
            assert "cast" in message, message
            return
        check_surface(replay, schema, batches)


# -- the premises ---------------------------------------------------------------------------


def test_every_catalogue_column_is_in_a_case():
    used = set()
    for case in CASE_NAMES:
        used.update(stream(case)[0].names)
    assert set(NAMES) <= used, set(NAMES) - used


def test_the_dictionary_shapes_are_what_they_say():
    def per_batch(case: str) -> List[List[pa.Array]]:
        schema, batches = stream(case)
        return [[d for column in b.columns for _, d in dictionaries(column)] for b in batches]

    one = per_batch("dictionary-one-for-the-stream")
    assert all(d.equals(first) for batch in one for d, first in zip(batch, one[0]))
    for case in ("dictionary-replaced-every-batch", "nested-dictionary-replaced-every-batch"):
        batches = per_batch(case)
        for before, after in zip(batches, batches[1:]):
            assert any(not a.equals(b) for a, b in zip(before, after)), case
    delta = per_batch("dictionary-delta")
    for before, after in zip(delta, delta[1:]):
        for a, b in zip(before, after):
            assert len(b) > len(a) and b.slice(0, len(a)).equals(a)
    same = per_batch("dictionary-same-values-new-array")
    for before, after in zip(same, same[1:]):
        for a, b in zip(before, after):
            assert a.equals(b) and a.buffers()[1].address != b.buffers()[1].address
    for what in ("plain", "dictionary"):
        for where, index in (("first", 0), ("middle", 1), ("last", -1)):
            assert stream(f"{what}-zero-rows-{where}")[1][index].num_rows == 0


def test_pyarrow_refuses_replaced_dictionaries_in_a_file_only():
    """The refusals the matrix allows are pyarrow's own: its file writer refuses a
    replaced dictionary at the batch that brings it (and a delta too, unless it may emit
    deltas); its stream writer takes every case."""
    default_file = _pyarrow_writes("pa.ipc.new_file", pa.ipc.new_file)
    for case in CASE_NAMES:
        schema, batches = stream(case)
        assert ipc_stream(schema, batches) is None, case
        refusal = ipc_file(schema, batches)
        if "delta" in case:
            assert refusal is None, (case, refusal)
            refusal = default_file(schema, batches)
        if "replaced" in case or "delta" in case:
            assert refusal is not None and refusal.batch == 1, case
            assert "replacement" in str(refusal.error)
        else:
            assert refusal is None, (case, refusal)

