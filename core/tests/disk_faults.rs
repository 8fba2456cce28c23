//! Disk writes failing at random points (the `fault-injection` layer): every read ends
//! with the injected error, every batch before it is right, nothing pulled is lost, the
//! failure is never retried, and the cache's directory goes away with it.
#![cfg(feature = "fault-injection")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow_array::types::Int32Type;
use arrow_array::{
    DictionaryArray, Int32Array, Int64Array, RecordBatch, RecordBatchIterator, StringArray,
};
use arrow_schema::{ArrowError, DataType, Field, Schema};
use batchcorder_core::faults::{FaultInjector, IoPoint};
use batchcorder_core::{CacheOptions, Error, StreamCache};
use batchcorder_core::{Compression, DiskOptions, WritePolicy};
use proptest::prelude::*;

/// A full quota's errno; Windows's C runtime has none and reports a full disk.
#[cfg(unix)]
const EDQUOT: i32 = libc::EDQUOT;
#[cfg(windows)]
const EDQUOT: i32 = libc::ENOSPC;

#[path = "../../tests/support/stress.rs"]
mod stress;

/// Batches with an id column and a dictionary column whose dictionary changes every
/// `dictionary_every` batches, so dictionary messages are written too.
fn source_batches(batches: usize, rows: usize, dictionary_every: usize) -> Vec<RecordBatch> {
    let dictionary = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("tag", dictionary, false),
    ]));
    (0..batches)
        .map(|b| {
            let start = (b * rows) as i64;
            let ids = Int64Array::from_iter_values(start..start + rows as i64);
            let generation = b / dictionary_every;
            let values =
                StringArray::from_iter_values((0..3).map(|v| format!("g{generation}-{v}")));
            let keys = Int32Array::from_iter_values((0..rows as i32).map(|r| r % 3));
            let tags = DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values)).unwrap();
            RecordBatch::try_new(schema.clone(), vec![Arc::new(ids), Arc::new(tags)]).unwrap()
        })
        .collect()
}

/// Reads `cache` from the start to the end or the first error.
fn replay(cache: &StreamCache) -> (Vec<RecordBatch>, Option<Error>) {
    let mut reader = cache.reader(true).unwrap();
    let mut batches = Vec::new();
    loop {
        match reader.next_batch() {
            Ok(Some(batch)) => batches.push(batch),
            Ok(None) => return (batches, None),
            Err(err) => return (batches, Some(err)),
        }
    }
}

struct Case {
    batches: usize,
    policy: WritePolicy,
    compression: Compression,
    segment_bytes: u64,
    memory_capacity: u64,
    point: Option<IoPoint>,
    succeed: u64,
    errno: i32,
}

/// What a case saw: the batches served before the error, the error, and the cache's
/// counters after the replays.
struct Outcome {
    served: usize,
    error: Option<Error>,
    fired: u64,
    stats: Option<batchcorder_core::Stats>,
}

fn run(case: Case) -> Outcome {
    let parent = tempfile::tempdir().unwrap();
    let expected = source_batches(case.batches, 200, 3);
    let pulls = Arc::new(AtomicUsize::new(0));
    let counted = pulls.clone();
    let items: Vec<Result<RecordBatch, ArrowError>> = expected.iter().cloned().map(Ok).collect();
    let source = RecordBatchIterator::new(
        items.into_iter().inspect(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
        }),
        expected[0].schema(),
    );
    let faults = FaultInjector::fail_after(case.succeed, case.errno);
    let faults = match case.point {
        Some(point) => faults.only(&[point]),
        None => faults,
    };
    let disk = DiskOptions {
        write_policy: case.policy,
        compression: case.compression,
        segment_bytes: case.segment_bytes,
        faults: Some(faults.clone()),
        ..DiskOptions::new(parent.path(), 1 << 30)
    };
    let options = CacheOptions {
        memory_capacity: Some(case.memory_capacity),
        disk: Some(disk),
        ..Default::default()
    };
    let cache = match StreamCache::new(Box::new(source), options) {
        Ok(cache) => cache,
        Err(err) => {
            // Only the directory can fail before the first pull, and then nothing was read.
            assert_eq!(faults.fired(), 1);
            assert!(
                matches!(&err, Error::Io { errno, .. } if *errno == case.errno),
                "{err}"
            );
            assert_eq!(pulls.load(Ordering::SeqCst), 0, "the upstream is untouched");
            assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
            return Outcome {
                served: 0,
                error: Some(err),
                fired: faults.fired(),
                stats: None,
            };
        }
    };

    let (first, error) = replay(&cache);
    for (position, batch) in first.iter().enumerate() {
        assert_eq!(
            batch, &expected[position],
            "batch {position} is the right one"
        );
    }
    let pulled = pulls.load(Ordering::SeqCst);
    match &error {
        None => {
            assert_eq!(first.len(), case.batches);
        }
        Some(Error::Io { errno, message }) => {
            assert_eq!(faults.fired(), 1, "{message}");
            assert_eq!(*errno, case.errno, "{message}");
            assert_eq!(
                pulled,
                first.len(),
                "every pulled batch is served: nothing lost"
            );
        }
        Some(other) => panic!("a disk fault must be an I/O error, got {other}"),
    }
    if faults.fired() == 1 {
        assert!(error.is_some(), "a fault that fired is reported");
    }

    // Again from the start: the same batches, the same error, no pull retried.
    let (second, again) = replay(&cache);
    assert_eq!(second, first);
    assert_eq!(again, error);
    assert_eq!(
        pulls.load(Ordering::SeqCst),
        pulled,
        "a failure is never retried"
    );

    let stats = cache.stats().unwrap();
    drop(cache);
    let served = first.len();
    drop((first, second));
    assert_eq!(
        std::fs::read_dir(parent.path()).unwrap().count(),
        0,
        "the directory is gone"
    );
    Outcome {
        served,
        error,
        fired: faults.fired(),
        stats: Some(stats),
    }
}

fn point() -> impl Strategy<Value = Option<IoPoint>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(IoPoint::CreateDirectory)),
        1 => Just(Some(IoPoint::CreateSegment)),
        1 => Just(Some(IoPoint::SizeSegment)),
        1 => Just(Some(IoPoint::MapSegment)),
        4 => Just(Some(IoPoint::Write)),
    ]
}

proptest! {
    #![proptest_config(stress::config(96))]

    #[test]
    fn disk_faults_lose_nothing(
        batches in 1..24usize,
        on_eviction in any::<bool>(),
        compression in prop_oneof![Just(Compression::None), Just(Compression::Lz4), Just(Compression::Zstd)],
        segment_bytes in prop_oneof![Just(4096u64), Just(16 << 10), Just(1 << 20)],
        memory_capacity in prop_oneof![Just(0u64), Just(8 << 10), Just(1 << 20)],
        point in point(),
        seed in 0..1000u64,
        errno in prop_oneof![Just(libc::ENOSPC), Just(libc::EIO), Just(EDQUOT)],
    ) {
        let policy = if on_eviction { WritePolicy::OnEviction } else { WritePolicy::OnInsertion };
        // Mostly within the operations a case makes, so that most faults fire.
        let succeed = seed % match point {
            Some(IoPoint::CreateDirectory) => 1,
            Some(IoPoint::Write) | None => 2 * batches as u64 + 2,
            Some(_) => 3,
        };
        run(Case { batches, policy, compression, segment_bytes, memory_capacity, point, succeed, errno });
    }
}

#[test]
fn a_torn_write_leaves_earlier_batches_readable() {
    // The 5th message write (batch 3's new dictionary: batches 0 and 3 send one) fails
    // half-way through; batches 0 to 2 are read back from disk, batch 3 from memory.
    let case = Case {
        batches: 10,
        policy: WritePolicy::OnInsertion,
        compression: Compression::None,
        segment_bytes: 1 << 20,
        memory_capacity: 0,
        point: Some(IoPoint::Write),
        succeed: 4,
        errno: libc::ENOSPC,
    };
    let outcome = run(case);
    assert_eq!(outcome.fired, 1, "the fault fired");
    assert!(
        matches!(
            outcome.error,
            Some(Error::Io {
                errno: libc::ENOSPC,
                ..
            })
        ),
        "{:?}",
        outcome.error
    );
    assert_eq!(
        outcome.served, 4,
        "three batches from disk, and the one in hand"
    );
    let stats = outcome.stats.unwrap();
    assert!(stats.disk_bytes > 0, "{stats:?}");
    let one_batch = source_batches(1, 200, 3)[0].get_array_memory_size() as u64;
    assert!(
        stats.memory_bytes <= one_batch,
        "only the batch in hand is in memory, so the others were read from disk: {stats:?}"
    );
}
