//! Persisted caches through the Rust core: real directories, real files, real threads.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{DictionaryArray, Int64Array, RecordBatch, RecordBatchIterator, StringArray};
use arrow_schema::{DataType, Field, Schema};
use batchcorder_core::{
    CacheOptions, DiskOptions, Error, OpenOptions, ReadOrder, ReaderOptions, Shard, StreamCache,
    Verify,
};

fn batches(count: usize, rows: usize) -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new(
            "kind",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            true,
        ),
    ]));
    (0..count)
        .map(|b| {
            let start = (b * rows) as i64;
            let ids = Int64Array::from_iter_values(start..start + rows as i64);
            let names =
                StringArray::from_iter_values((0..rows).map(|i| format!("n{}", start + i as i64)));
            let kinds: DictionaryArray<Int32Type> =
                (0..rows).map(|i| ["a", "b", "c"][i % 3]).collect();
            RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(ids), Arc::new(names), Arc::new(kinds)],
            )
            .unwrap()
        })
        .collect()
}

fn cache_over(source: Vec<RecordBatch>, options: CacheOptions) -> StreamCache {
    let schema = source[0].schema();
    let reader = RecordBatchIterator::new(source.into_iter().map(Ok), schema);
    StreamCache::new(Box::new(reader), options).unwrap()
}

fn read_all(cache: &StreamCache) -> Vec<RecordBatch> {
    cache.reader(true).unwrap().map(|b| b.unwrap()).collect()
}

fn open(path: &Path) -> Result<StreamCache, Error> {
    StreamCache::open(path, &OpenOptions::default()).map(|(cache, _)| cache)
}

fn saved(dir: &Path) -> (Vec<RecordBatch>, PathBuf) {
    let source = batches(5, 100);
    let target = dir.join("saved");
    let cache = cache_over(source.clone(), CacheOptions::default());
    let info = cache.persist(&target).unwrap();
    assert_eq!((info.batches, info.rows, info.id.len()), (5, 500, 32));
    (source, target)
}

#[test]
fn a_persisted_cache_opens_with_the_same_batches_from_memory_and_disk_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let source = batches(7, 50);
    let disk = CacheOptions {
        memory_capacity: Some(1),
        disk: Some(DiskOptions::new(dir.path().join("spill"), 1 << 30)),
        ..Default::default()
    };
    for (name, options) in [("memory", CacheOptions::default()), ("disk", disk)] {
        let target = dir.path().join(name);
        let cache = cache_over(source.clone(), options);
        cache.persist(&target).unwrap();
        let names: Vec<_> = fs::read_dir(&target)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, ["checksums.xxh3", "data.arrow", "manifest.json"]);
        let opened = open(&target).unwrap();
        assert_eq!(read_all(&opened), source, "{name}");
        assert_eq!(read_all(&opened), source, "{name}, second pass");
        assert!(opened.upstream_exhausted());
        assert_eq!(opened.stats().unwrap().rows_ingested, 350);
        // The source cache still serves its readers after the save.
        assert_eq!(read_all(&cache), source);
    }
}

#[test]
fn a_save_deleted_while_open_keeps_the_arrays_read_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = saved(dir.path());
    let cache = open(&target).unwrap();
    let first = cache.reader(true).unwrap().next_batch().unwrap().unwrap();
    match fs::remove_dir_all(&target) {
        Ok(()) => assert!(!target.exists()),
        // Windows refuses to delete a mapped file (docs/processes.md, "Windows").
        Err(err) if cfg!(windows) => {
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
            assert!(target.join("data.arrow").exists());
        }
        Err(err) => panic!("{err}"),
    }
    assert_eq!(first, source[0]);
    drop(cache);
    assert_eq!(first, source[0]);
    drop(first);
    if target.exists() {
        fs::remove_dir_all(&target).unwrap();
    }
}

#[test]
fn the_data_file_is_a_plain_arrow_ipc_file() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = saved(dir.path());
    let file = fs::File::open(target.join("data.arrow")).unwrap();
    let reader = arrow_ipc::reader::FileReader::try_new(file, None).unwrap();
    assert_eq!(reader.schema(), source[0].schema());
    let read: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    assert_eq!(read, source);
}

#[test]
fn many_threads_read_one_opened_cache_and_many_opens_coexist() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = saved(dir.path());
    let first = open(&target).unwrap();
    let second = open(&target).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let cache = if i % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            thread::spawn(move || read_all(&cache))
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), source);
    }
    // Closing an opened cache deletes nothing.
    first.close().unwrap();
    assert_eq!(read_all(&open(&target).unwrap()), source);
}

#[test]
fn max_readers_on_an_opened_cache_caps_readers_and_deletes_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = saved(dir.path());
    let options = OpenOptions {
        max_readers: Some(1),
        ..Default::default()
    };
    let (cache, _) = StreamCache::open(&target, &options).unwrap();
    assert_eq!(read_all(&cache), source);
    assert!(matches!(cache.reader(true), Err(Error::ReaderCap { .. })));
    assert_eq!(cache.stats().unwrap().batches_evicted, 5);
    assert_eq!(read_all(&open(&target).unwrap()), source);
}

#[test]
fn rows_after_batches_evicted_unread_from_an_opened_cache_can_still_be_taken() {
    let dir = tempfile::tempdir().unwrap();
    let (_, target) = saved(dir.path());
    for verify in [Verify::Never, Verify::Always] {
        let options = OpenOptions {
            verify,
            max_readers: Some(1),
        };
        let (cache, _) = StreamCache::open(&target, &options).unwrap();
        let mut reader = cache.reader(true).unwrap();
        reader.next_batch().unwrap();
        reader.next_batch().unwrap();
        // Batches 0 and 1 are gone before any `take` learnt their rows.
        assert!(matches!(cache.take(&[50]), Err(Error::Evicted { .. })));
        let taken = cache.take(&[250, 499]).unwrap();
        let ids = taken
            .column(0)
            .as_primitive::<Int64Type>()
            .values()
            .to_vec();
        assert_eq!(ids, [250, 499], "{verify:?}");
        assert!(matches!(cache.take(&[500]), Err(Error::OutOfRange(_))));
    }
}

#[test]
fn eviction_stops_at_a_damaged_batch_no_reader_read_so_that_take_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, target) = saved(dir.path());
    let data = target.join("data.arrow");
    let mut bytes = fs::read(&data).unwrap();
    let last = batch_block(&bytes, 1).end - 1;
    bytes[last] ^= 0xff;
    fs::write(&data, bytes).unwrap();
    let options = OpenOptions {
        verify: Verify::Always,
        max_readers: Some(1),
    };
    let (cache, _) = StreamCache::open(&target, &options).unwrap();
    let shard = ReaderOptions {
        order: ReadOrder {
            shuffle: None,
            shard: Some(Shard::new(0, 2).unwrap()),
        },
        ..ReaderOptions::from_start()
    };
    // Shard 0 of 2 reads batches 0, 2 and 4, passing the damaged batch 1 unread.
    let mut reader = cache.reader_with(shard).unwrap();
    reader.next_batch().unwrap();
    reader.next_batch().unwrap();
    assert_eq!(cache.stats().unwrap().batches_evicted, 1);
    assert!(matches!(cache.take(&[150]), Err(Error::Corrupt(_))));
    assert!(matches!(cache.take(&[50]), Err(Error::Evicted { .. })));
}

#[test]
fn an_edited_batch_is_refused_at_its_read_and_the_batches_before_it_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = saved(dir.path());
    // Flip the last byte of the third batch's body: a value, not the structure.
    let data = target.join("data.arrow");
    let mut bytes = fs::read(&data).unwrap();
    let ids = source[2].column(0).as_primitive::<Int64Type>().values();
    let needle: Vec<u8> = ids.iter().take(4).flat_map(|v| v.to_le_bytes()).collect();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("the third batch's ids are in the file");
    bytes[at] ^= 0x01;
    fs::write(&data, &bytes).unwrap();

    let cache = open(&target).unwrap();
    let mut reader = cache.reader(true).unwrap();
    assert_eq!(reader.next().unwrap().unwrap(), source[0]);
    assert_eq!(reader.next().unwrap().unwrap(), source[1]);
    let err = reader.next().unwrap().unwrap_err().to_string();
    assert!(err.contains("does not match its checksum"), "{err}");

    // Without verification the edit is not caught, but nothing crashes either.
    let trusting = OpenOptions {
        verify: Verify::Never,
        ..Default::default()
    };
    let (cache, _) = StreamCache::open(&target, &trusting).unwrap();
    let read = read_all(&cache);
    assert_eq!(read.len(), 5);
    assert_ne!(read[2], source[2]);

    // By default, a file whose modification time is the one saved is trusted (so an edit
    // that also resets the time goes unseen); Verify::Always still catches it.
    let manifest = fs::read_to_string(target.join("manifest.json")).unwrap();
    let saved_ns: u64 = manifest
        .split("\"data_modified_ns\": ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .unwrap()
        .parse()
        .unwrap();
    set_modified_ns(&data, saved_ns);
    let read = read_all(&open(&target).unwrap());
    assert_ne!(read[2], source[2]);
    let always = OpenOptions {
        verify: Verify::Always,
        ..Default::default()
    };
    let (cache, _) = StreamCache::open(&target, &always).unwrap();
    assert!(cache.reader(true).unwrap().nth(2).unwrap().is_err());
}

fn set_modified_ns(path: &Path, ns: u64) {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(ns);
    let file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.set_times(fs::FileTimes::new().set_accessed(at).set_modified(at))
        .unwrap();
}

fn corrupt(open_result: Result<StreamCache, Error>, expected: &str) {
    match open_result {
        Err(Error::Corrupt(message)) => assert!(message.contains(expected), "{message}"),
        Err(other) => panic!("expected Corrupt({expected}), got {other:?}"),
        Ok(_) => panic!("expected Corrupt({expected}), the cache opened"),
    }
}

#[test]
fn damaged_truncated_or_foreign_directories_are_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (_, target) = saved(dir.path());
    let copy = |name: &str| {
        let to = dir.path().join(name);
        fs::create_dir(&to).unwrap();
        for entry in fs::read_dir(&target).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
        to
    };

    let truncated = copy("truncated");
    let data = fs::read(truncated.join("data.arrow")).unwrap();
    fs::write(truncated.join("data.arrow"), &data[..data.len() - 100]).unwrap();
    corrupt(open(&truncated), "truncated or edited");

    let footer = copy("footer");
    let mut data = fs::read(footer.join("data.arrow")).unwrap();
    let at = data.len() - 40;
    data[at] ^= 0xff;
    fs::write(footer.join("data.arrow"), &data).unwrap();
    assert!(matches!(open(&footer), Err(Error::Corrupt(_))));

    let sums = copy("sums");
    let mut bytes = fs::read(sums.join("checksums.xxh3")).unwrap();
    bytes[0] ^= 1;
    fs::write(sums.join("checksums.xxh3"), &bytes).unwrap();
    corrupt(open(&sums), "checksums.xxh3 does not match the manifest");

    let missing = copy("missing");
    fs::remove_file(missing.join("data.arrow")).unwrap();
    corrupt(open(&missing), "data.arrow is missing");

    let garbled = copy("garbled");
    fs::write(garbled.join("manifest.json"), b"{not json").unwrap();
    corrupt(open(&garbled), "not JSON");

    let foreign = dir.path().join("foreign");
    fs::create_dir(&foreign).unwrap();
    fs::write(foreign.join("notes.txt"), b"someone else's").unwrap();
    corrupt(open(&foreign), "holds no manifest.json");
    fs::write(foreign.join("manifest.json"), br#"{"format": "other"}"#).unwrap();
    corrupt(open(&foreign), "is not a persisted batchcorder cache");

    let newer = copy("newer");
    let manifest = fs::read_to_string(newer.join("manifest.json")).unwrap();
    fs::write(
        newer.join("manifest.json"),
        manifest.replace("\"format_version\": 1", "\"format_version\": 99"),
    )
    .unwrap();
    match open(&newer) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("format version 99"), "{m}"),
        other => panic!("{other:?}"),
    }

    match open(&dir.path().join("nowhere")) {
        Err(Error::Io { errno, .. }) => assert_eq!(errno, libc::ENOENT),
        other => panic!("{other:?}"),
    }
    match open(&target.join("manifest.json")) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("it is a file"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Nothing was deleted from any of them.
    assert!(foreign.join("notes.txt").exists());
    assert!(target.join("data.arrow").exists());
}

#[test]
fn a_schema_arrow_cannot_make_arrays_of_is_corrupt_at_open() {
    // Run ends must be signed integers: arrow-ipc reads UInt32 ones, arrow-array panics
    // on an array of them, as an empty `take` made one. Such a save is crafted: the cache
    // never holds a batch of that type, so this one holds none.
    let run_ends = Field::new("run_ends", DataType::UInt32, false);
    let values = Field::new("values", DataType::Utf8, true);
    let runs = DataType::RunEndEncoded(Arc::new(run_ends), Arc::new(values));
    let schema = Arc::new(Schema::new(vec![Field::new("runs", runs, true)]));
    let reader = RecordBatchIterator::new(Vec::new(), schema);
    let cache = StreamCache::new(Box::new(reader), CacheOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("crafted");
    cache.persist(&target).unwrap();
    corrupt(open(&target), "has a type arrow cannot make arrays of");
}

#[test]
fn persist_refuses_a_taken_path_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_over(batches(2, 10), CacheOptions::default());
    let file = dir.path().join("a-file");
    fs::write(&file, b"keep me").unwrap();
    let full = dir.path().join("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("theirs"), b"keep me too").unwrap();
    for taken in [&file, &full] {
        match cache.persist(taken) {
            Err(Error::InvalidArgument(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(fs::read(&file).unwrap(), b"keep me");
    assert_eq!(fs::read(full.join("theirs")).unwrap(), b"keep me too");
    match cache.persist(&dir.path().join("no/such/parent")) {
        Err(Error::Io { errno, .. }) => assert_eq!(errno, libc::ENOENT),
        other => panic!("{other:?}"),
    }
    // An empty directory is taken; a second save to the same path is refused.
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    cache.persist(&empty).unwrap();
    assert!(matches!(
        cache.persist(&empty),
        Err(Error::InvalidArgument(_))
    ));
    // Only the saves are left: no staging folder.
    let mut left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["a-file", "empty", "full"]);
}

#[test]
fn two_saves_to_one_path_at_once_leave_one_whole_save() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("race");
    let source = batches(20, 1000);
    let results: Vec<_> = (0..4)
        .map(|_| {
            let cache = cache_over(source.clone(), CacheOptions::default());
            let target = target.clone();
            thread::spawn(move || cache.persist(&target))
        })
        .map(|h| h.join().unwrap())
        .collect();
    let won = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{results:?}");
    for lost in results.iter().filter_map(|r| r.as_ref().err()) {
        assert!(matches!(lost, Error::InvalidArgument(_)), "{lost:?}");
    }
    assert_eq!(read_all(&open(&target).unwrap()), source);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn an_abandoned_staging_folder_is_removed_by_the_next_save_but_a_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    // A save that died: a staging folder whose owner file nobody holds.
    let dead = dir.path().join("batchcorder-dead01");
    fs::create_dir(&dead).unwrap();
    fs::write(dead.join("owner.lock"), b"").unwrap();
    fs::write(dead.join("data.arrow"), b"half").unwrap();
    // Another program's folder that merely looks like ours.
    let lookalike = dir.path().join("batchcorder-notes");
    fs::create_dir(&lookalike).unwrap();
    fs::write(lookalike.join("readme"), b"mine").unwrap();
    // A live cache's spill folder in the same parent.
    let live = cache_over(
        batches(2, 10),
        CacheOptions {
            disk: Some(DiskOptions::new(dir.path(), 1 << 20)),
            ..Default::default()
        },
    );
    live.ingest_all().unwrap();
    let live_folder = live.disk_directory().unwrap();

    let cache = cache_over(batches(2, 10), CacheOptions::default());
    cache.persist(&dir.path().join("saved")).unwrap();
    assert!(!dead.exists());
    assert!(lookalike.join("readme").exists());
    assert!(live_folder.exists());
    assert_eq!(read_all(&live).len(), 2);
    // The half-written folder, had it stayed, would not open either.
    corrupt(open(&lookalike), "holds no manifest.json");
}

#[test]
fn share_gives_the_opened_or_persisted_copy_and_saves_a_disk_cache_once() {
    let dir = tempfile::tempdir().unwrap();
    let memory = cache_over(batches(3, 10), CacheOptions::default());
    assert!(matches!(memory.share(), Err(Error::InvalidArgument(_))));
    let info = memory.persist(&dir.path().join("kept")).unwrap();
    assert_eq!(memory.share().unwrap(), info);
    let (opened, _) = StreamCache::open(&info.path, &OpenOptions::default()).unwrap();
    assert_eq!(opened.share().unwrap(), info);

    let disk = cache_over(
        batches(3, 10),
        CacheOptions {
            disk: Some(DiskOptions::new(dir.path().join("spill"), 1 << 20)),
            ..Default::default()
        },
    );
    let first = disk.share().unwrap();
    assert_eq!(disk.share().unwrap(), first);
    assert!(first.path.starts_with(disk.disk_directory().unwrap()));
    assert_eq!(read_all(&open(&first.path).unwrap()), batches(3, 10));
    disk.close().unwrap();
    assert!(!first.path.exists());
}

#[test]
fn persist_after_eviction_or_over_a_replaced_dictionary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let evicting = cache_over(
        batches(3, 10),
        CacheOptions {
            max_readers: Some(1),
            ..Default::default()
        },
    );
    assert_eq!(read_all(&evicting).len(), 3);
    match evicting.persist(&dir.path().join("evicted")) {
        Err(Error::InvalidArgument(m)) => assert!(m.contains("evicted"), "{m}"),
        other => panic!("{other:?}"),
    }

    let schema = Arc::new(Schema::new(vec![Field::new(
        "d",
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        false,
    )]));
    let one: DictionaryArray<Int32Type> = ["x", "y"].into_iter().collect();
    let other: DictionaryArray<Int32Type> = ["p", "q"].into_iter().collect();
    let replaced = vec![
        RecordBatch::try_new(schema.clone(), vec![Arc::new(one)]).unwrap(),
        RecordBatch::try_new(schema.clone(), vec![Arc::new(other)]).unwrap(),
    ];
    let cache = cache_over(replaced, CacheOptions::default());
    match cache.persist(&dir.path().join("replaced")) {
        Err(Error::InvalidArgument(m)) => assert!(
            m.contains("cannot hold batch 1") && m.contains("never replaced"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_dictionary_that_each_batch_extends_is_saved_as_deltas_and_replays_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new(
        "d",
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        false,
    )]));
    let growing = [
        vec!["x", "y"],
        vec!["x", "y", "z"],
        vec!["x", "y", "z", "w"],
    ];
    let source: Vec<RecordBatch> = growing
        .iter()
        .map(|words| {
            let keys = arrow_array::Int32Array::from_iter_values(0..words.len() as i32);
            let values = Arc::new(StringArray::from(words.clone()));
            let column = DictionaryArray::<Int32Type>::try_new(keys, values).unwrap();
            RecordBatch::try_new(schema.clone(), vec![Arc::new(column)]).unwrap()
        })
        .collect();
    let target = dir.path().join("deltas");
    cache_over(source.clone(), CacheOptions::default())
        .persist(&target)
        .unwrap();
    let replayed = read_all(&open(&target).unwrap());
    assert_eq!(replayed, source);
    for (got, expected) in replayed.iter().zip(&source) {
        let values = |batch: &RecordBatch| {
            batch
                .column(0)
                .as_dictionary::<Int32Type>()
                .values()
                .to_data()
        };
        assert_eq!(
            values(got),
            values(expected),
            "each batch keeps its own dictionary"
        );
    }
}

#[test]
fn the_persist_option_saves_as_the_stream_is_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let source = batches(6, 100);
    let target = dir.path().join("as-ingested");
    let cache = cache_over(
        source.clone(),
        CacheOptions {
            persist: Some(target.clone()),
            max_readers: Some(1),
            ..Default::default()
        },
    );
    let mut reader = cache.reader(true).unwrap();
    assert_eq!(reader.next().unwrap().unwrap(), source[0]);
    assert!(
        !target.exists(),
        "the save appears only once the stream is whole"
    );
    assert_eq!(reader.by_ref().filter(Result::is_ok).count(), 5);
    assert!(cache.upstream_exhausted());
    // Evicted from memory as the reader passed, yet saved whole.
    assert_eq!(cache.stats().unwrap().batches_evicted, 6);
    let saved = cache.persisted_copy().unwrap();
    assert_eq!((saved.path.as_path(), saved.batches), (target.as_path(), 6));
    assert_eq!(read_all(&open(&target).unwrap()), source);
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn the_persist_option_leaves_nothing_after_an_upstream_failure_or_a_close() {
    let dir = tempfile::tempdir().unwrap();
    let source = batches(4, 10);
    let schema = source[0].schema();
    let failing = source
        .clone()
        .into_iter()
        .map(Ok)
        .take(2)
        .chain([Err(arrow_schema::ArrowError::ComputeError("boom".into()))]);
    let options = |name: &str| CacheOptions {
        persist: Some(dir.path().join(name)),
        ..Default::default()
    };
    let cache = StreamCache::new(
        Box::new(RecordBatchIterator::new(failing, schema)),
        options("failed"),
    )
    .unwrap();
    assert!(cache.ingest_all().is_err());
    assert_eq!(read_all_ok(&cache), 2);
    let closed = cache_over(source, options("closed"));
    closed.ingest_next().unwrap();
    closed.close().unwrap();
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    // A taken target is refused before the upstream is taken.
    fs::create_dir(dir.path().join("taken")).unwrap();
    fs::write(dir.path().join("taken/x"), b"x").unwrap();
    let prepared = StreamCache::prepare(options("taken"));
    assert!(matches!(prepared, Err(Error::InvalidArgument(_))));
}

fn read_all_ok(cache: &StreamCache) -> usize {
    cache
        .reader(true)
        .unwrap()
        .take_while(|b| b.is_ok())
        .count()
}

// -- damaged saves ---------------------------------------------------------------------

/// The three verify modes, named.
fn verify_modes() -> [(&'static str, OpenOptions); 3] {
    let with = |verify| OpenOptions {
        verify,
        ..Default::default()
    };
    [
        ("Never", with(Verify::Never)),
        ("IfModified", with(Verify::IfModified)),
        ("Always", with(Verify::Always)),
    ]
}

/// Put the data file's modification time back to the one its manifest records, so that
/// `Verify::IfModified` does not check checksums.
fn restore_modified_time(save: &Path) {
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(save.join("manifest.json")).unwrap()).unwrap();
    set_modified_ns(
        &save.join("data.arrow"),
        manifest["data_modified_ns"].as_u64().unwrap(),
    );
}

/// Where record batch `index` lies in an Arrow IPC file, from its footer.
fn batch_block(data: &[u8], index: usize) -> std::ops::Range<usize> {
    let trailer: [u8; 10] = data[data.len() - 10..].try_into().unwrap();
    let footer_len = arrow_ipc::reader::read_footer_length(trailer).unwrap();
    let footer_at = data.len() - 10 - footer_len;
    let footer = arrow_ipc::root_as_footer(&data[footer_at..data.len() - 10]).unwrap();
    let block = footer.recordBatches().unwrap().get(index);
    let start = block.offset() as usize;
    start..start + block.metaDataLength() as usize + block.bodyLength() as usize
}

/// Every batch a reader hands out, until the first error: each must pass arrow's full
/// validation; the error, if any, must be `Corrupt`. Returns the batches and whether
/// the read stopped at a damaged batch.
fn read_checked(cache: &StreamCache, what: &str) -> (Vec<RecordBatch>, bool) {
    let mut read = Vec::new();
    let mut reader = cache.reader(true).unwrap();
    loop {
        match reader.next_batch() {
            Ok(None) => return (read, false),
            Ok(Some(batch)) => {
                for column in batch.columns() {
                    if let Err(err) = column.to_data().validate_full() {
                        panic!("{what}: an invalid batch was handed out: {err}");
                    }
                }
                read.push(batch);
            }
            Err(Error::Corrupt(_)) => return (read, true),
            Err(other) => panic!("{what}: expected Corrupt, got {other:?}"),
        }
    }
}

#[test]
fn a_string_offset_out_of_range_is_corrupt_in_every_verify_mode_and_poisons_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = saved(dir.path());
    let data_path = target.join("data.arrow");
    let mut data = fs::read(&data_path).unwrap();
    // Batch 2's names are n200..n299, four bytes each: its offsets are 0, 4, 8, ...
    let block = batch_block(&data, 2);
    let offsets: Vec<u8> = (0..8i32).flat_map(|i| (4 * i).to_le_bytes()).collect();
    let at = block.start
        + data[block.clone()]
            .windows(offsets.len())
            .position(|w| w == offsets.as_slice())
            .expect("batch 2's name offsets are in its block");
    data[at + 4 * 50..at + 4 * 51].copy_from_slice(&0x4000_0000i32.to_le_bytes());
    fs::write(&data_path, &data).unwrap();
    restore_modified_time(&target);

    for (mode, options) in verify_modes() {
        let (cache, _) = StreamCache::open(&target, &options).unwrap();
        for pass in 0..2 {
            let mut reader = cache.reader(true).unwrap();
            assert_eq!(reader.next_batch().unwrap().unwrap(), source[0], "{mode}");
            assert_eq!(reader.next_batch().unwrap().unwrap(), source[1], "{mode}");
            match reader.next_batch() {
                Err(Error::Corrupt(message)) => {
                    assert!(message.contains("data.arrow"), "{mode}: {message}");
                    assert!(
                        message.contains("persist the stream again"),
                        "{mode}: {message}"
                    );
                }
                other => panic!("{mode}, pass {pass}: expected Corrupt, got {other:?}"),
            }
        }
        assert!(cache.stats().is_ok(), "{mode}: the cache is not poisoned");
    }
}

#[test]
fn bit_flips_anywhere_in_the_data_file_give_corrupt_or_valid_batches_in_every_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = saved(dir.path());
    let data_path = target.join("data.arrow");
    let pristine = fs::read(&data_path).unwrap();
    let flips = 400;
    let mut outcomes = [[0usize; 3]; 3]; // per mode: refused at open, at a batch, read whole
    for i in 0..flips {
        // Spread over the file, every metadata byte of batch 1 included.
        let block = batch_block(&pristine, 1);
        let at = match i % 2 {
            0 => block.start + (i / 2) % 200,
            _ => (i * 7919) % pristine.len(),
        };
        let mut data = pristine.clone();
        data[at] ^= 1 << (i % 8);
        fs::write(&data_path, &data).unwrap();
        restore_modified_time(&target);
        for (m, (mode, options)) in verify_modes().into_iter().enumerate() {
            let what = format!("{mode}, bit {} of byte {at}", i % 8);
            let cache = match StreamCache::open(&target, &options) {
                Ok((cache, _)) => cache,
                Err(Error::Corrupt(_)) => {
                    outcomes[m][0] += 1;
                    continue;
                }
                Err(other) => panic!("{what}: expected Corrupt at open, got {other:?}"),
            };
            let (read, refused) = read_checked(&cache, &what);
            outcomes[m][if refused { 1 } else { 2 }] += 1;
            if mode == "Always" {
                assert!(refused, "{what}: a checksum catches every flip");
                assert_eq!(read, source[..read.len()], "{what}");
            }
        }
    }
    // The flips reach both checks: some are refused at open, some at a batch.
    for (m, (mode, _)) in verify_modes().iter().enumerate() {
        assert_eq!(outcomes[m].iter().sum::<usize>(), flips, "{mode}");
        assert!(
            outcomes[m][0] > 0 && outcomes[m][1] > 0,
            "{mode}: {:?}",
            outcomes[m]
        );
    }
}

#[test]
fn an_edited_manifest_is_corrupt_but_a_reformatted_one_opens() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = saved(dir.path());
    let text = fs::read_to_string(target.join("manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (key, value) in [
        ("rows", serde_json::json!(501)),
        ("rows", serde_json::json!(500.0)),
        ("batches", serde_json::json!(4)),
        ("dictionaries", serde_json::json!(0)),
        ("data_modified_ns", serde_json::json!(1)),
        ("id", serde_json::json!("0123456789abcdef0123456789abcdef")),
    ] {
        let mut edited = manifest.clone();
        edited[key] = value.clone();
        fs::write(target.join("manifest.json"), edited.to_string()).unwrap();
        corrupt(open(&target), "manifest.json was edited");
    }
    // Reformatted by a tool (compact, keys in another order): the same values open.
    let mut fields: Vec<_> = manifest.as_object().unwrap().iter().collect();
    fields.reverse();
    let reordered: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(k.as_str())))
        .collect();
    fs::write(
        target.join("manifest.json"),
        format!("{{{}}}", reordered.join(",")),
    )
    .unwrap();
    let opened = open(&target).unwrap();
    assert_eq!(opened.stats().unwrap().rows_ingested, 500);
    assert_eq!(read_all(&opened), source);
}

/// This process's umask, read without setting it (setting it would race other threads):
/// Linux tells it in /proc; elsewhere (macOS) a probe file created with mode 0777 in a
/// fresh temporary folder, which has no default ACL, shows it.
#[cfg(target_os = "linux")]
fn umask() -> u32 {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
}

#[cfg(all(unix, not(target_os = "linux")))]
fn umask() -> u32 {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o777)
        .open(&probe)
        .unwrap();
    0o777 & !fs::metadata(&probe).unwrap().permissions().mode()
}

// Windows has no modes: a save's files take their folder's ACL, as any file does.
#[cfg(unix)]
#[test]
fn a_save_gets_the_modes_of_any_file_the_user_writes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (_, target) = saved(dir.path());
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    let umask = umask();
    assert_eq!(
        mode(&target),
        0o777 & !umask,
        "the directory, as mkdir makes it"
    );
    for name in ["data.arrow", "checksums.xxh3", "manifest.json"] {
        assert_eq!(mode(&target.join(name)), 0o666 & !umask, "{name}");
    }
}

#[test]
fn zeroed_lengths_in_a_batchs_metadata_are_corrupt_not_a_panic() {
    use arrow_array::{BinaryViewArray, StringViewArray};
    let dir = tempfile::tempdir().unwrap();
    let source: Vec<RecordBatch> = (0..3)
        .map(|b| {
            let texts: Vec<String> = (0..20)
                .map(|i| format!("a view longer than 12 bytes {b}-{i}"))
                .collect();
            let views = StringViewArray::from_iter_values(&texts);
            let bytes = BinaryViewArray::from_iter_values(texts.iter().map(|t| t.as_bytes()));
            RecordBatch::try_from_iter([
                ("views", Arc::new(views) as arrow_array::ArrayRef),
                ("bytes", Arc::new(bytes)),
            ])
            .unwrap()
        })
        .collect();
    let target = dir.path().join("views");
    cache_over(source.clone(), CacheOptions::default())
        .persist(&target)
        .unwrap();
    let pristine = fs::read(target.join("data.arrow")).unwrap();
    let block = batch_block(&pristine, 1);
    let mut refused = 0;
    // Every aligned 8 bytes of batch 1's metadata: buffer offsets and lengths among them.
    for at in (block.start..block.start + 512).step_by(8) {
        let mut data = pristine.clone();
        data[at..at + 8].copy_from_slice(&0i64.to_le_bytes());
        fs::write(target.join("data.arrow"), &data).unwrap();
        restore_modified_time(&target);
        for (mode, options) in verify_modes() {
            let (cache, _) = StreamCache::open(&target, &options).unwrap();
            let (read, stopped) = read_checked(&cache, &format!("{mode}, zeroed at {at}"));
            assert_eq!(
                read[..read.len().min(1)],
                source[..read.len().min(1)],
                "{mode}"
            );
            refused += stopped as usize;
        }
    }
    assert!(refused > 0);
}
