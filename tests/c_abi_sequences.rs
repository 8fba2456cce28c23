//! Random sequences of C ABI calls, checked against a model of the stream: every batch a
//! reader returns is the right one, every error has the right status, and misuse (NULLs,
//! released streams, use after close) is an error code, never a crash.

use std::ptr;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::ffi::{from_ffi_and_data_type, FFI_ArrowArray};
use arrow_array::ffi_stream::FFI_ArrowArrayStream;
use arrow_array::types::Int64Type;
use arrow_array::{Int64Array, RecordBatch, RecordBatchIterator, StructArray};
use arrow_schema::{ArrowError, DataType, Field, Schema};
use batchcorder::ffi::abi::{ArrowArray, ArrowArrayStream, ArrowSchema};
use batchcorder::ffi::cache::*;
use batchcorder::ffi::export::{bc_reader_next, bc_reader_position};
use batchcorder::ffi::options::*;
use batchcorder::ffi::BcStatus::{self, *};
use batchcorder::Stats;
use proptest::prelude::*;

const ROWS: i64 = 10;

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]))
}

/// A C stream of `batches` batches whose ids start at position * ROWS, failing at `fail_at`.
fn upstream(batches: i64, fail_at: Option<i64>) -> ArrowArrayStream {
    let items: Vec<Result<RecordBatch, ArrowError>> = (0..batches)
        .map_while(|position| {
            if Some(position) == fail_at {
                return Some(Err(ArrowError::InvalidArgumentError("producer broke".into())));
            }
            let ids = Int64Array::from_iter_values(position * ROWS..(position + 1) * ROWS);
            Some(Ok(RecordBatch::try_new(schema(), vec![Arc::new(ids)]).unwrap()))
        })
        .take_while(|_| true)
        .collect();
    let reader = RecordBatchIterator::new(items, schema());
    // SAFETY: the two structs have one layout (asserted in the library).
    unsafe { std::mem::transmute(FFI_ArrowArrayStream::new(Box::new(reader))) }
}

fn released_array() -> ArrowArray {
    unsafe { std::mem::transmute(FFI_ArrowArray::empty()) }
}

/// The first id of an exported batch; releases it.
fn first_id(array: ArrowArray) -> i64 {
    let ffi: FFI_ArrowArray = unsafe { std::mem::transmute(array) };
    let data_type = DataType::Struct(schema().fields().clone());
    let data = unsafe { from_ffi_and_data_type(ffi, data_type) }.unwrap();
    StructArray::from(data).column(0).as_primitive::<Int64Type>().value(0)
}

#[derive(Debug, Clone)]
enum Op {
    NewReader { from_start: bool },
    Read { reader: usize, count: u8 },
    Release { reader: usize },
    IngestAll,
    Stats,
    Close,
    Misuse { reader: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<bool>().prop_map(|from_start| Op::NewReader { from_start }),
        6 => (0..6usize, 1..6u8).prop_map(|(reader, count)| Op::Read { reader, count }),
        2 => (0..6usize).prop_map(|reader| Op::Release { reader }),
        1 => Just(Op::IngestAll),
        1 => Just(Op::Stats),
        1 => Just(Op::Close),
        1 => (0..6usize).prop_map(|reader| Op::Misuse { reader }),
    ]
}

struct Reader {
    stream: ArrowArrayStream,
    position: i64,
    done: bool,
}

struct Model {
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

fn run(batches: i64, fail_at: Option<i64>, max_readers: Option<u64>, ops: Vec<Op>) {
    let mut source = upstream(batches, fail_at);
    let opts = bc_options_new();
    if let Some(max) = max_readers {
        assert_eq!(unsafe { bc_options_set_max_readers(opts, max) }, BC_OK);
    }
    let mut cache = ptr::null_mut();
    assert_eq!(unsafe { bc_cache_new(&mut source, opts, &mut cache) }, BC_OK);
    assert!(source.release.is_none(), "the cache took the upstream");
    unsafe { bc_options_free(opts) };

    let mut model = Model { batches, fail_at, max_readers, created: 0, frontier: 0, closed: false };
    let mut readers: Vec<Reader> = Vec::new();
    for op in ops {
        match op {
            Op::NewReader { from_start } => {
                let mut stream = ArrowArrayStream::RELEASED;
                let status = unsafe { bc_cache_reader(cache, from_start, ptr::null(), &mut stream) };
                if model.closed {
                    assert_eq!(status, BC_CLOSED);
                } else if model.max_readers.is_some_and(|max| model.created >= max) {
                    assert!(matches!(status, BC_INVALID_ARGUMENT | BC_EVICTED), "{status:?}");
                    assert!(stream.release.is_none(), "out untouched on failure");
                } else {
                    assert_eq!(status, BC_OK);
                    model.created += 1;
                    let position = if from_start { 0 } else { model.frontier };
                    readers.push(Reader { stream, position, done: false });
                }
            }
            Op::Read { reader, count } => {
                let Some(r) = readers.get_mut(reader) else { continue };
                for _ in 0..count {
                    if r.done || r.stream.release.is_none() {
                        break;
                    }
                    let mut array = released_array();
                    let status = unsafe { bc_reader_next(&mut r.stream, &mut array) };
                    if model.closed {
                        assert_eq!(status, BC_CLOSED);
                        break;
                    }
                    if r.position == model.stop() && model.fail_at.is_some() {
                        assert_eq!(status, BC_UPSTREAM);
                        model.frontier = model.frontier.max(r.position);
                        break;
                    }
                    assert_eq!(status, BC_OK, "reading position {}", r.position);
                    if r.position == model.batches {
                        assert!(array.release.is_none(), "end of stream");
                        r.done = true;
                        break;
                    }
                    assert_eq!(first_id(array), r.position * ROWS, "the right batch");
                    r.position += 1;
                    model.frontier = model.frontier.max(r.position);
                    let mut position = 0;
                    assert_eq!(unsafe { bc_reader_position(&mut r.stream, &mut position) }, BC_OK);
                    assert_eq!(position as i64, r.position);
                }
            }
            Op::Release { reader } => {
                if let Some(r) = readers.get_mut(reader) {
                    if let Some(release) = r.stream.release {
                        unsafe { release(&mut r.stream) };
                    }
                    assert!(r.stream.release.is_none() && r.stream.private_data.is_null());
                }
            }
            Op::IngestAll => {
                let mut total = 0;
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
                assert_eq!(unsafe { bc_cache_stats(cache, &mut stats) }, BC_OK);
                assert_eq!(stats.batches_ingested as i64, model.frontier.min(model.stop()));
                assert_eq!(stats.readers_created, model.created);
                assert_eq!(unsafe { bc_cache_ingested_count(cache) }, stats.batches_ingested);
            }
            Op::Close => {
                assert_eq!(unsafe { bc_cache_close(cache) }, BC_OK);
                model.closed = true;
            }
            Op::Misuse { reader } => misuse(cache, readers.get_mut(reader)),
        }
    }
    unsafe { bc_cache_free(cache) };
    // Readers outlive the handle; releasing them last must be clean.
    for mut r in readers {
        if let Some(release) = r.stream.release {
            unsafe { release(&mut r.stream) };
        }
    }
}

/// NULLs and released structs everywhere: error codes, never a crash.
fn misuse(cache: *mut BcCache, reader: Option<&mut Reader>) {
    let null_cache: *mut BcCache = ptr::null_mut();
    let mut stream = ArrowArrayStream::RELEASED;
    let mut schema_out: ArrowSchema = unsafe { std::mem::zeroed() };
    let expect_invalid = |status: BcStatus| assert_eq!(status, BC_INVALID_ARGUMENT);
    unsafe {
        expect_invalid(bc_cache_reader(null_cache, true, ptr::null(), &mut stream));
        expect_invalid(bc_cache_reader(cache, true, ptr::null(), ptr::null_mut()));
        expect_invalid(bc_cache_schema(null_cache, &mut schema_out));
        expect_invalid(bc_cache_schema(cache, ptr::null_mut()));
        expect_invalid(bc_cache_stats(cache, ptr::null_mut()));
        expect_invalid(bc_cache_check_schema(cache, ptr::null()));
        expect_invalid(bc_cache_ingest_all(null_cache, ptr::null_mut()));
        expect_invalid(bc_cache_close(null_cache));
        let mut released = ArrowArrayStream::RELEASED;
        expect_invalid(bc_cache_new(&mut released, ptr::null(), &mut ptr::null_mut()));
        let mut array = released_array();
        expect_invalid(bc_reader_next(&mut released, &mut array));
        expect_invalid(bc_reader_next(ptr::null_mut(), &mut array));
        if let Some(r) = reader {
            if r.stream.release.is_some() {
                expect_invalid(bc_reader_next(&mut r.stream, ptr::null_mut()));
            } else {
                // A released reader: its callbacks are gone and bc_reader_next refuses it.
                expect_invalid(bc_reader_next(&mut r.stream, &mut array));
            }
        }
        assert!(!std::ffi::CStr::from_ptr(batchcorder::ffi::bc_last_error()).is_empty());
        assert_eq!(bc_cache_ingested_count(null_cache), 0);
        assert!(!bc_cache_upstream_exhausted(null_cache));
        bc_cache_free(ptr::null_mut());
        bc_options_free(ptr::null_mut());
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn call_sequences_match_the_model(
        batches in 0..12i64,
        fail_at in proptest::option::of(0..12i64),
        max_readers in proptest::option::of(1..4u64),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let fail_at = fail_at.filter(|&k| k < batches);
        run(batches, fail_at, max_readers, ops);
    }
}
