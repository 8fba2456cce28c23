//! Damaged persisted caches under AddressSanitizer: a real save, cut short or edited (bit
//! flips, 4- and 8-byte values written into a batch's metadata or buffers, the footer,
//! the manifest, the checksums file), optionally resealed with matching checksums (a
//! crafted save), then opened in every verify mode and read to the end.
//!
//!     RUSTC_BOOTSTRAP=1 cargo fuzz run damaged_saves --sanitizer address
//!
//! or `make -f mk/fuzz.mk fuzz-smoke FUZZ_TARGET=damaged_saves` from the repository root.
//!
//! The rule: no crash, no panic, no ASan report; `open` and every read either succeed or
//! fail with `Error::Corrupt` (or `InvalidArgument` for a manifest claiming a newer
//! format); every batch handed out passes arrow's full validation and has the cache's
//! schema; and a batch checked against an untouched checksum is exactly the one saved.
//! The same holds for the arrays of the C stream of the save opened by the C API, where
//! flat batches are exported straight from their messages' buffers, imported under the
//! schema `bc_cache_schema` gives.
//!
//! Before the plain reads, each opened save is read first (where a batch is checked) by
//! one of: every batch by its index and rows by theirs (`batch`/`take`, `bc_cache_batch`/
//! `bc_cache_take`), or a shuffled (windowed, rows too) or sharded reader (`reader_with`,
//! `bc_cache_reader_with`). A checked read must give what a live cache of the pristine
//! batches gives for the same call: the same batches in the same order, the same rows.
//!
//! Then the save is opened again with `max_readers` chosen by the input (or none) and
//! read by interleaved readers (in order, shuffled, windowed, sharded; some closed early
//! so that eviction moves past them) and by index and rows, each call beside the same on
//! a live cache of the pristine batches with the same cap. Until the first `Corrupt`, a
//! checked read gives what the live cache gives, refusals too: only `ReaderCap` for a
//! reader past the cap (a from-start reader after eviction among them), `Evicted` for a
//! batch by index or row that eviction dropped, `OutOfRange` past the end, and a reader
//! never meets `Evicted`.

#![no_main]

use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arbitrary::Arbitrary;
use arrow_array::builder::{
    BinaryViewBuilder, FixedSizeBinaryBuilder, Int32Builder, ListBuilder, MapBuilder, StringBuilder,
};
use arrow_array::types::Int32Type;
use arrow_array::{
    Array, ArrayRef, BooleanArray, Decimal128Array, DictionaryArray, FixedSizeListArray,
    Float64Array, Int16Array, Int32Array, Int64Array, LargeBinaryArray, LargeStringArray,
    ListViewArray, NullArray, RecordBatch, RecordBatchIterator, RunArray, StringArray,
    StringViewArray, StructArray, UnionArray,
};
use arrow_buffer::ScalarBuffer;
use arrow_schema::{DataType, Field, UnionFields};
use batchcorder_core::{
    CacheOptions, Error, OpenOptions, ReadOrder, ReaderOptions, Shard, Shuffle, StreamCache, Verify,
};
use libfuzzer_sys::fuzz_target;

const DATA: usize = 0;
const MANIFEST: usize = 1;
const CHECKSUMS: usize = 2;
const NAMES: [&str; 3] = ["data.arrow", "manifest.json", "checksums.xxh3"];

#[derive(Debug, Clone, Copy, Arbitrary)]
enum File {
    Data,
    Manifest,
    Checksums,
}

impl File {
    fn index(self) -> usize {
        match self {
            File::Data => DATA,
            File::Manifest => MANIFEST,
            File::Checksums => CHECKSUMS,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Edit {
    /// Flip one bit of a file.
    Flip { file: File, at: u32, bit: u8 },
    /// Write 4 aligned bytes into a batch's or dictionary's block: a length, a count, a
    /// 32-bit offset, a flatbuffer field.
    Set32 { block: u8, at: u16, value: i32 },
    /// Write 8 aligned bytes into a block: a buffer's offset or length, a 64-bit offset.
    Set64 { block: u8, at: u16, value: i64 },
    /// Overwrite a byte counted from the end of the data file: trailer, footer, schema.
    FromEnd { back: u16, value: u8 },
    /// Cut a file short.
    Truncate { file: File, keep: u32 },
    /// Set a number in the manifest.
    Manifest { field: u8, value: u64 },
}

#[derive(Debug, Arbitrary)]
struct Input {
    seed: u8,
    edits: Vec<Edit>,
    /// Rewrite the checksums and the manifest to match the edited data file.
    reseal: bool,
    /// Put the data file's modification time back to the manifest's, so that
    /// `Verify::IfModified` does not check checksums.
    restore_mtime: bool,
    /// What reads each freshly opened save first, so that a damaged batch's first read
    /// (where it is checked) happens there.
    access: Access,
    /// The save opened again with a reader cap, and what its readers do.
    capped: Capped,
}

/// Longest step sequence run on a capped save.
const MAX_STEPS: usize = 32;

/// The save opened with `max_readers` (`% 4`, 0 for no cap), then `steps`.
#[derive(Debug, Arbitrary)]
struct Capped {
    max_readers: u8,
    steps: Vec<Step>,
}

impl Capped {
    fn max_readers(&self) -> Option<u64> {
        Some(u64::from(self.max_readers % 4)).filter(|&m| m > 0)
    }
}

/// One call on a capped save (and on the live cache beside it).
#[derive(Debug, Arbitrary)]
enum Step {
    /// A new reader, from the start or the frontier, in order or in `order`.
    Open {
        from_start: bool,
        order: Option<OrderChoice>,
    },
    /// `1 + count % 4` batches from open reader `reader % open`.
    Next { reader: u8, count: u8 },
    /// Close open reader `reader % open` wherever it is, so eviction moves past it.
    Close { reader: u8 },
    /// Batch `index % (batches + 2)` by its index.
    Batch { index: u8 },
    /// Rows by theirs, as [`take_rows`] picks them.
    Take { rows: Vec<u16> },
}

/// The ways into an opened save besides a plain reader.
#[derive(Debug, Arbitrary)]
enum Access {
    /// Nothing: the plain reader reads first.
    Plain,
    /// Every batch by its index and one past the end (`batch`, `bc_cache_batch`), then
    /// rows by theirs (`take`, `bc_cache_take`), each `% (rows + 3)`, some past the end.
    Random { rows: Vec<u16> },
    /// A reader in another order (`reader_with`, `bc_cache_reader_with`).
    Ordered(OrderChoice),
}

/// A shuffle by `seed`, through a window of `window % 5` batches (0: the whole stream),
/// its rows too; shard `shard % count` of `1 + count % 4`.
#[derive(Debug, Clone, Copy, Arbitrary)]
struct OrderChoice {
    seed: Option<u64>,
    window: u8,
    rows: bool,
    shard: u8,
    count: u8,
}

/// The reader options of an [`Access::Ordered`].
struct Order {
    seed: Option<u64>,
    window: Option<u64>,
    rows: bool,
    shard: (u64, u64),
}

impl Order {
    fn new(choice: &OrderChoice) -> Self {
        let OrderChoice {
            seed,
            window,
            rows,
            shard,
            count,
        } = *choice;
        let count = 1 + u64::from(count % 4);
        Self {
            seed,
            window: seed.and(Some(u64::from(window % 5)).filter(|&w| w > 0)),
            rows: seed.is_some() && rows,
            shard: (u64::from(shard) % count, count),
        }
    }

    fn options(&self, from_start: bool) -> ReaderOptions {
        let shuffle = self.seed.map(|seed| Shuffle {
            seed,
            window: self.window,
            rows: self.rows,
        });
        let shard = Shard::new(self.shard.0, self.shard.1).unwrap();
        ReaderOptions {
            from_start,
            order: ReadOrder {
                shuffle,
                shard: Some(shard),
            },
            cast: None,
        }
    }
}

/// A pristine save: its files, its batches, where its blocks lie in the data file, and
/// a cache of the same batches in memory, whose answers an exact read must give.
struct Seed {
    files: [Vec<u8>; 3],
    batches: Vec<RecordBatch>,
    blocks: Vec<Range<usize>>,
    pristine: StreamCache,
}

fn seeds() -> &'static [Seed] {
    static SEEDS: OnceLock<Vec<Seed>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        [everyday(), unusual(), flat()]
            .into_iter()
            .map(save)
            .collect()
    })
}

fn save(batches: Vec<RecordBatch>) -> Seed {
    let dir = tempfile::tempdir().unwrap();
    let schema = batches[0].schema();
    let reader = RecordBatchIterator::new(batches.clone().into_iter().map(Ok), schema);
    let cache = StreamCache::new(Box::new(reader), CacheOptions::default()).unwrap();
    cache.persist(&dir.path().join("save")).unwrap();
    let files = NAMES.map(|name| std::fs::read(dir.path().join("save").join(name)).unwrap());
    let blocks = blocks(&files[DATA]);
    Seed {
        files,
        batches,
        blocks,
        pristine: cache,
    }
}

/// Every dictionary and record batch block of an Arrow IPC file.
fn blocks(data: &[u8]) -> Vec<Range<usize>> {
    let trailer: [u8; 10] = data[data.len() - 10..].try_into().unwrap();
    let footer_len = arrow_ipc::reader::read_footer_length(trailer).unwrap();
    let footer = arrow_ipc::root_as_footer(&data[data.len() - 10 - footer_len..]).unwrap();
    let lists = [footer.dictionaries(), footer.recordBatches()];
    lists
        .into_iter()
        .flatten()
        .flat_map(|list| list.iter().collect::<Vec<_>>())
        .map(|b| {
            let start = b.offset() as usize;
            start..start + b.metaDataLength() as usize + b.bodyLength() as usize
        })
        .collect()
}

/// Common columns: numbers, text (some of it not ASCII), a dictionary, a list, a struct.
fn everyday() -> Vec<RecordBatch> {
    let words = ["alpha", "ñandú", "€uro", "", "z"];
    (0..3)
        .map(|b| {
            let rows = 12 + 4 * b;
            let ids = Int64Array::from_iter_values((0..rows).map(|i| (b * 100 + i) as i64));
            let names: StringArray = (0..rows)
                .map(|i| (i % 4 != 3).then(|| format!("{}-{i}", words[i % words.len()])))
                .collect();
            let kinds: DictionaryArray<Int32Type> =
                (0..rows).map(|i| ["a", "bb", "ccc"][i % 3]).collect();
            let mut lists = ListBuilder::new(Int32Builder::new());
            for i in 0..rows {
                lists.append_value((0..i % 4).map(|v| Some(v as i32)));
            }
            let pair = StructArray::from(vec![
                (
                    Arc::new(Field::new("x", DataType::Float64, false)),
                    Arc::new(Float64Array::from_iter_values(
                        (0..rows).map(|i| i as f64 / 3.0),
                    )) as ArrayRef,
                ),
                (
                    Arc::new(Field::new("ok", DataType::Boolean, true)),
                    Arc::new(BooleanArray::from_iter(
                        (0..rows).map(|i| (i % 5 != 0).then_some(i % 2 == 0)),
                    )),
                ),
            ]);
            let blobs = LargeBinaryArray::from_iter_values((0..rows).map(|i| vec![i as u8; i % 7]));
            RecordBatch::try_from_iter([
                ("id", Arc::new(ids) as ArrayRef),
                ("name", Arc::new(names)),
                ("kind", Arc::new(kinds)),
                ("tags", Arc::new(lists.finish())),
                ("pair", Arc::new(pair)),
                ("blob", Arc::new(blobs)),
            ])
            .unwrap()
        })
        .collect()
}

/// Less common layouts: views, fixed sizes, decimals, list views, maps, unions, run ends,
/// nulls, large strings.
fn unusual() -> Vec<RecordBatch> {
    (0..3)
        .map(|b| {
            let rows = 10 + b;
            let views: StringViewArray = (0..rows)
                .map(|i| {
                    Some(format!("a string longer than twelve bytes, {i}")).filter(|_| i % 3 != 1)
                })
                .collect();
            let mut binary_views = BinaryViewBuilder::new();
            let mut fixed = FixedSizeBinaryBuilder::new(3);
            let mut maps = MapBuilder::new(None, StringBuilder::new(), Int32Builder::new());
            for i in 0..rows {
                binary_views.append_value(vec![b'v'; i * 3]);
                fixed.append_value([i as u8, 1, 2]).unwrap();
                for k in 0..i % 3 {
                    maps.keys().append_value(format!("k{k}"));
                    maps.values().append_value((i * k) as i32);
                }
                maps.append(true).unwrap();
            }
            let decimals = Decimal128Array::from_iter_values((0..rows).map(|i| i as i128 * 1001))
                .with_precision_and_scale(10, 2)
                .unwrap();
            let item = Arc::new(Field::new_list_field(DataType::Int32, true));
            let list_views = ListViewArray::new(
                item,
                ScalarBuffer::from((0..rows).map(|i| (i % 5) as i32).collect::<Vec<_>>()),
                ScalarBuffer::from((0..rows).map(|i| (i % 3) as i32).collect::<Vec<_>>()),
                Arc::new(Int32Array::from_iter_values(0..8)),
                None,
            );
            let union_fields = UnionFields::try_new(
                [0, 5],
                [
                    Field::new("n", DataType::Int32, false),
                    Field::new("s", DataType::Utf8, false),
                ],
            )
            .unwrap();
            let type_ids: Vec<i8> = (0..rows).map(|i| if i % 2 == 0 { 0 } else { 5 }).collect();
            let value_offsets: Vec<i32> = (0..rows).map(|i| (i / 2) as i32).collect();
            let union = UnionArray::try_new(
                union_fields,
                type_ids.into(),
                Some(value_offsets.into()),
                vec![
                    Arc::new(Int32Array::from_iter_values(0..rows.div_ceil(2) as i32)),
                    Arc::new(StringArray::from_iter_values(
                        (0..rows / 2).map(|i| format!("u{i}")),
                    )),
                ],
            )
            .unwrap();
            let runs = RunArray::<Int32Type>::try_new(
                &Int32Array::from(vec![2, 5, rows as i32]),
                &StringArray::from(vec!["run", "ünï", "end"]),
            )
            .unwrap();
            let pairs = FixedSizeListArray::new(
                Arc::new(Field::new_list_field(DataType::Int16, false)),
                2,
                Arc::new(Int16Array::from_iter_values(
                    (0..2 * rows as i16).map(|v| v * 3),
                )),
                None,
            );
            let large = LargeStringArray::from_iter_values((0..rows).map(|i| "ß".repeat(i % 4)));
            RecordBatch::try_from_iter([
                ("view", Arc::new(views) as ArrayRef),
                ("binary_view", Arc::new(binary_views.finish())),
                ("fixed", Arc::new(fixed.finish())),
                ("decimal", Arc::new(decimals)),
                ("list_view", Arc::new(list_views)),
                ("map", Arc::new(maps.finish())),
                ("union", Arc::new(union)),
                ("runs", Arc::new(runs)),
                ("nothing", Arc::new(NullArray::new(rows))),
                ("pairs", Arc::new(pairs)),
                ("large", Arc::new(large)),
            ])
            .unwrap()
        })
        .collect()
}

/// Flat columns only, with nulls: what the reader decodes straight from the message
/// (core/src/ipc_flat.rs) rather than through arrow-ipc.
fn flat() -> Vec<RecordBatch> {
    (0..3)
        .map(|b| {
            let rows = 9 + 5 * b;
            let some = |i: usize| i % 4 != 1;
            let ids = Int64Array::from_iter_values((0..rows).map(|i| (b * 100 + i) as i64));
            let names: StringArray = (0..rows)
                .map(|i| some(i).then(|| format!("ñ{}", "é".repeat(i % 3))))
                .collect();
            let xs = Float64Array::from_iter((0..rows).map(|i| some(i).then_some(i as f64 / 7.0)));
            let flags = BooleanArray::from_iter((0..rows).map(|i| some(i).then_some(i % 3 == 0)));
            let mut fixed = FixedSizeBinaryBuilder::new(3);
            for i in 0..rows {
                match some(i) {
                    true => fixed.append_value([i as u8, 7, 9]).unwrap(),
                    false => fixed.append_null(),
                }
            }
            let small = Int16Array::from_iter((0..rows).map(|i| some(i).then_some(i as i16 - 4)));
            let large = LargeStringArray::from_iter_values((0..rows).map(|i| "ß".repeat(i % 4)));
            let blobs = LargeBinaryArray::from_iter_values((0..rows).map(|i| vec![i as u8; i % 5]));
            let decimals =
                Decimal128Array::from_iter((0..rows).map(|i| some(i).then_some(i as i128)))
                    .with_precision_and_scale(12, 3)
                    .unwrap();
            RecordBatch::try_from_iter([
                ("id", Arc::new(ids) as ArrayRef),
                ("name", Arc::new(names)),
                ("x", Arc::new(xs)),
                ("flag", Arc::new(flags)),
                ("fixed", Arc::new(fixed.finish())),
                ("small", Arc::new(small)),
                ("large", Arc::new(large)),
                ("blob", Arc::new(blobs)),
                ("decimal", Arc::new(decimals)),
            ])
            .unwrap()
        })
        .collect()
}

/// Overwrite `bytes` at `at` (clamped into the file, aligned down to `align`).
fn put(file: &mut [u8], range: Range<usize>, at: usize, align: usize, bytes: &[u8]) {
    if range.len() < bytes.len() {
        return;
    }
    let at = (range.start + at % (range.len() - bytes.len() + 1)) / align * align;
    if at >= range.start && at + bytes.len() <= file.len() {
        file[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

fn apply(edit: &Edit, files: &mut [Vec<u8>; 3], blocks: &[Range<usize>]) {
    let block = |i: u8| blocks.get(i as usize % blocks.len().max(1)).cloned();
    match *edit {
        Edit::Flip { file, at, bit } => {
            let file = &mut files[file.index()];
            if !file.is_empty() {
                let at = at as usize % file.len();
                file[at] ^= 1 << (bit % 8);
            }
        }
        Edit::Set32 {
            block: i,
            at,
            value,
        } => {
            if let Some(range) = block(i) {
                put(&mut files[DATA], range, at.into(), 4, &value.to_le_bytes());
            }
        }
        Edit::Set64 {
            block: i,
            at,
            value,
        } => {
            if let Some(range) = block(i) {
                put(&mut files[DATA], range, at.into(), 8, &value.to_le_bytes());
            }
        }
        Edit::FromEnd { back, value } => {
            let data = &mut files[DATA];
            if let Some(at) = data.len().checked_sub(1 + back as usize % 512) {
                data[at] = value;
            }
        }
        Edit::Truncate { file, keep } => {
            let file = &mut files[file.index()];
            let keep = keep as usize % (file.len() + 1);
            file.truncate(keep);
        }
        Edit::Manifest { field, value } => {
            let keys = [
                "rows",
                "batches",
                "dictionaries",
                "data_bytes",
                "data_modified_ns",
                "format_version",
            ];
            if let Ok(mut manifest) = serde_json::from_slice::<serde_json::Value>(&files[MANIFEST])
            {
                manifest[keys[field as usize % keys.len()]] = value.into();
                files[MANIFEST] = manifest.to_string().into_bytes();
            }
        }
    }
}

/// Set the data file's modification time to the one its manifest records.
fn restore_mtime(dir: &Path) {
    let Ok(text) = std::fs::read(dir.join("manifest.json")) else {
        return;
    };
    let Ok(manifest) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return;
    };
    let Some(ns) = manifest["data_modified_ns"].as_u64() else {
        return;
    };
    let when = SystemTime::UNIX_EPOCH + Duration::from_nanos(ns);
    let file = std::fs::File::options()
        .write(true)
        .open(dir.join("data.arrow"));
    file.and_then(|f| f.set_modified(when)).unwrap();
}

/// A refusal the rules allow.
fn allowed(err: &Error) -> bool {
    match err {
        Error::Corrupt(_) => true,
        Error::InvalidArgument(m) => m.contains("newer than this batchcorder"),
        _ => false,
    }
}

/// Check a batch handed out by the save opened as `cache`: its schema, arrow's full
/// validation of every column, and, when `exact`, that it is `expected`.
fn check_batch(
    what: &str,
    batch: &RecordBatch,
    cache: &StreamCache,
    expected: Option<&RecordBatch>,
    exact: bool,
) {
    assert_eq!(batch.schema(), cache.schema(), "{what}");
    for column in batch.columns() {
        if let Err(err) = column.to_data().validate_full() {
            panic!("{what}: an invalid batch was handed out: {err}");
        }
    }
    if exact {
        assert_eq!(Some(batch), expected, "{what}");
    }
}

/// Read `reader` to its end or its refusal, checking each batch against `expected`.
fn read_all(
    what: &str,
    mut reader: batchcorder_core::CacheReader,
    cache: &StreamCache,
    expected: &[RecordBatch],
    exact: bool,
) {
    for k in 0.. {
        match reader.next_batch() {
            Ok(Some(batch)) => check_batch(
                &format!("{what}, batch {k}"),
                &batch,
                cache,
                expected.get(k),
                exact,
            ),
            Ok(None) => {
                assert!(
                    !exact || k == expected.len(),
                    "{what}: ended after {k} batches"
                );
                break;
            }
            Err(err) if allowed(&err) => break,
            Err(err) => panic!("{what}, batch {k}: read failed with {err:?}"),
        }
    }
}

/// `access` on the save opened as `cache`, before anything else read it.
fn access_first(access: &Access, cache: &StreamCache, seed: &Seed, exact: bool, verify: Verify) {
    match access {
        Access::Plain => {}
        Access::Random { rows } => {
            for i in 0..=seed.batches.len() {
                let what = format!("{verify:?}, cache.batch({i})");
                match cache.batch(i as u64) {
                    Ok(batch) => check_batch(&what, &batch, cache, seed.batches.get(i), exact),
                    Err(Error::OutOfRange(_)) => {
                        assert!(!exact || i == seed.batches.len(), "{what}")
                    }
                    Err(err) if allowed(&err) => {}
                    Err(err) => panic!("{what}: failed with {err:?}"),
                }
            }
            let rows = take_rows(rows, seed);
            let what = format!("{verify:?}, take({rows:?})");
            let expected = seed.pristine.take(&rows);
            match cache.take(&rows) {
                Ok(taken) => check_batch(&what, &taken, cache, expected.as_ref().ok(), exact),
                Err(Error::OutOfRange(_)) => {
                    assert!(
                        !exact || matches!(expected, Err(Error::OutOfRange(_))),
                        "{what}"
                    )
                }
                Err(err) if allowed(&err) => {}
                Err(err) => panic!("{what}: failed with {err:?}"),
            }
        }
        Access::Ordered(choice) => {
            let order = Order::new(choice);
            let expected = ordered(seed, &order);
            let reader = cache.reader_with(order.options(true)).unwrap();
            read_all(
                &format!("{verify:?}, {access:?}"),
                reader,
                cache,
                &expected,
                exact,
            );
        }
    }
}

/// Rows for `take`: at most 16, some past the end of the stream.
fn take_rows(rows: &[u16], seed: &Seed) -> Vec<u64> {
    let total: usize = seed.batches.iter().map(RecordBatch::num_rows).sum();
    rows.iter()
        .take(16)
        .map(|&row| (row as usize % (total + 3)) as u64)
        .collect()
}

/// What the pristine cache gives in `order`.
fn ordered(seed: &Seed, order: &Order) -> Vec<RecordBatch> {
    let reader = seed.pristine.reader_with(order.options(true)).unwrap();
    reader.collect::<Result<_, _>>().unwrap()
}

/// What one call on a capped save gave.
#[derive(Debug)]
enum Got {
    Batch(RecordBatch),
    End,
    Refused(Refusal),
}

/// A refusal, by kind; any other error is a bug.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Corrupt,
    ReaderCap,
    Evicted,
    OutOfRange,
    InvalidArgument,
}

fn refusal(what: &str, err: &Error) -> Refusal {
    match err {
        Error::Corrupt(_) => Refusal::Corrupt,
        Error::ReaderCap { .. } => Refusal::ReaderCap,
        Error::Evicted { .. } => Refusal::Evicted,
        Error::OutOfRange(_) => Refusal::OutOfRange,
        Error::InvalidArgument(_) => Refusal::InvalidArgument,
        _ => panic!("{what}: failed with {err:?}"),
    }
}

/// A cache the steps of a [`Capped`] run on: the save opened in Rust or by the C API,
/// or the live cache beside it. Every batch it hands out is validated in full.
trait Subject {
    type Reader;
    fn new_reader(
        &mut self,
        from_start: bool,
        order: Option<&Order>,
    ) -> Result<Self::Reader, Refusal>;
    fn read_next(&mut self, what: &str, reader: &mut Self::Reader) -> Got;
    fn get_batch(&mut self, what: &str, index: u64) -> Got;
    fn get_rows(&mut self, what: &str, rows: &[u64]) -> Got;
}

/// A cache opened in Rust, or a live one.
struct Rust<'a>(&'a StreamCache);

impl Rust<'_> {
    fn got(&self, what: &str, result: batchcorder_core::Result<Option<RecordBatch>>) -> Got {
        match result {
            Ok(Some(batch)) => {
                check_batch(what, &batch, self.0, None, false);
                Got::Batch(batch)
            }
            Ok(None) => Got::End,
            Err(err) => Got::Refused(refusal(what, &err)),
        }
    }
}

impl Subject for Rust<'_> {
    type Reader = batchcorder_core::CacheReader;

    fn new_reader(
        &mut self,
        from_start: bool,
        order: Option<&Order>,
    ) -> Result<Self::Reader, Refusal> {
        let options = match order {
            Some(order) => order.options(from_start),
            None => ReaderOptions {
                from_start,
                ..ReaderOptions::default()
            },
        };
        self.0
            .reader_with(options)
            .map_err(|err| refusal("reader_with", &err))
    }

    fn read_next(&mut self, what: &str, reader: &mut Self::Reader) -> Got {
        self.got(what, reader.next_batch())
    }

    fn get_batch(&mut self, what: &str, index: u64) -> Got {
        self.got(what, self.0.batch(index).map(Some))
    }

    fn get_rows(&mut self, what: &str, rows: &[u64]) -> Got {
        self.got(what, self.0.take(rows).map(Some))
    }
}

/// A live cache of `seed`'s batches capped at `max_readers`, ingested to its end as an
/// opened save is.
fn live(seed: &Seed, max_readers: Option<u64>) -> StreamCache {
    let schema = seed.batches[0].schema();
    let batches = seed.batches.clone().into_iter().map(Ok);
    let reader = RecordBatchIterator::new(batches, schema);
    let options = CacheOptions {
        max_readers,
        ..CacheOptions::default()
    };
    let cache = StreamCache::new(Box::new(reader), options).unwrap();
    cache.ingest_all().unwrap();
    cache
}

/// Runs `capped`'s steps on `subject` and on a live cache with the same cap, comparing
/// each call's outcome while `exact` holds and no `Corrupt` was met.
struct Run<'a, S: Subject> {
    what: &'a str,
    subject: S,
    reference: Rust<'a>,
    exact: bool,
    broken: bool,
}

impl<S: Subject> Run<'_, S> {
    fn strict(&self) -> bool {
        self.exact && !self.broken
    }

    /// Check `got` against `want` (the live cache's outcome, when there is one): refusals
    /// only of the kinds in `allowed` (or `Corrupt`); false once nothing more will come.
    fn compare(&mut self, what: &str, got: Got, want: Option<Got>, allowed: &[Refusal]) -> bool {
        let strict = self.strict();
        let want = || want.unwrap_or_else(|| panic!("{what}: no live outcome"));
        match got {
            Got::Refused(Refusal::Corrupt) => {
                self.broken = true;
                false
            }
            Got::Refused(refused) => {
                assert!(
                    allowed.contains(&refused),
                    "{what}: refused with {refused:?}"
                );
                if strict {
                    assert!(
                        matches!(want(), Got::Refused(r) if r == refused),
                        "{what}: refused with {refused:?}, a live cache does not"
                    );
                }
                false
            }
            Got::Batch(batch) => {
                if strict {
                    match want() {
                        Got::Batch(expected) => {
                            assert_eq!(batch.columns(), expected.columns(), "{what}")
                        }
                        other => panic!("{what}: gave a batch, a live cache {other:?}"),
                    }
                }
                true
            }
            Got::End => {
                if strict {
                    assert!(
                        matches!(want(), Got::End),
                        "{what}: ended, a live cache does not"
                    );
                }
                false
            }
        }
    }

    /// One batch from an open reader (a reader only ever fails with `Corrupt`); false
    /// once it has ended or failed.
    fn advance(
        &mut self,
        what: &str,
        pair: &mut (S::Reader, Option<batchcorder_core::CacheReader>),
    ) -> bool {
        let got = self.subject.read_next(what, &mut pair.0);
        let want = pair.1.as_mut().map(|r| self.reference.read_next(what, r));
        self.compare(what, got, want, &[])
    }

    fn steps(&mut self, steps: &[Step], seed: &Seed) {
        let batches = seed.batches.len() as u64;
        let mut open: Vec<(S::Reader, Option<batchcorder_core::CacheReader>)> = Vec::new();
        let mut done: Vec<bool> = Vec::new();
        for (k, step) in steps.iter().take(MAX_STEPS).enumerate() {
            let what = format!("{}, step {k}: {step:?}", self.what);
            let pick = |i: u8| (!open.is_empty()).then(|| i as usize % open.len());
            match step {
                Step::Open { from_start, order } => {
                    let order = order.as_ref().map(Order::new);
                    let got = self.subject.new_reader(*from_start, order.as_ref());
                    let want = self.reference.new_reader(*from_start, order.as_ref());
                    match got {
                        Ok(reader) => {
                            if self.strict() {
                                assert!(want.is_ok(), "{what}: a live cache refuses {want:?}");
                            }
                            open.push((reader, want.ok()));
                            done.push(false);
                        }
                        Err(refused) => {
                            let want = want.err().map(Got::Refused);
                            let allowed = [Refusal::ReaderCap, Refusal::InvalidArgument];
                            self.compare(&what, Got::Refused(refused), want, &allowed);
                        }
                    }
                }
                Step::Next { reader, count } => {
                    if let Some(i) = pick(*reader) {
                        for _ in 0..=count % 4 {
                            if done[i] || !self.advance(&what, &mut open[i]) {
                                done[i] = true;
                                break;
                            }
                        }
                    }
                }
                Step::Close { reader } => {
                    if let Some(i) = pick(*reader) {
                        open.remove(i);
                        done.remove(i);
                    }
                }
                Step::Batch { index } => {
                    let index = u64::from(*index) % (batches + 2);
                    let got = self.subject.get_batch(&what, index);
                    let want = self.reference.get_batch(&what, index);
                    let allowed = [Refusal::OutOfRange, Refusal::Evicted];
                    self.compare(&what, got, Some(want), &allowed);
                }
                Step::Take { rows } => {
                    let rows = take_rows(rows, seed);
                    let got = self.subject.get_rows(&what, &rows);
                    let want = self.reference.get_rows(&what, &rows);
                    let allowed = [Refusal::OutOfRange, Refusal::Evicted];
                    self.compare(&what, got, Some(want), &allowed);
                }
            }
        }
        // The rest, round robin, to their ends.
        while done.contains(&false) {
            for (i, pair) in open.iter_mut().enumerate() {
                if !done[i] {
                    let what = format!("{}, draining reader {i}", self.what);
                    done[i] = !self.advance(&what, pair);
                }
            }
        }
    }
}

/// `capped`'s steps on `subject`, beside a live cache with the same cap.
fn run_capped<S: Subject>(what: &str, subject: S, capped: &Capped, seed: &Seed, exact: bool) {
    let reference = live(seed, capped.max_readers());
    let mut run = Run {
        what,
        subject,
        reference: Rust(&reference),
        exact,
        broken: false,
    };
    run.steps(&capped.steps, seed);
}

mod c {
    //! The same reads through the C API, on the save it opens.

    use super::*;
    use arrow_schema::{Fields, Schema};
    use batchcorder::abi::{ArrowArray, ArrowArrayStream, ArrowSchema};
    use batchcorder::cache::BcCache;
    use batchcorder::persist::{
        bc_cache_open, BC_VERIFY_ALWAYS, BC_VERIFY_IF_MODIFIED, BC_VERIFY_NEVER,
    };
    use batchcorder::reader_options as ro;
    use batchcorder::{bc_last_error_kind, BcErrorKind, BcStatus};

    /// The save opened by the C API, capped at `max_readers`; `None` when it refuses it
    /// (as it may only with `BC_CORRUPT`, or `BC_INVALID_ARGUMENT` for a newer format).
    pub fn open(save: &Path, verify: Verify, max_readers: Option<u64>) -> Option<*mut BcCache> {
        let path = std::ffi::CString::new(save.to_str().unwrap()).unwrap();
        let verify = match verify {
            Verify::Never => BC_VERIFY_NEVER,
            Verify::IfModified => BC_VERIFY_IF_MODIFIED,
            Verify::Always => BC_VERIFY_ALWAYS,
        };
        let mut cache = std::ptr::null_mut();
        // SAFETY: a NUL-terminated path, NULL or our own options, NULL info, a writable
        // out; the options freed once.
        let opened = unsafe {
            let opts = match max_readers {
                Some(max) => {
                    let opts = batchcorder::options::bc_options_new();
                    let status = batchcorder::options::bc_options_set_max_readers(opts, max);
                    assert_eq!(status, BcStatus::BC_OK);
                    opts
                }
                None => std::ptr::null_mut(),
            };
            let opened = bc_cache_open(
                path.as_ptr(),
                verify,
                opts,
                std::ptr::null_mut(),
                &mut cache,
            );
            batchcorder::options::bc_options_free(opts);
            opened
        };
        if opened != BcStatus::BC_OK {
            assert!(matches!(
                opened,
                BcStatus::BC_CORRUPT | BcStatus::BC_INVALID_ARGUMENT
            ));
            return None;
        }
        Some(cache)
    }

    /// The cache's schema, as `bc_cache_schema` gives it.
    fn fields(cache: *mut BcCache) -> Fields {
        let mut schema = ArrowSchema::RELEASED;
        // SAFETY: a live cache, a writable out.
        let status = unsafe { batchcorder::cache::bc_cache_schema(cache, &mut schema) };
        assert_eq!(status, BcStatus::BC_OK, "bc_cache_schema: {}", last_error());
        // SAFETY: an exported schema, released by the import.
        let ffi = unsafe { schema.into_ffi() };
        Schema::try_from(&ffi).unwrap().fields().clone()
    }

    /// Import `array` of the cache's struct type and validate it in full.
    fn import(what: &str, array: ArrowArray, fields: &Fields) -> RecordBatch {
        // SAFETY: an array of the cache's struct type, released by the import.
        let data = unsafe {
            arrow_array::ffi::from_ffi_and_data_type(
                array.into_ffi(),
                DataType::Struct(fields.clone()),
            )
        }
        .unwrap();
        if let Err(err) = data.validate_full() {
            panic!("C, {what}: an invalid array was handed out: {err}");
        }
        RecordBatch::from(StructArray::from(data))
    }

    fn check(what: &str, batch: &RecordBatch, expected: Option<&RecordBatch>, exact: bool) {
        if exact {
            assert_eq!(
                Some(batch.columns()),
                expected.map(RecordBatch::columns),
                "C, {what}"
            );
        }
    }

    /// A refusal of a read, which may only be `BC_CORRUPT`, or past the end when
    /// `past_end` says that is possible.
    fn refused(what: &str, refused: Refusal, past_end: bool) {
        assert!(
            refused == Refusal::Corrupt || (past_end && refused == Refusal::OutOfRange),
            "C, {what}: {refused:?}"
        );
    }

    /// A failed call's status (and `bc_last_error_kind()`), by kind; any other is a bug.
    fn refusal(what: &str, status: BcStatus) -> Refusal {
        match status {
            BcStatus::BC_CORRUPT => Refusal::Corrupt,
            BcStatus::BC_EVICTED => Refusal::Evicted,
            BcStatus::BC_INVALID_ARGUMENT => match bc_last_error_kind() {
                BcErrorKind::BC_ERROR_KIND_READER_CAP => Refusal::ReaderCap,
                BcErrorKind::BC_ERROR_KIND_OUT_OF_RANGE => Refusal::OutOfRange,
                BcErrorKind::BC_ERROR_KIND_NONE => Refusal::InvalidArgument,
            },
            _ => panic!("C, {what}: {status:?}: {}", last_error()),
        }
    }

    /// `bc_cache_batch(index)`.
    fn batch(cache: *mut BcCache, fields: &Fields, what: &str, index: u64) -> Got {
        let mut array = ArrowArray::RELEASED;
        // SAFETY: a live cache, a writable out.
        let status =
            unsafe { batchcorder::random_access::bc_cache_batch(cache, index, &mut array) };
        match status {
            BcStatus::BC_OK => Got::Batch(import(what, array, fields)),
            _ => Got::Refused(refusal(what, status)),
        }
    }

    /// `bc_cache_take(rows)`.
    fn take(cache: *mut BcCache, fields: &Fields, what: &str, rows: &[u64]) -> Got {
        let mut array = ArrowArray::RELEASED;
        // SAFETY: a live cache, `rows.len()` rows, a writable out.
        let status = unsafe {
            batchcorder::random_access::bc_cache_take(cache, rows.as_ptr(), rows.len(), &mut array)
        };
        match status {
            BcStatus::BC_OK => Got::Batch(import(what, array, fields)),
            _ => Got::Refused(refusal(what, status)),
        }
    }

    /// The next batch of a stream of ours; its failure as `bc_reader_failure` says.
    fn next(stream: &mut ArrowArrayStream, fields: &Fields, what: &str) -> Got {
        let mut array = ArrowArray::RELEASED;
        // SAFETY: a live stream of ours, a writable out.
        let rc = unsafe { (stream.get_next.unwrap())(stream, &mut array) };
        if rc != 0 {
            // SAFETY: a live stream made by the library.
            let failure = unsafe { batchcorder::export::bc_reader_failure(stream) };
            return Got::Refused(refusal(what, failure));
        }
        if array.release.is_none() {
            return Got::End;
        }
        Got::Batch(import(what, array, fields))
    }

    /// A reader from `bc_cache_reader_with`, from the start or the frontier, in order or
    /// in `order`.
    fn reader_with(
        cache: *mut BcCache,
        from_start: bool,
        order: Option<&Order>,
    ) -> Result<ArrowArrayStream, BcStatus> {
        // SAFETY: the builder calls on a builder of ours, freed once.
        unsafe {
            let opts = ro::bc_reader_options_new();
            assert_eq!(
                ro::bc_reader_options_set_from_start(opts, from_start),
                BcStatus::BC_OK
            );
            if let Some(order) = order {
                if let Some(seed) = order.seed {
                    assert_eq!(
                        ro::bc_reader_options_set_shuffle(opts, seed),
                        BcStatus::BC_OK
                    );
                }
                if let Some(window) = order.window {
                    assert_eq!(
                        ro::bc_reader_options_set_shuffle_window(opts, window),
                        BcStatus::BC_OK
                    );
                }
                assert_eq!(
                    ro::bc_reader_options_set_shuffle_rows(opts, order.rows),
                    BcStatus::BC_OK
                );
                let (index, count) = order.shard;
                assert_eq!(
                    ro::bc_reader_options_set_shard(opts, index, count),
                    BcStatus::BC_OK
                );
            }
            let mut stream = ArrowArrayStream::RELEASED;
            let status = ro::bc_cache_reader_with(cache, opts, std::ptr::null(), &mut stream);
            ro::bc_reader_options_free(opts);
            match status {
                BcStatus::BC_OK => Ok(stream),
                _ => Err(status),
            }
        }
    }

    /// A stream of ours, released when dropped.
    pub struct Stream(ArrowArrayStream);

    impl Drop for Stream {
        fn drop(&mut self) {
            if let Some(release) = self.0.release {
                // SAFETY: a live stream, released once.
                unsafe { release(&mut self.0) };
            }
        }
    }

    /// A save opened by the C API, as the steps of a [`Capped`] see it.
    pub struct Opened {
        cache: *mut BcCache,
        fields: Fields,
    }

    impl Opened {
        pub fn new(cache: *mut BcCache) -> Self {
            Self {
                cache,
                fields: fields(cache),
            }
        }
    }

    impl Subject for Opened {
        type Reader = Stream;

        fn new_reader(
            &mut self,
            from_start: bool,
            order: Option<&Order>,
        ) -> Result<Stream, Refusal> {
            reader_with(self.cache, from_start, order)
                .map(Stream)
                .map_err(|status| refusal("bc_cache_reader_with", status))
        }

        fn read_next(&mut self, what: &str, reader: &mut Stream) -> Got {
            next(&mut reader.0, &self.fields, what)
        }

        fn get_batch(&mut self, what: &str, index: u64) -> Got {
            batch(self.cache, &self.fields, what, index)
        }

        fn get_rows(&mut self, what: &str, rows: &[u64]) -> Got {
            take(self.cache, &self.fields, what, rows)
        }
    }

    pub fn access_first(cache: *mut BcCache, access: &Access, seed: &Seed, exact: bool) {
        let fields = fields(cache);
        match access {
            Access::Plain => {}
            Access::Random { rows } => {
                let n = seed.batches.len();
                for i in 0..=n {
                    let what = format!("bc_cache_batch({i})");
                    match batch(cache, &fields, &what, i as u64) {
                        Got::Batch(got) => check(&what, &got, seed.batches.get(i), exact),
                        Got::End => unreachable!(),
                        Got::Refused(refusal) => refused(&what, refusal, !exact || i == n),
                    }
                }
                let rows = take_rows(rows, seed);
                let what = format!("bc_cache_take({rows:?})");
                let expected = seed.pristine.take(&rows);
                match take(cache, &fields, &what, &rows) {
                    Got::Batch(got) => check(&what, &got, expected.as_ref().ok(), exact),
                    Got::End => unreachable!(),
                    Got::Refused(refusal) => refused(&what, refusal, !exact || expected.is_err()),
                }
            }
            Access::Ordered(choice) => {
                let order = Order::new(choice);
                let expected = ordered(seed, &order);
                let stream = reader_with(cache, true, Some(&order)).unwrap();
                read_stream(&format!("{access:?}"), stream, &fields, &expected, exact);
            }
        }
    }

    /// The plain C stream of `cache`.
    pub fn read_plain(cache: *mut BcCache, seed: &Seed, exact: bool) {
        let mut stream = ArrowArrayStream::RELEASED;
        // SAFETY: a live cache, no requested schema, a writable out.
        let status = unsafe {
            batchcorder::cache::bc_cache_reader(cache, true, std::ptr::null(), &mut stream)
        };
        assert_eq!(status, BcStatus::BC_OK);
        read_stream("C stream", stream, &fields(cache), &seed.batches, exact);
    }

    /// Read `stream` to its end or its refusal (only `BC_CORRUPT`), then release it.
    fn read_stream(
        what: &str,
        mut stream: ArrowArrayStream,
        fields: &Fields,
        expected: &[RecordBatch],
        exact: bool,
    ) {
        for k in 0.. {
            let what = format!("{what}, batch {k}");
            match next(&mut stream, fields, &what) {
                Got::Batch(got) => check(&what, &got, expected.get(k), exact),
                Got::End => {
                    assert!(
                        !exact || k == expected.len(),
                        "C, {what}: ended after {k} batches"
                    );
                    break;
                }
                Got::Refused(refusal) => {
                    assert_eq!(refusal, Refusal::Corrupt, "C, {what}");
                    break;
                }
            }
        }
        // SAFETY: a live stream, released once.
        unsafe { (stream.release.unwrap())(&mut stream) };
    }

    /// `bc_last_error()`'s message.
    fn last_error() -> String {
        let message = batchcorder::bc_last_error();
        if message.is_null() {
            return String::new();
        }
        // SAFETY: a NUL-terminated string, valid until the next call on this thread.
        unsafe { std::ffi::CStr::from_ptr(message) }
            .to_string_lossy()
            .into_owned()
    }

    pub fn free(cache: *mut BcCache) {
        // SAFETY: a live cache, freed once.
        unsafe { batchcorder::cache::bc_cache_free(cache) };
    }
}

fuzz_target!(|input: Input| {
    let seeds = seeds();
    let seed = &seeds[input.seed as usize % seeds.len()];
    let mut files = seed.files.clone();
    for edit in input.edits.iter().take(8) {
        apply(edit, &mut files, &seed.blocks);
    }
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("save");
    std::fs::create_dir(&save).unwrap();
    for (name, bytes) in NAMES.iter().zip(&files) {
        std::fs::write(save.join(name), bytes).unwrap();
    }
    if input.reseal {
        // A footer that no longer parses cannot be resealed: the save stays as edited.
        let _ = batchcorder_core::save::reseal(&save);
    }
    if input.restore_mtime {
        restore_mtime(&save);
    }
    // Unchanged bytes under an unchanged checksum must come back exactly.
    let exact_when_checked = !input.reseal;
    for verify in [Verify::Never, Verify::IfModified, Verify::Always] {
        let options = OpenOptions {
            verify,
            ..Default::default()
        };
        let cache = match StreamCache::open(&save, &options) {
            Ok((cache, _)) => cache,
            Err(err) if allowed(&err) => continue,
            Err(err) => panic!("{verify:?}: open failed with {err:?}"),
        };
        // The harness rewrote the data file: only a restored time skips the checksums.
        let checked =
            verify == Verify::Always || (verify == Verify::IfModified && !input.restore_mtime);
        let exact = checked && exact_when_checked;
        access_first(&input.access, &cache, seed, exact, verify);
        for pass in 0..2 {
            let reader = cache.reader(true).unwrap();
            read_all(
                &format!("{verify:?}, pass {pass}"),
                reader,
                &cache,
                &seed.batches,
                exact,
            );
        }
        assert!(cache.stats().is_ok(), "{verify:?}: the cache is poisoned");
        if let Some(opened) = c::open(&save, verify, None) {
            c::access_first(opened, &input.access, seed, exact);
            c::read_plain(opened, seed, exact);
            c::free(opened);
        }
        if input.capped.steps.is_empty() {
            continue;
        }
        let max_readers = input.capped.max_readers();
        let options = OpenOptions {
            verify,
            max_readers,
        };
        match StreamCache::open(&save, &options) {
            Ok((cache, _)) => {
                let what = format!("{verify:?}, max_readers {max_readers:?}");
                run_capped(&what, Rust(&cache), &input.capped, seed, exact);
                assert!(cache.stats().is_ok(), "{what}: the cache is poisoned");
            }
            Err(err) if allowed(&err) => {}
            Err(err) => panic!("{verify:?}, max_readers {max_readers:?}: open failed with {err:?}"),
        }
        if let Some(opened) = c::open(&save, verify, max_readers) {
            let what = format!("C, {verify:?}, max_readers {max_readers:?}");
            run_capped(&what, c::Opened::new(opened), &input.capped, seed, exact);
            c::free(opened);
        }
    }
});
