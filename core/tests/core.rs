//! The Rust core, used as an rlib with no C layer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, Int64Array, RecordBatch, RecordBatchReader};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use batchcorder_core::{CacheOptions, Cast, Error, OnCastFailure, StreamCache};

/// An upstream of `batches` batches of `rows` ids each, failing at `fail_at` if set,
/// counting every call to `next`.
struct Counting {
    schema: SchemaRef,
    next: usize,
    batches: usize,
    rows: usize,
    fail_at: Option<usize>,
    pulls: Arc<AtomicUsize>,
}

impl Iterator for Counting {
    type Item = Result<RecordBatch, ArrowError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.pulls.fetch_add(1, Ordering::SeqCst);
        if Some(self.next) == self.fail_at {
            return Some(Err(ArrowError::InvalidArgumentError(
                "producer broke".into(),
            )));
        }
        if self.next == self.batches {
            return None;
        }
        let start = (self.next * self.rows) as i64;
        self.next += 1;
        let ids = Int64Array::from_iter_values(start..start + self.rows as i64);
        Some(Ok(RecordBatch::try_new(
            self.schema.clone(),
            vec![Arc::new(ids)],
        )
        .unwrap()))
    }
}

impl RecordBatchReader for Counting {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

fn upstream(batches: usize, fail_at: Option<usize>) -> (Box<Counting>, Arc<AtomicUsize>) {
    let pulls = Arc::new(AtomicUsize::new(0));
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let source = Counting {
        schema,
        next: 0,
        batches,
        rows: 100,
        fail_at,
        pulls: pulls.clone(),
    };
    (Box::new(source), pulls)
}

fn cache(batches: usize, options: CacheOptions) -> (StreamCache, Arc<AtomicUsize>) {
    let (source, pulls) = upstream(batches, None);
    (StreamCache::new(source, options).unwrap(), pulls)
}

fn id_sum(batches: impl IntoIterator<Item = RecordBatch>) -> i64 {
    batches
        .into_iter()
        .map(|b| {
            b.column(0)
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .sum::<i64>()
        })
        .sum()
}

fn read_all(cache: &StreamCache, from_start: bool) -> Vec<RecordBatch> {
    cache
        .reader(from_start)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn ingests_lazily_and_exactly_once() {
    let (cache, pulls) = cache(10, CacheOptions::default());
    assert_eq!(pulls.load(Ordering::SeqCst), 0);
    let mut first = cache.reader(true).unwrap();
    first.next().unwrap().unwrap();
    assert_eq!(
        (cache.ingested_count(), pulls.load(Ordering::SeqCst)),
        (1, 1)
    );
    let expected: i64 = (0..1000).sum();
    for _ in 0..3 {
        assert_eq!(id_sum(read_all(&cache, true)), expected);
    }
    assert_eq!(
        pulls.load(Ordering::SeqCst),
        11,
        "10 batches and one end-of-stream"
    );
    assert_eq!(cache.ingest_all().unwrap(), 10);
    assert_eq!(cache.ingest_all().unwrap(), 10);
    assert!(cache.upstream_exhausted());
    assert_eq!(pulls.load(Ordering::SeqCst), 11);
}

#[test]
fn frontier_reader_sees_only_new_batches() {
    let (cache, _) = cache(5, CacheOptions::default());
    let mut early = cache.reader(true).unwrap();
    early.next();
    early.next();
    let late = read_all(&cache, false);
    assert_eq!(late.len(), 3);
    assert_eq!(late[0].column(0).as_primitive::<Int64Type>().value(0), 200);
}

#[test]
fn upstream_failure_is_kept_and_never_retried() {
    let (source, pulls) = upstream(10, Some(3));
    let cache = StreamCache::new(source, CacheOptions::default()).unwrap();
    for _ in 0..3 {
        let mut reader = cache.reader(true).unwrap();
        for _ in 0..3 {
            reader.next_batch().unwrap().unwrap();
        }
        match reader.next_batch() {
            Err(Error::Upstream { message, errno }) => {
                assert!(message.contains("producer broke"), "{message}");
                assert_eq!(errno, libc::EINVAL);
            }
            other => panic!("expected the upstream error, got {other:?}"),
        }
    }
    assert_eq!(pulls.load(Ordering::SeqCst), 4);
}

#[test]
fn max_readers_caps_and_evicts_what_all_passed() {
    let options = CacheOptions {
        max_readers: Some(2),
        ..Default::default()
    };
    let (cache, _) = cache(10, options);
    let mut a = cache.reader(true).unwrap();
    for _ in 0..6 {
        a.next().unwrap().unwrap();
    }
    assert_eq!(
        cache.stats().unwrap().batches_evicted,
        0,
        "reader b may still start at 0"
    );
    let mut b = cache.reader(true).unwrap();
    assert!(matches!(cache.reader(true), Err(Error::ReaderCap { .. })));
    for _ in 0..5 {
        b.next().unwrap().unwrap();
    }
    assert_eq!(
        cache.stats().unwrap().batches_evicted,
        5,
        "both passed 0..5"
    );
    drop(b);
    a.next().unwrap().unwrap();
    let stats = cache.stats().unwrap();
    assert_eq!(stats.batches_evicted, 7, "only a remains, at position 7");
    assert_eq!(stats.readers_live, 1);
}

#[test]
fn bounded_pass_keeps_memory_flat() {
    let options = CacheOptions {
        max_readers: Some(1),
        memory_capacity: Some(4096),
        ..Default::default()
    };
    let (cache, _) = cache(1000, options);
    let total = id_sum(read_all(&cache, true));
    assert_eq!(total, (0..100_000).sum::<i64>());
    let stats = cache.stats().unwrap();
    assert_eq!(stats.batches_evicted, 1000);
    assert_eq!(stats.memory_bytes, 0);
}

#[test]
fn over_budget_fails_and_keeps_earlier_batches() {
    let options = CacheOptions {
        memory_capacity: Some(2000),
        ..Default::default()
    };
    let (cache, _) = cache(5, options);
    let mut reader = cache.reader(true).unwrap();
    reader.next_batch().unwrap().unwrap();
    reader.next_batch().unwrap().unwrap();
    let err = reader.next_batch().unwrap_err();
    assert!(
        matches!(&err, Error::Capacity(m) if m.contains("memory_capacity")),
        "{err}"
    );
    assert_eq!(read_all_ok(&cache), 2);
}

fn read_all_ok(cache: &StreamCache) -> usize {
    let mut reader = cache.reader(true).unwrap();
    let mut n = 0;
    while let Ok(Some(_)) = reader.next_batch() {
        n += 1;
    }
    n
}

#[test]
fn close_fails_readers_but_not_returned_batches() {
    let (cache, _) = cache(5, CacheOptions::default());
    let mut reader = cache.reader(true).unwrap();
    let kept = reader.next_batch().unwrap().unwrap();
    cache.close().unwrap();
    cache.close().unwrap();
    assert_eq!(reader.next_batch().unwrap_err(), Error::Closed);
    assert_eq!(cache.reader(true).unwrap_err(), Error::Closed);
    assert_eq!(cache.ingest_all().unwrap_err(), Error::Closed);
    assert_eq!(id_sum([kept]), (0..100).sum::<i64>());
}

#[test]
fn readers_cast_to_a_requested_schema() {
    let (cache, _) = cache(3, CacheOptions::default());
    let target = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, true)]));
    let reader = cache
        .reader_with_schema(true, Some(Cast::to(target.clone())))
        .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    assert_eq!(batches[0].schema(), target);
    assert_eq!(
        batches[2].column(0).as_primitive::<Int32Type>().value(99),
        299
    );

    let wrong_name = Arc::new(Schema::new(vec![Field::new(
        "other",
        DataType::Int64,
        true,
    )]));
    let err = cache
        .reader_with_schema(true, Some(Cast::to(wrong_name)))
        .unwrap_err();
    assert!(err.to_string().contains("\"other\""), "{err}");
    let uncastable = Arc::new(Schema::new(vec![Field::new(
        "id",
        DataType::Struct(vec![Field::new("a", DataType::Int8, true)].into()),
        true,
    )]));
    assert!(cache
        .reader_with_schema(true, Some(Cast::to(uncastable)))
        .is_err());
}

#[test]
fn a_value_that_does_not_convert_fails_its_batch_without_passing_it() {
    // int8 holds ids up to 127: batch 1 (ids 100..199) does not convert.
    let (cache, _) = cache(3, CacheOptions::default());
    let target = Arc::new(Schema::new(vec![Field::new("id", DataType::Int8, true)]));
    let mut reader = cache
        .reader_with_schema(true, Some(Cast::to(target.clone())))
        .unwrap();
    assert!(reader.next_batch().unwrap().is_some());
    for _ in 0..2 {
        let err = reader.next_batch().unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("\"id\"") && text.contains("128"), "{text}");
        assert_eq!(reader.position(), 1);
    }

    let nulls = Cast {
        schema: target,
        on_failure: OnCastFailure::Null,
    };
    let batches: Vec<_> = cache
        .reader_with_schema(true, Some(nulls))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let second = batches[1]
        .column(0)
        .as_primitive::<arrow_array::types::Int8Type>();
    assert_eq!((batches.len(), second.null_count()), (3, 72));
    assert_eq!(second.value(27), 127);
}

#[test]
fn concurrent_readers_during_ingestion_see_the_same_stream() {
    let (cache, pulls) = cache(300, CacheOptions::default());
    let expected: i64 = (0..30_000).sum();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let reader = cache.reader(true).unwrap();
            thread::spawn(move || id_sum(reader.map(Result::unwrap)))
        })
        .collect();
    for handle in handles {
        assert_eq!(handle.join().unwrap(), expected);
    }
    assert_eq!(pulls.load(Ordering::SeqCst), 301);
}

#[test]
fn zero_max_readers_and_zero_capacity_are_refused() {
    for options in [
        CacheOptions {
            max_readers: Some(0),
            ..Default::default()
        },
        CacheOptions {
            memory_capacity: Some(0),
            ..Default::default()
        },
    ] {
        let (source, _) = upstream(1, None);
        assert!(matches!(
            StreamCache::new(source, options),
            Err(Error::InvalidArgument(_))
        ));
    }
}

// -- prefetch: a background thread reads ahead of the fastest reader -------------------

/// Wait (at most 10 s) until `done` holds; false if it never did.
fn eventually(done: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        thread::sleep(std::time::Duration::from_millis(2));
    }
    false
}

/// Give a read-ahead thread time to go further than it should, if it would.
fn settle() {
    thread::sleep(std::time::Duration::from_millis(50));
}

fn prefetching(batches: usize, ahead: u64) -> (StreamCache, Arc<AtomicUsize>) {
    let options = CacheOptions {
        prefetch: Some(ahead),
        ..Default::default()
    };
    cache(batches, options)
}

#[test]
fn prefetch_reads_ahead_of_the_fastest_reader_and_no_further() {
    let (cache, pulls) = prefetching(100, 5);
    assert!(
        eventually(|| cache.ingested_count() == 5),
        "before any reader"
    );
    settle();
    assert_eq!(
        (cache.ingested_count(), pulls.load(Ordering::SeqCst)),
        (5, 5)
    );

    let mut slow = cache.reader(true).unwrap();
    let mut fast = cache.reader(true).unwrap();
    for _ in 0..20 {
        fast.next_batch().unwrap().unwrap();
    }
    slow.next_batch().unwrap().unwrap();
    assert!(
        eventually(|| cache.ingested_count() == 25),
        "5 ahead of the fastest"
    );
    settle();
    assert_eq!(cache.ingested_count(), 25);
    // The readers see the whole stream, in order, whoever pulled each batch.
    let rest: Vec<RecordBatch> = fast.map(Result::unwrap).collect();
    assert_eq!(rest.len(), 80);
    assert_eq!(
        pulls.load(Ordering::SeqCst),
        101,
        "100 batches and the end, once each"
    );
    drop(slow);
}

#[test]
fn prefetch_stops_at_close() {
    let (cache, pulls) = prefetching(1000, 3);
    assert!(eventually(|| cache.ingested_count() == 3));
    let mut reader = cache.reader(true).unwrap();
    reader.next_batch().unwrap().unwrap();
    cache.close().unwrap();
    let after = pulls.load(Ordering::SeqCst);
    settle();
    assert!(after <= 5, "{after}");
    assert_eq!(
        pulls.load(Ordering::SeqCst),
        after,
        "nothing pulled after close"
    );
    assert_eq!(reader.next_batch().unwrap_err(), Error::Closed);
}

#[test]
fn an_upstream_error_reaches_readers_at_its_batch_with_prefetch() {
    let (source, pulls) = upstream(50, Some(7));
    let options = CacheOptions {
        prefetch: Some(20),
        ..Default::default()
    };
    let cache = StreamCache::new(source, options).unwrap();
    assert!(
        eventually(|| pulls.load(Ordering::SeqCst) == 8),
        "the thread met the error"
    );
    for _ in 0..2 {
        let mut reader = cache.reader(true).unwrap();
        for _ in 0..7 {
            reader.next_batch().unwrap().unwrap();
        }
        let err = reader.next_batch().unwrap_err();
        assert!(matches!(err, Error::Upstream { .. }), "{err:?}");
    }
    settle();
    assert_eq!(pulls.load(Ordering::SeqCst), 8, "never pulled again");
}

#[test]
fn prefetch_stays_within_the_memory_budget() {
    // Each batch holds 800 bytes of ids: about 3 fit.
    let options = CacheOptions {
        memory_capacity: Some(2500),
        prefetch: Some(50),
        ..Default::default()
    };
    let (cache, _) = cache(100, options);
    assert!(eventually(|| cache.ingested_count() >= 2));
    settle();
    let stats = cache.stats().unwrap();
    assert!(stats.memory_bytes <= 2500, "{stats:?}");
    // Read ahead filled the budget without failing: the batches it holds replay.
    assert_eq!(
        read_all_until_error(&cache),
        stats.batches_ingested as usize
    );
}

/// Batches a reader returns from the start before its first error.
fn read_all_until_error(cache: &StreamCache) -> usize {
    let mut reader = cache.reader(true).unwrap();
    let mut read = 0;
    while let Ok(Some(_)) = reader.next_batch() {
        read += 1;
    }
    read
}

#[test]
fn prefetch_with_max_readers_streams_in_a_small_budget() {
    let options = CacheOptions {
        memory_capacity: Some(2500),
        max_readers: Some(2),
        prefetch: Some(2),
        ..Default::default()
    };
    let (cache, _) = cache(200, options);
    // Two readers in step: each batch is dropped once both passed it, so the cache holds
    // the batch between them and the two read ahead; read-ahead never overfills it.
    let (mut a, mut b) = (cache.reader(true).unwrap(), cache.reader(true).unwrap());
    let mut sums = (0, 0);
    while let Some(batch) = a.next_batch().unwrap() {
        sums.0 += id_sum([batch]);
        sums.1 += id_sum([b.next_batch().unwrap().unwrap()]);
        assert!(cache.stats().unwrap().memory_bytes <= 2500);
    }
    let all = (0..20_000).sum::<i64>();
    assert_eq!(sums, (all, all));
    assert_eq!(cache.stats().unwrap().batches_evicted, 200);
}

#[test]
fn prefetch_zero_is_refused_naming_it() {
    let options = CacheOptions {
        prefetch: Some(0),
        ..Default::default()
    };
    let err = StreamCache::prepare(options).unwrap_err();
    assert!(err.to_string().contains("prefetch"), "{err}");
}
