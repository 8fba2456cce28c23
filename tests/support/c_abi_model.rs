//! The model of the C ABI shared by the proptest `tests/c_abi_sequences.rs` and the
//! libFuzzer target `fuzz/fuzz_targets/c_abi_sequences.rs` (both include this file with
//! `#[path = ...] mod c_abi_model;`).
//!
//! `run` plays a sequence of `Op`s against a cache over a C upstream and checks every
//! result against a model of the stream: every batch a reader returns is the right one,
//! every error has the right status, and misuse (NULLs, released streams, use after
//! close, releasing twice) is an error code or a no-op, never a crash. The expectations do
//! not depend on the `Tier`: the disk tier must behave exactly like memory.
//!
//! Indices and counts in `Op` may be anything (the fuzzer makes them arbitrary): `run`
//! bounds them itself.

#![allow(dead_code)]

use std::ffi::CString;
use std::ptr;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::ffi::{from_ffi_and_data_type, FFI_ArrowArray};
use arrow_array::ffi_stream::FFI_ArrowArrayStream;
use arrow_array::types::Int64Type;
use arrow_array::{Int64Array, RecordBatch, RecordBatchIterator, StructArray};
use arrow_schema::{ArrowError, DataType, Field, Schema};
use batchcorder::abi::{ArrowArray, ArrowArrayStream, ArrowSchema};
use batchcorder::cache::BcStats as Stats;
use batchcorder::cache::*;
use batchcorder::export::{bc_reader_next, bc_reader_position};
use batchcorder::options::*;
use batchcorder::random_access::{bc_cache_batch, bc_cache_take};
use batchcorder::reader_options::*;
use batchcorder::BcStatus::{self, *};
use batchcorder::{bc_last_error_kind, BcErrorKind};

pub const ROWS: i64 = 10;
/// `Op` reader indices are taken modulo this.
pub const READER_SLOTS: usize = 6;
/// A `Read` reads at most this many batches (more than any stream has).
pub const MAX_READ_COUNT: u8 = 16;
/// Disk budget: never the limit here.
const DISK_CAPACITY: u64 = 1 << 30;
/// The smallest segment the C API accepts: a handful of batches each.
const SEGMENT_BYTES: u64 = 4096;
/// Hot-layer budgets with the disk tier are below this: at most a couple of batches stay
/// in memory, the rest are read back from disk.
const MAX_HOT_BYTES: u64 = 512;

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]))
}

/// A C stream of `batches` batches whose ids start at position * ROWS, failing at `fail_at`.
pub fn upstream(batches: i64, fail_at: Option<i64>) -> ArrowArrayStream {
    let items: Vec<Result<RecordBatch, ArrowError>> = (0..batches)
        .map_while(|position| {
            if Some(position) == fail_at {
                return Some(Err(ArrowError::InvalidArgumentError(
                    "producer broke".into(),
                )));
            }
            let ids = Int64Array::from_iter_values(position * ROWS..(position + 1) * ROWS);
            Some(Ok(
                RecordBatch::try_new(schema(), vec![Arc::new(ids)]).unwrap()
            ))
        })
        .take_while(|_| true)
        .collect();
    let reader = RecordBatchIterator::new(items, schema());
    // SAFETY: the two structs have one layout (asserted in the library).
    unsafe { std::mem::transmute(FFI_ArrowArrayStream::new(Box::new(reader))) }
}

fn released_array() -> ArrowArray {
    ArrowArray::RELEASED
}

/// The first id of an exported batch; releases it.
fn first_id(array: ArrowArray) -> i64 {
    // SAFETY: a batch the library exported.
    let ffi: FFI_ArrowArray = unsafe { array.into_ffi() };
    let data_type = DataType::Struct(schema().fields().clone());
    // SAFETY: a batch of the stream's rows.
    let data = unsafe { from_ffi_and_data_type(ffi, data_type) }.unwrap();
    StructArray::from(data)
        .column(0)
        .as_primitive::<Int64Type>()
        .value(0)
}

/// One call (or a few) on the C ABI. `ReleaseAgain` releases a reader if it is still live,
/// then calls its saved `release` again on the released struct, which must be a no-op.
#[derive(Debug, Clone)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Op {
    NewReader {
        from_start: bool,
    },
    /// A reader of shard `index % count` of `1 + count % 4`, in the stream's order
    /// (`bc_cache_reader_with`).
    NewShardReader {
        from_start: bool,
        index: u8,
        count: u8,
    },
    /// A reader in a random order seeded by `seed`, through a window of `window % 5`
    /// batches (0: the whole stream), its rows shuffled too if `rows`; shard `index %
    /// count` of `1 + count % 4` of that order.
    NewShuffledReader {
        seed: u8,
        window: u8,
        rows: bool,
        index: u8,
        count: u8,
    },
    /// Batch `index % 16` by its position (`bc_cache_batch`), sometimes past the end.
    Batch {
        index: u8,
    },
    /// Up to 8 rows, each `% (16 * ROWS)`, by their position (`bc_cache_take`).
    Take {
        rows: Vec<u8>,
    },
    Read {
        reader: usize,
        count: u8,
    },
    Release {
        reader: usize,
    },
    ReleaseAgain {
        reader: usize,
    },
    IngestAll,
    Stats,
    Close,
    Misuse {
        reader: usize,
    },
}

/// Where the cache keeps its batches.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
pub enum Tier {
    /// Memory only, default budget.
    Memory,
    /// The disk tier in a fresh temporary directory, with a hot layer of
    /// `hot_bytes % MAX_HOT_BYTES` bytes and compression `compression % 3`.
    Disk {
        on_eviction: bool,
        compression: u8,
        hot_bytes: u16,
    },
}

type ReleaseFn = unsafe extern "C" fn(*mut ArrowArrayStream);

pub struct Reader {
    stream: ArrowArrayStream,
    /// The stream's `release` as it was handed out, kept to call it again later.
    release_fn: ReleaseFn,
    /// The stream position of the next batch.
    position: i64,
    /// Positions between its batches: a shard's count, else 1.
    step: i64,
    /// Batches returned: what `bc_reader_position` reports for a shard.
    returned: i64,
    sharded: bool,
    /// For a shuffled reader, the positions it returned and how many it returns in all
    /// (its shard's share of the stream); its order is not modelled.
    shuffled: Option<(std::collections::HashSet<i64>, i64)>,
    done: bool,
}

pub struct Model {
    batches: i64,
    fail_at: Option<i64>,
    max_readers: Option<u64>,
    created: u64,
    frontier: i64,
    closed: bool,
}

impl Model {
    /// Where the stream stops: the failure or the end.
    fn stop(&self) -> i64 {
        self.fail_at.unwrap_or(self.batches)
    }
}

/// The disk tier's parent directory; `None` in memory.
struct DiskDir {
    parent: tempfile::TempDir,
    /// Every batch ingested goes to disk right away (nothing evicts it while readers are
    /// uncapped), so `disk_bytes` must be positive once a batch is in.
    always_written: bool,
}

impl DiskDir {
    /// Entries in the parent: the cache's private directory while it has one.
    fn entries(&self) -> usize {
        std::fs::read_dir(self.parent.path()).unwrap().count()
    }
}

/// Set the options of `tier` on `opts`.
fn configure(opts: *mut BcOptions, tier: Tier) -> Option<DiskDir> {
    let Tier::Disk {
        on_eviction,
        compression,
        hot_bytes,
    } = tier
    else {
        return None;
    };
    let parent = tempfile::tempdir().expect("a temporary directory");
    let path = CString::new(parent.path().to_str().unwrap()).unwrap();
    let hot_bytes = u64::from(hot_bytes) % MAX_HOT_BYTES;
    let policy = if on_eviction {
        BC_WRITE_ON_EVICTION
    } else {
        BC_WRITE_ON_INSERTION
    };
    let compressions = [BC_COMPRESSION_NONE, BC_COMPRESSION_LZ4, BC_COMPRESSION_ZSTD];
    let compression = compressions[usize::from(compression % 3)];
    // SAFETY: a live builder and a NUL-terminated path.
    unsafe {
        assert_eq!(
            bc_options_set_disk(opts, path.as_ptr(), DISK_CAPACITY),
            BC_OK
        );
        assert_eq!(bc_options_set_memory_capacity(opts, hot_bytes), BC_OK);
        assert_eq!(bc_options_set_write_policy(opts, policy), BC_OK);
        assert_eq!(bc_options_set_compression(opts, compression), BC_OK);
        assert_eq!(bc_options_set_segment_bytes(opts, SEGMENT_BYTES), BC_OK);
    }
    Some(DiskDir {
        parent,
        always_written: !on_eviction || hot_bytes == 0,
    })
}

/// `run_on` in memory.
pub fn run(batches: i64, fail_at: Option<i64>, max_readers: Option<u64>, ops: Vec<Op>) {
    run_on(Tier::Memory, batches, fail_at, max_readers, ops)
}

pub fn run_on(
    tier: Tier,
    batches: i64,
    fail_at: Option<i64>,
    max_readers: Option<u64>,
    ops: Vec<Op>,
) {
    let mut source = upstream(batches, fail_at);
    let opts = bc_options_new();
    if let Some(max) = max_readers {
        // SAFETY: a live builder.
        assert_eq!(unsafe { bc_options_set_max_readers(opts, max) }, BC_OK);
    }
    let disk = configure(opts, tier);
    let mut cache = ptr::null_mut();
    // SAFETY: a live stream and builder, and a place for the handle. From here on, `cache`
    // is a live handle until `bc_cache_free` below, and every reader stream is a live one
    // of ours or released.
    let status = unsafe { bc_cache_new(&mut source, opts, &mut cache) };
    assert_eq!(status, BC_OK);
    assert!(source.release.is_none(), "the cache took the upstream");
    // SAFETY: a live builder, freed once.
    unsafe { bc_options_free(opts) };
    if let Some(disk) = &disk {
        assert_eq!(disk.entries(), 1, "the cache made its private directory");
    }

    let mut model = Model {
        batches,
        fail_at,
        max_readers,
        created: 0,
        frontier: 0,
        closed: false,
    };
    let mut readers: Vec<Reader> = Vec::new();
    for op in ops {
        match op {
            Op::NewReader { from_start } => {
                let mut stream = ArrowArrayStream::RELEASED;
                // SAFETY: as said where `cache` was made.
                let status =
                    unsafe { bc_cache_reader(cache, from_start, ptr::null(), &mut stream) };
                if model.admits(status, &stream) {
                    let position = if from_start { 0 } else { model.frontier };
                    readers.push(Reader::live(stream, position, 1, false, None));
                }
            }
            Op::NewShardReader {
                from_start,
                index,
                count,
            } => {
                let count = 1 + i64::from(count % 4);
                let index = i64::from(index) % count;
                let (status, stream) = reader_with(cache, |opts| {
                    // SAFETY: a live builder of `reader_with`'s.
                    unsafe {
                        assert_eq!(bc_reader_options_set_from_start(opts, from_start), BC_OK);
                        assert_eq!(
                            bc_reader_options_set_shard(opts, index as u64, count as u64),
                            BC_OK
                        );
                    }
                });
                if model.admits(status, &stream) {
                    let start = if from_start { 0 } else { model.frontier };
                    // The shard's first position at or after the start.
                    let position = start + (index - start % count).rem_euclid(count);
                    readers.push(Reader::live(stream, position, count, true, None));
                }
            }
            Op::NewShuffledReader {
                seed,
                window,
                rows,
                index,
                count,
            } => {
                let count = 1 + i64::from(count % 4);
                let index = i64::from(index) % count;
                let window = u64::from(window % 5);
                let (status, stream) = reader_with(cache, |opts| {
                    // SAFETY: a live builder of `reader_with`'s.
                    unsafe {
                        assert_eq!(bc_reader_options_set_shuffle(opts, u64::from(seed)), BC_OK);
                        if window > 0 {
                            assert_eq!(bc_reader_options_set_shuffle_window(opts, window), BC_OK);
                        }
                        assert_eq!(bc_reader_options_set_shuffle_rows(opts, rows), BC_OK);
                        assert_eq!(
                            bc_reader_options_set_shard(opts, index as u64, count as u64),
                            BC_OK
                        );
                    }
                });
                if model.admits(status, &stream) {
                    // Elements `index`, `index + count`, ... of an order of every batch.
                    let share = (model.batches - index + count - 1).max(0) / count;
                    readers.push(Reader::live(stream, 0, 0, true, Some(share)));
                }
            }
            Op::Batch { index } => {
                let index = i64::from(index % 16);
                let mut array = released_array();
                // SAFETY: as said where `cache` was made.
                let status = unsafe { bc_cache_batch(cache, index as u64, &mut array) };
                let past_end = index >= model.batches;
                if let Some(status) = random_access_failed(&mut model, status, index, past_end) {
                    assert!(
                        array.release.is_none(),
                        "out untouched on failure: {status:?}"
                    );
                    continue;
                }
                assert_eq!(
                    ids(array),
                    (index * ROWS..(index + 1) * ROWS).collect::<Vec<_>>()
                );
            }
            Op::Take { rows } => {
                let rows: Vec<u64> = rows
                    .iter()
                    .take(8)
                    .map(|&r| u64::from(r) % (16 * ROWS) as u64)
                    .collect();
                let mut array = released_array();
                // SAFETY: as said where `cache` was made; `rows.len()` rows.
                let status = unsafe { bc_cache_take(cache, rows.as_ptr(), rows.len(), &mut array) };
                let last = rows.iter().max().map_or(-1, |&row| row as i64 / ROWS);
                let past_end = last >= model.batches;
                if let Some(status) = random_access_failed(&mut model, status, last, past_end) {
                    assert!(
                        array.release.is_none(),
                        "out untouched on failure: {status:?}"
                    );
                    continue;
                }
                let rows: Vec<i64> = rows.iter().map(|&row| row as i64).collect();
                assert_eq!(ids(array), rows);
            }
            Op::Read { reader, count } => {
                let Some(r) = readers.get_mut(reader % READER_SLOTS) else {
                    continue;
                };
                if r.shuffled.is_some() {
                    read_shuffled(cache, &mut model, r, count);
                    continue;
                }
                for _ in 0..count.min(MAX_READ_COUNT) {
                    let Some((status, array)) = next_of(&model, r) else {
                        break;
                    };
                    // A shard's next position may lie past the failure or the end.
                    if r.position >= model.stop() && model.fail_at.is_some() {
                        assert_eq!(status, BC_UPSTREAM);
                        model.frontier = model.stop();
                        break;
                    }
                    assert_eq!(status, BC_OK, "reading position {}", r.position);
                    if r.position >= model.batches {
                        assert!(array.release.is_none(), "end of stream");
                        r.done = true;
                        model.frontier = model.batches;
                        break;
                    }
                    assert_eq!(first_id(array), r.position * ROWS, "the right batch");
                    model.frontier = model.frontier.max(r.position + 1);
                    r.position += r.step;
                    r.returned += 1;
                    let mut position = 0;
                    // SAFETY: as said where `cache` was made.
                    let status = unsafe { bc_reader_position(&mut r.stream, &mut position) };
                    assert_eq!(status, BC_OK);
                    let expected = if r.sharded { r.returned } else { r.position };
                    assert_eq!(position as i64, expected);
                }
            }
            Op::Release { reader } => {
                if let Some(r) = readers.get_mut(reader % READER_SLOTS) {
                    if let Some(release) = r.stream.release {
                        // SAFETY: a live stream, released once.
                        unsafe { release(&mut r.stream) };
                    }
                    assert_released(&r.stream);
                }
            }
            Op::ReleaseAgain { reader } => {
                if let Some(r) = readers.get_mut(reader % READER_SLOTS) {
                    if let Some(release) = r.stream.release {
                        // SAFETY: a live stream, released once.
                        unsafe { release(&mut r.stream) };
                    }
                    assert_released(&r.stream);
                    // The C stream interface forbids this, but a double release must not
                    // free anything twice: private_data is NULL, so it returns at once.
                    // SAFETY: the library's release of a released stream, which it allows.
                    unsafe { (r.release_fn)(&mut r.stream) };
                    assert_released(&r.stream);
                }
            }
            Op::IngestAll => {
                let mut total = 0;
                // SAFETY: as said where `cache` was made.
                let status = unsafe { bc_cache_ingest_all(cache, &mut total) };
                if model.closed {
                    assert_eq!(status, BC_CLOSED);
                } else if model.fail_at.is_some() {
                    assert_eq!(status, BC_UPSTREAM);
                    model.frontier = model.stop();
                } else {
                    assert_eq!((status, total as i64), (BC_OK, model.batches));
                    model.frontier = model.batches;
                }
            }
            Op::Stats => {
                let mut stats = Stats::default();
                if model.closed {
                    continue;
                }
                // SAFETY: as said where `cache` was made.
                assert_eq!(unsafe { bc_cache_stats(cache, &mut stats) }, BC_OK);
                assert_eq!(
                    stats.batches_ingested as i64,
                    model.frontier.min(model.stop())
                );
                assert_eq!(stats.readers_created, model.created);
                // SAFETY: as said where `cache` was made.
                let ingested = unsafe { bc_cache_ingested_count(cache) };
                assert_eq!(ingested, stats.batches_ingested);
                if let Some(disk) = &disk {
                    if disk.always_written && model.max_readers.is_none() {
                        // The disk tier is really in use, not just configured.
                        assert_eq!(
                            stats.disk_bytes > 0,
                            stats.batches_ingested > 0,
                            "{stats:?}"
                        );
                    }
                }
            }
            Op::Close => {
                // SAFETY: as said where `cache` was made.
                assert_eq!(unsafe { bc_cache_close(cache) }, BC_OK);
                model.closed = true;
                if let Some(disk) = &disk {
                    assert_eq!(disk.entries(), 0, "closing deletes the cache's directory");
                }
            }
            Op::Misuse { reader } => misuse(cache, readers.get_mut(reader % READER_SLOTS)),
        }
    }
    // SAFETY: a live handle, freed once.
    unsafe { bc_cache_free(cache) };
    // Readers outlive the handle; releasing them last must be clean.
    for mut r in readers {
        if let Some(release) = r.stream.release {
            // SAFETY: a live stream, released once.
            unsafe { release(&mut r.stream) };
        }
        assert_released(&r.stream);
    }
    if let Some(disk) = &disk {
        assert_eq!(
            disk.entries(),
            0,
            "the last reader took the cache's directory with it"
        );
    }
}

/// `bc_reader_next` on `r`, unless it ended or was released: its status and array, or
/// `None` (and `BC_CLOSED` asserted) once the cache is closed.
fn next_of(model: &Model, r: &mut Reader) -> Option<(BcStatus, ArrowArray)> {
    if r.done || r.stream.release.is_none() {
        return None;
    }
    let mut array = released_array();
    // SAFETY: a live stream of ours, of a cache the model keeps alive.
    let status = unsafe { bc_reader_next(&mut r.stream, &mut array) };
    if model.closed {
        assert_eq!(status, BC_CLOSED);
        return None;
    }
    Some((status, array))
}

/// `count` reads of shuffled reader `r`: each batch a whole one of the stream, rows in
/// any order, none twice, as many as its share before the end; an upstream failure once
/// the reader needs the batch that fails. How far a window pulls the upstream is not
/// modelled: the model takes the cache's count.
fn read_shuffled(cache: *mut BcCache, model: &mut Model, r: &mut Reader, count: u8) {
    for _ in 0..count.min(MAX_READ_COUNT) {
        let Some((status, array)) = next_of(model, r) else {
            break;
        };
        if status == BC_UPSTREAM {
            assert!(
                model.fail_at.is_some(),
                "a failure of an upstream that does not fail"
            );
            model.frontier = model.stop();
            break;
        }
        assert_eq!(status, BC_OK);
        let (seen, share) = r.shuffled.as_mut().expect("a shuffled reader");
        if array.release.is_none() {
            assert!(model.fail_at.is_none(), "ended before the failure");
            assert_eq!(r.returned, *share, "end of stream after the shard's share");
            r.done = true;
            model.frontier = model.batches;
            break;
        }
        let mut ids = ids(array);
        ids.sort_unstable();
        let position = ids[0] / ROWS;
        assert_eq!(
            ids,
            (position * ROWS..(position + 1) * ROWS).collect::<Vec<_>>()
        );
        assert!(
            position < model.stop(),
            "batch {position} of {}",
            model.stop()
        );
        assert!(seen.insert(position), "batch {position} returned twice");
        r.returned += 1;
        let mut returned = 0;
        // SAFETY: a live stream of ours.
        let status = unsafe { bc_reader_position(&mut r.stream, &mut returned) };
        assert_eq!(status, BC_OK);
        assert_eq!(returned as i64, r.returned);
        // SAFETY: a live cache.
        model.frontier = unsafe { bc_cache_ingested_count(cache) } as i64;
    }
}

/// For `bc_cache_batch` and `bc_cache_take` reaching batch `last` (-1: none), the
/// status a failure must have, after which the model moves its frontier as the call
/// pulled the upstream; `None` when the call must succeed.
impl Reader {
    /// A reader just handed out: at `position`, `step` positions between its batches (a
    /// shard's count, else 1; 0 for a shuffled one), made with shard options or not, and
    /// for a shuffled one how many it returns in all.
    fn live(
        stream: ArrowArrayStream,
        position: i64,
        step: i64,
        sharded: bool,
        share: Option<i64>,
    ) -> Self {
        let release_fn = stream.release.expect("a live reader");
        Self {
            stream,
            release_fn,
            position,
            step,
            returned: 0,
            sharded,
            shuffled: share.map(|share| (Default::default(), share)),
            done: false,
        }
    }
}

impl Model {
    /// Whether a new reader's `status` says it was made, as the model expects: refused
    /// once closed or over `max_readers` (with `stream` untouched), counted when made.
    fn admits(&mut self, status: BcStatus, stream: &ArrowArrayStream) -> bool {
        if self.closed {
            assert_eq!(status, BC_CLOSED);
            false
        } else if self.max_readers.is_some_and(|max| self.created >= max) {
            assert!(
                matches!(status, BC_INVALID_ARGUMENT | BC_EVICTED),
                "{status:?}"
            );
            assert!(stream.release.is_none(), "out untouched on failure");
            false
        } else {
            assert_eq!(status, BC_OK);
            self.created += 1;
            true
        }
    }
}

/// `bc_cache_reader_with` under options that `configure` sets on a new builder, after
/// `bc_cache_check_reader_options`, which must refuse what it refuses but for the readers
/// of the moment (`max_readers` reached, batches evicted).
fn reader_with(
    cache: *mut BcCache,
    configure: impl FnOnce(*mut BcReaderOptions),
) -> (BcStatus, ArrowArrayStream) {
    let mut stream = ArrowArrayStream::RELEASED;
    // SAFETY: `cache` is live (its caller's contract); the builder is ours, freed once.
    let (checked, status) = unsafe {
        let opts = bc_reader_options_new();
        configure(opts);
        let checked = bc_cache_check_reader_options(cache, opts);
        let status = bc_cache_reader_with(cache, opts, ptr::null(), &mut stream);
        bc_reader_options_free(opts);
        (checked, status)
    };
    if checked == BC_OK {
        let capped = status == BC_INVALID_ARGUMENT
            && bc_last_error_kind() == BcErrorKind::BC_ERROR_KIND_READER_CAP;
        assert!(
            matches!(status, BC_OK | BC_EVICTED) || capped,
            "checked fine, made {status:?}"
        );
    } else {
        assert_eq!(status, checked, "the reader is refused as the check was");
    }
    (status, stream)
}

fn random_access_failed(
    model: &mut Model,
    status: BcStatus,
    last: i64,
    past_end: bool,
) -> Option<BcStatus> {
    if model.closed {
        assert_eq!(status, BC_CLOSED);
        return Some(status);
    }
    if model.fail_at.is_some() && last >= model.stop() {
        assert_eq!(status, BC_UPSTREAM);
        model.frontier = model.stop();
        return Some(status);
    }
    if past_end {
        assert_eq!(status, BC_INVALID_ARGUMENT);
        assert_eq!(
            bc_last_error_kind(),
            BcErrorKind::BC_ERROR_KIND_OUT_OF_RANGE
        );
        model.frontier = model.batches;
        return Some(status);
    }
    model.frontier = model.frontier.max(last + 1);
    // Not a reader: a batch every reader passed may be gone under `max_readers`.
    if status == BC_EVICTED && model.max_readers.is_some() {
        return Some(status);
    }
    assert_eq!(status, BC_OK, "reaching batch {last}");
    None
}

/// The ids of an exported batch; releases it.
fn ids(array: ArrowArray) -> Vec<i64> {
    // SAFETY: a batch the library exported.
    let ffi: FFI_ArrowArray = unsafe { array.into_ffi() };
    let data_type = DataType::Struct(schema().fields().clone());
    // SAFETY: a batch of the stream's rows.
    let data = unsafe { from_ffi_and_data_type(ffi, data_type) }.unwrap();
    let column = StructArray::from(data).column(0).clone();
    column.as_primitive::<Int64Type>().values().to_vec()
}

fn assert_released(stream: &ArrowArrayStream) {
    assert!(stream.release.is_none() && stream.private_data.is_null());
    assert!(stream.get_schema.is_none() && stream.get_next.is_none());
}

/// NULLs and released structs everywhere: error codes, never a crash.
pub fn misuse(cache: *mut BcCache, reader: Option<&mut Reader>) {
    let null_cache: *mut BcCache = ptr::null_mut();
    let mut stream = ArrowArrayStream::RELEASED;
    let mut schema_out = ArrowSchema::RELEASED;
    // Each failure sets its own message, naming the argument: a stale one would name
    // the previous call's.
    let expect_invalid = |status: BcStatus, argument: &str| {
        assert_eq!(status, BC_INVALID_ARGUMENT);
        // SAFETY: the library's message, NUL-terminated, valid until its next call here.
        let message = unsafe { std::ffi::CStr::from_ptr(batchcorder::bc_last_error()) };
        let message = message.to_string_lossy();
        assert!(
            message.contains(&format!("argument `{argument}`")),
            "{message}"
        );
    };
    // SAFETY: `cache` is NULL or live, the reader live or released, and each pointer NULL
    // or valid: what the calls allow, and misuse they must survive.
    unsafe {
        expect_invalid(
            bc_cache_reader(null_cache, true, ptr::null(), &mut stream),
            "cache",
        );
        expect_invalid(
            bc_cache_reader(cache, true, ptr::null(), ptr::null_mut()),
            "out",
        );
        expect_invalid(bc_cache_schema(null_cache, &mut schema_out), "cache");
        expect_invalid(bc_cache_schema(cache, ptr::null_mut()), "out");
        expect_invalid(bc_cache_stats(cache, ptr::null_mut()), "out");
        expect_invalid(
            bc_cache_check_schema(cache, ptr::null()),
            "requested_schema",
        );
        expect_invalid(
            bc_cache_check_reader_options(null_cache, ptr::null()),
            "cache",
        );
        expect_invalid(bc_cache_ingest_all(null_cache, ptr::null_mut()), "cache");
        expect_invalid(bc_cache_close(null_cache), "cache");
        let mut released = ArrowArrayStream::RELEASED;
        expect_invalid(
            bc_cache_new(&mut released, ptr::null(), &mut ptr::null_mut()),
            "upstream",
        );
        let mut array = released_array();
        expect_invalid(bc_reader_next(&mut released, &mut array), "reader");
        expect_invalid(bc_reader_next(ptr::null_mut(), &mut array), "reader");
        if let Some(r) = reader {
            if r.stream.release.is_some() {
                expect_invalid(bc_reader_next(&mut r.stream, ptr::null_mut()), "out");
            } else {
                // A released reader: its callbacks are gone and bc_reader_next refuses it.
                expect_invalid(bc_reader_next(&mut r.stream, &mut array), "reader");
            }
        }
        assert_eq!(bc_cache_ingested_count(null_cache), 0);
        assert!(!bc_cache_upstream_exhausted(null_cache));
        bc_cache_free(ptr::null_mut());
        bc_options_free(ptr::null_mut());
    }
}
