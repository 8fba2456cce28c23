//! The disk tier through the Rust core: real files, real maps, real threads.

use std::sync::Arc;
use std::thread;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{DictionaryArray, Int64Array, RecordBatch, RecordBatchIterator, StringArray};
use arrow_schema::{DataType, Field, Schema};
use batchcorder_core::{CacheOptions, Error, StreamCache};
use batchcorder_core::{Compression, DiskOptions, WritePolicy};

fn id_batches(batches: usize, rows: usize) -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    (0..batches)
        .map(|b| {
            let start = (b * rows) as i64;
            let ids = Int64Array::from_iter_values(start..start + rows as i64);
            RecordBatch::try_new(schema.clone(), vec![Arc::new(ids)]).unwrap()
        })
        .collect()
}

fn disk_cache(batches: Vec<RecordBatch>, disk: DiskOptions, memory: u64) -> StreamCache {
    let schema = batches[0].schema();
    let source = RecordBatchIterator::new(batches.into_iter().map(Ok), schema);
    let options = CacheOptions {
        memory_capacity: Some(memory),
        disk: Some(disk),
        ..Default::default()
    };
    StreamCache::new(Box::new(source), options).unwrap()
}

fn sum_ids(cache: &StreamCache) -> i64 {
    sum_read(cache.reader(true).unwrap())
}

/// The sum of column 0 over every batch a reader returns.
fn sum_read<E: std::fmt::Debug>(reader: impl Iterator<Item = Result<RecordBatch, E>>) -> i64 {
    reader
        .map(|b| {
            b.unwrap()
                .column(0)
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .sum::<i64>()
        })
        .sum()
}

fn files_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn both_policies_round_trip_with_threads() {
    let parent = tempfile::tempdir().unwrap();
    for policy in [WritePolicy::OnInsertion, WritePolicy::OnEviction] {
        let disk = DiskOptions {
            write_policy: policy,
            segment_bytes: 64 << 10,
            ..DiskOptions::new(parent.path(), 1 << 30)
        };
        let cache = disk_cache(id_batches(50, 1000), disk, 20_000);
        let expected: i64 = (0..50_000).sum();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let reader = cache.reader(true).unwrap();
                thread::spawn(move || sum_read(reader))
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().unwrap(), expected, "{policy:?}");
        }
        let stats = cache.stats().unwrap();
        assert!(
            stats.memory_bytes <= 20_000,
            "hot layer stays in budget: {stats:?}"
        );
        assert!(
            stats.disk_bytes >= 48 * 8000,
            "all but the hot batches on disk: {stats:?}"
        );
        assert_eq!(sum_ids(&cache), expected);
    }
}

#[test]
fn on_eviction_never_writes_a_stream_that_fits() {
    let parent = tempfile::tempdir().unwrap();
    let disk = DiskOptions {
        write_policy: WritePolicy::OnEviction,
        ..DiskOptions::new(parent.path(), 1 << 30)
    };
    let cache = disk_cache(id_batches(10, 100), disk, 1 << 20);
    assert_eq!(sum_ids(&cache), (0..1000i64).sum::<i64>());
    assert_eq!(cache.stats().unwrap().disk_bytes, 0);
}

#[test]
fn passed_segments_are_deleted_with_max_readers() {
    let parent = tempfile::tempdir().unwrap();
    let disk = DiskOptions {
        segment_bytes: 16 << 10,
        ..DiskOptions::new(parent.path(), 1 << 30)
    };
    let schema = id_batches(1, 1)[0].schema();
    let source = RecordBatchIterator::new(id_batches(200, 1000).into_iter().map(Ok), schema);
    let options = CacheOptions {
        memory_capacity: Some(1),
        max_readers: Some(1),
        disk: Some(disk),
        ..Default::default()
    };
    let cache = StreamCache::new(Box::new(source), options).unwrap();
    let dir = cache.disk_directory().unwrap();
    let mut reader = cache.reader(true).unwrap();
    let mut peak_files = 0;
    while let Some(batch) = reader.next_batch().unwrap() {
        assert_eq!(batch.num_rows(), 1000);
        peak_files = peak_files.max(files_in(&dir));
    }
    let stats = cache.stats().unwrap();
    assert!(stats.segments_deleted >= 190, "{stats:?}");
    assert!(
        peak_files <= 3,
        "at most a few live segments, saw {peak_files}"
    );
    assert!(stats.disk_bytes <= 3 * (16 << 10) + 16_384, "{stats:?}");
}

#[test]
fn over_disk_capacity_fails_and_keeps_what_is_cached() {
    let parent = tempfile::tempdir().unwrap();
    let cache = disk_cache(
        id_batches(10, 1000),
        DiskOptions::new(parent.path(), 20_000),
        1,
    );
    let mut reader = cache.reader(true).unwrap();
    let mut read = 0;
    let err = loop {
        match reader.next_batch() {
            Ok(Some(_)) => read += 1,
            Ok(None) => panic!("the budget holds only two batches"),
            Err(err) => break err,
        }
    };
    assert!(
        matches!(&err, Error::Capacity(m) if m.contains("disk_capacity")),
        "{err}"
    );
    // Two fit on disk; the third, already pulled, stays in memory rather than being lost.
    assert_eq!(read, 3);
    let again: Vec<_> = cache
        .reader(true)
        .unwrap()
        .take(2)
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        again[1].column(0).as_primitive::<Int64Type>().value(0),
        1000
    );
}

#[test]
fn close_and_drop_remove_the_directory_and_arrays_stay_valid() {
    let parent = tempfile::tempdir().unwrap();
    let cache = disk_cache(
        id_batches(5, 1000),
        DiskOptions::new(parent.path(), 1 << 30),
        1,
    );
    let dir = cache.disk_directory().unwrap();
    let kept = cache.reader(true).unwrap().next_batch().unwrap().unwrap();
    assert!(dir.exists());
    cache.close().unwrap();
    // Windows keeps a mapped file's name, so the folder goes with the last array that
    // points into it (docs/processes.md, "Windows"); Unix removes it at once.
    assert_eq!(dir.exists(), cfg!(windows));
    let ids = kept.column(0).as_primitive::<Int64Type>();
    assert_eq!(ids.values().iter().sum::<i64>(), (0..1000i64).sum::<i64>());
    drop(kept);
    assert!(!dir.exists());
    assert_eq!(files_in(parent.path()), 0);

    let cache = disk_cache(
        id_batches(5, 1000),
        DiskOptions::new(parent.path(), 1 << 30),
        1,
    );
    let dir = cache.disk_directory().unwrap();
    sum_ids(&cache);
    drop(cache);
    assert!(!dir.exists());
}

#[test]
fn disk_reads_are_zero_copy_unless_compressed() {
    let parent = tempfile::tempdir().unwrap();
    for (compression, zero_copy) in [
        (Compression::None, true),
        (Compression::Lz4, false),
        (Compression::Zstd, false),
    ] {
        let disk = DiskOptions {
            compression,
            ..DiskOptions::new(parent.path(), 1 << 30)
        };
        let cache = disk_cache(id_batches(3, 10_000), disk, 1);
        let a = cache.reader(true).unwrap().next_batch().unwrap().unwrap();
        let b = cache.reader(true).unwrap().next_batch().unwrap().unwrap();
        let ptr = |batch: &RecordBatch| batch.column(0).to_data().buffers()[0].as_ptr();
        // Two decodes of one mapped message share its bytes; copies never do.
        assert_eq!(ptr(&a) == ptr(&b), zero_copy, "{compression:?}");
        assert_eq!(sum_ids(&cache), (0..30_000i64).sum::<i64>());
    }
}

#[test]
fn dictionary_replacement_round_trips() {
    let parent = tempfile::tempdir().unwrap();
    let field = Field::new(
        "c",
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        false,
    );
    let schema = Arc::new(Schema::new(vec![field]));
    let batches: Vec<_> = [["x", "y"], ["p", "q"], ["x", "y"]]
        .iter()
        .map(|values| {
            let keys = arrow_array::Int32Array::from(vec![0, 1, 0]);
            let dict = DictionaryArray::<Int32Type>::try_new(
                keys,
                Arc::new(StringArray::from(values.to_vec())),
            )
            .unwrap();
            RecordBatch::try_new(schema.clone(), vec![Arc::new(dict)]).unwrap()
        })
        .collect();
    let cache = disk_cache(batches, DiskOptions::new(parent.path(), 1 << 30), 1);
    for _ in 0..2 {
        let decoded: Vec<Vec<String>> = cache
            .reader(true)
            .unwrap()
            .map(|b| {
                let b = b.unwrap();
                let column = arrow_cast::cast(b.column(0), &DataType::Utf8).unwrap();
                column
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap().to_string())
                    .collect()
            })
            .collect();
        assert_eq!(
            decoded,
            vec![
                vec!["x", "y", "x"],
                vec!["p", "q", "p"],
                vec!["x", "y", "x"]
            ]
        );
    }
}

// Windows refuses to delete a folder whose files are open, so a live cache's cannot vanish.
#[cfg(unix)]
#[test]
fn a_vanished_directory_is_an_io_error_and_cached_batches_stay() {
    let parent = tempfile::tempdir().unwrap();
    let disk = DiskOptions {
        segment_bytes: 8 << 10,
        ..DiskOptions::new(parent.path(), 1 << 30)
    };
    let cache = disk_cache(id_batches(10, 1000), disk, 1);
    let mut reader = cache.reader(true).unwrap();
    reader.next_batch().unwrap().unwrap();
    std::fs::remove_dir_all(cache.disk_directory().unwrap()).unwrap();
    let err = loop {
        match reader.next_batch() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("writing a new segment must fail"),
            Err(err) => break err,
        }
    };
    assert!(
        matches!(&err, Error::Io { message, errno } if message.contains("segment") && *errno == libc::ENOENT),
        "{err}"
    );
    let first = cache.reader(true).unwrap().next_batch().unwrap().unwrap();
    assert_eq!(first.num_rows(), 1000);
}

#[test]
fn bad_disk_options_name_the_parameter() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let bad = [
        (DiskOptions::new(file.path(), 100), "disk_path"),
        (DiskOptions::new(std::env::temp_dir(), 0), "disk_capacity"),
    ];
    for (disk, name) in bad {
        let options = CacheOptions {
            disk: Some(disk),
            ..Default::default()
        };
        let err = StreamCache::prepare(options).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains(name)),
            "{err}"
        );
    }
}

/// `dictionary<values=list<dictionary<values=string>>>` batches: each outer value is a
/// list of inner keys, so decoding the outer dictionary needs the inner one first.
fn nested_dictionary_batches(inner_per_batch: &[&[&str]]) -> Vec<RecordBatch> {
    let inner_type = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let list_type = DataType::List(Arc::new(Field::new("item", inner_type.clone(), true)));
    let outer_type = DataType::Dictionary(Box::new(DataType::Int32), Box::new(list_type.clone()));
    let schema = Arc::new(Schema::new(vec![Field::new("c", outer_type, false)]));
    inner_per_batch
        .iter()
        .map(|inner_values| {
            let n = inner_values.len() as i32;
            let inner = DictionaryArray::<Int32Type>::try_new(
                arrow_array::Int32Array::from((0..n).rev().collect::<Vec<_>>()),
                Arc::new(StringArray::from(inner_values.to_vec())),
            )
            .unwrap();
            let offsets = arrow_buffer::OffsetBuffer::from_lengths([1, (n - 1) as usize]);
            let field = Arc::new(Field::new("item", inner_type.clone(), true));
            let lists = arrow_array::ListArray::new(field, offsets, Arc::new(inner), None);
            let outer = DictionaryArray::<Int32Type>::try_new(
                arrow_array::Int32Array::from(vec![1, 0, 1]),
                Arc::new(lists),
            )
            .unwrap();
            RecordBatch::try_new(schema.clone(), vec![Arc::new(outer)]).unwrap()
        })
        .collect()
}

/// Every value of a nested dictionary column, decoded through both levels.
fn nested_values(batch: &RecordBatch) -> Vec<Vec<String>> {
    let outer = batch.column(0).as_dictionary::<Int32Type>();
    let lists = outer.values().as_list::<i32>();
    outer
        .keys()
        .values()
        .iter()
        .map(|&key| {
            let items = lists.value(key as usize);
            let items = arrow_cast::cast(&items, &DataType::Utf8).unwrap();
            let items = items.as_string::<i32>();
            items.iter().map(|v| v.unwrap().to_string()).collect()
        })
        .collect()
}

#[test]
fn nested_dictionaries_come_back_whole_from_disk() {
    let parent = tempfile::tempdir().unwrap();
    let inner: [&[&str]; 3] = [&["a", "b", "c"], &["d", "e", "f", "g"], &["a", "b", "c"]];
    let expected: Vec<_> = nested_dictionary_batches(&inner)
        .iter()
        .map(nested_values)
        .collect();
    // The order the dictionaries were decoded in used to depend on a hash map's seed,
    // which differs per cache: many fresh caches catch an order that breaks.
    for compression in [Compression::None, Compression::Lz4, Compression::Zstd] {
        for _ in 0..8 {
            let disk = DiskOptions {
                compression,
                ..DiskOptions::new(parent.path(), 1 << 30)
            };
            let cache = disk_cache(nested_dictionary_batches(&inner), disk, 0);
            for _ in 0..2 {
                let replayed: Vec<_> = cache
                    .reader(true)
                    .unwrap()
                    .map(|b| nested_values(&b.unwrap()))
                    .collect();
                assert_eq!(replayed, expected, "{compression:?}");
            }
        }
    }
}

#[test]
fn an_inner_dictionary_replaced_under_an_unchanged_outer_one_reads_back() {
    // The second batch's inner dictionary lists the same strings in another order, with
    // keys that give the same lists: the outer dictionary is logically unchanged, so the
    // IPC writer re-sends only the inner one, and the outer one written with the first
    // inner dictionary must still be decoded against it.
    let parent = tempfile::tempdir().unwrap();
    let inner_type = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let list_type = DataType::List(Arc::new(Field::new("item", inner_type.clone(), true)));
    let outer_type = DataType::Dictionary(Box::new(DataType::Int32), Box::new(list_type));
    let schema = Arc::new(Schema::new(vec![Field::new("c", outer_type, false)]));
    let batch = |values: [&str; 2], keys: [i32; 2]| {
        let inner = DictionaryArray::<Int32Type>::try_new(
            arrow_array::Int32Array::from(keys.to_vec()),
            Arc::new(StringArray::from(values.to_vec())),
        )
        .unwrap();
        let offsets = arrow_buffer::OffsetBuffer::from_lengths([2]);
        let field = Arc::new(Field::new("item", inner_type.clone(), true));
        let lists = arrow_array::ListArray::new(field, offsets, Arc::new(inner), None);
        let outer = DictionaryArray::<Int32Type>::try_new(
            arrow_array::Int32Array::from(vec![0, 0]),
            Arc::new(lists),
        )
        .unwrap();
        RecordBatch::try_new(schema.clone(), vec![Arc::new(outer)]).unwrap()
    };
    let batches = vec![batch(["a", "b"], [0, 1]), batch(["b", "a"], [1, 0])];
    let expected: Vec<_> = batches.iter().map(nested_values).collect();
    assert_eq!(expected[0], expected[1]);
    for _ in 0..8 {
        let cache = disk_cache(batches.clone(), DiskOptions::new(parent.path(), 1 << 30), 0);
        let replayed: Vec<_> = cache
            .reader(true)
            .unwrap()
            .map(|b| nested_values(&b.unwrap()))
            .collect();
        assert_eq!(replayed, expected);
    }
}

// Unix modes and root's exceptions; a Windows ACL is not set up by a test (and wine
// maps access to the Unix user's).
#[cfg(unix)]
#[test]
fn an_unwritable_disk_path_keeps_its_os_error() {
    // Root may write anywhere but in sysfs (Linux) or the sealed system volume (macOS);
    // anyone else is refused by a 0500 directory.
    let parent = tempfile::tempdir().unwrap();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let path = if root {
        std::path::PathBuf::from(if cfg!(target_os = "macos") {
            "/System"
        } else {
            "/sys"
        })
    } else {
        use std::os::unix::fs::PermissionsExt;
        let locked = parent.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        locked
    };
    let options = CacheOptions {
        disk: Some(DiskOptions::new(&path, 1 << 20)),
        ..Default::default()
    };
    match StreamCache::prepare(options).unwrap_err() {
        Error::Io { errno, message } => {
            // macOS refuses root in /System with EPERM (SIP) or EROFS (the sealed volume).
            assert!(
                errno == libc::EACCES
                    || errno == libc::EPERM
                    || (cfg!(target_os = "macos") && errno == libc::EROFS),
                "{errno}: {message}"
            );
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

/// The private folders (named like ours) directly under `parent`.
fn private_folders(parent: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("batchcorder-"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_new_cache_removes_folders_whose_owner_is_gone_and_nothing_else() {
    let parent = tempfile::tempdir().unwrap();
    let path = parent.path();
    // What a process killed mid-stream leaves: a private folder, an owner file nobody
    // locks, a segment.
    let dead = path.join("batchcorder-dead01");
    std::fs::create_dir(&dead).unwrap();
    std::fs::write(dead.join("owner.lock"), b"").unwrap();
    std::fs::write(dead.join("segment-000000.arrows"), vec![0u8; 4096]).unwrap();
    // Killed between steps: after making its folder, before renaming its locked owner
    // file into place; and in a save's commit, after removing the owner file.
    let half_made = path.join("batchcorder-half01");
    std::fs::create_dir(&half_made).unwrap();
    std::fs::write(half_made.join(".owner.lock.4242"), b"").unwrap();
    let half_committed = path.join(".batchcorder-save-stage1");
    std::fs::create_dir(&half_committed).unwrap();
    std::fs::write(half_committed.join("data.arrow"), b"ARROW1").unwrap();
    // Not ours to judge: a name no cache gives, a file with our prefix, another folder,
    // and a user's save that bears a name like ours.
    std::fs::create_dir(path.join("batchcorder-no-owner")).unwrap();
    std::fs::create_dir(path.join("batchcorder-backup")).unwrap();
    std::fs::write(path.join("batchcorder-backup/manifest.json"), b"{}").unwrap();
    std::fs::write(path.join("batchcorder-a-file"), b"keep").unwrap();
    std::fs::create_dir(path.join("results")).unwrap();
    std::fs::write(path.join("results/owner.lock"), b"").unwrap();

    let live = disk_cache(id_batches(3, 10), DiskOptions::new(path, 1 << 20), 0);
    live.ingest_all().unwrap();
    let live_folder = live.disk_directory().unwrap();
    assert!(!dead.exists(), "the dead owner's folder is removed");
    assert!(!half_made.exists() && !half_committed.exists());

    let second = disk_cache(id_batches(3, 10), DiskOptions::new(path, 1 << 20), 0);
    assert!(live_folder.exists(), "a live cache's folder stays");
    assert_eq!(sum_ids(&live), (0..30).sum::<i64>(), "and it still reads");
    assert!(path.join("batchcorder-no-owner").is_dir());
    assert_eq!(
        std::fs::read(path.join("batchcorder-a-file")).unwrap(),
        b"keep"
    );
    assert!(path.join("results/owner.lock").exists());
    assert!(path.join("batchcorder-backup/manifest.json").exists());
    assert_eq!(
        private_folders(path).len(),
        5,
        "{:?}",
        private_folders(path)
    );
    drop((live, second));
    assert_eq!(
        private_folders(path),
        vec![
            "batchcorder-a-file",
            "batchcorder-backup",
            "batchcorder-no-owner"
        ],
        "each cache removes its own folder when it goes"
    );
}

/// Set in the child process of the test below, to the folder its cache is made in.
const KILLED_CHILD: &str = "BATCHCORDER_TEST_KILLED_CHILD";

#[test]
fn a_killed_process_leaves_a_folder_the_next_cache_removes() {
    use std::io::{BufRead, BufReader, Write};
    if let Some(parent) = std::env::var_os(KILLED_CHILD) {
        // The child: a cache with segments on disk and an array into one, then wait to
        // be killed (SIGKILL; TerminateProcess on Windows).
        let cache = disk_cache(id_batches(8, 1000), DiskOptions::new(parent, 1 << 30), 1);
        let _kept = cache.reader(true).unwrap().next_batch().unwrap().unwrap();
        cache.ingest_all().unwrap();
        let folder = cache.disk_directory().unwrap();
        println!("FOLDER {}", folder.display());
        std::io::stdout().flush().unwrap();
        thread::sleep(std::time::Duration::from_secs(600));
        return;
    }
    let parent = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_killed_process_leaves_a_folder_the_next_cache_removes",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILLED_CHILD, parent.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let folder = loop {
        let line = lines.next().expect("the child names its folder").unwrap();
        // After libtest's "test ... " on the same line.
        if let Some((_, path)) = line.split_once("FOLDER ") {
            break std::path::PathBuf::from(path);
        }
    };
    assert!(folder.join("owner.lock").exists());
    let live = disk_cache(
        id_batches(2, 10),
        DiskOptions::new(parent.path(), 1 << 20),
        0,
    );
    assert!(folder.exists(), "a live process's folder stays");
    drop(live);
    child.kill().unwrap();
    child.wait().unwrap();
    // Unix keeps the killed process's segments until the sweep; Windows deleted them
    // with the process (they are delete-on-close).
    let segments = std::fs::read_dir(&folder)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("segment-")
        })
        .count();
    assert_eq!(segments > 0, cfg!(unix), "{segments} segments left");
    let next = disk_cache(
        id_batches(2, 10),
        DiskOptions::new(parent.path(), 1 << 20),
        0,
    );
    assert!(!folder.exists(), "the dead process's folder is removed");
    assert_eq!(sum_ids(&next), (0..20).sum::<i64>());
    drop(next);
    assert_eq!(files_in(parent.path()), 0);
}
