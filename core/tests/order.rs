//! Reading orders in the core: seeded shuffles, shuffle windows, shards, and eviction
//! under `max_readers` with each.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Int64Array, RecordBatch, RecordBatchIterator};
use arrow_schema::{DataType, Field, Schema};
use batchcorder_core::{
    CacheOptions, ReadOrder, ReaderOptions, Shard, Shuffle, StreamCache, Upstream,
};

const ROWS: i64 = 4;

/// A single-use stream of `batches` batches; batch `b` holds ids `b*ROWS .. (b+1)*ROWS`.
fn stream(batches: i64) -> Upstream {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let made: Vec<_> = (0..batches)
        .map(|b| {
            let ids = Int64Array::from_iter_values(b * ROWS..(b + 1) * ROWS);
            Ok(RecordBatch::try_new(schema.clone(), vec![Arc::new(ids)]).unwrap())
        })
        .collect();
    Box::new(RecordBatchIterator::new(made, schema))
}

fn cache(batches: i64, options: CacheOptions) -> StreamCache {
    StreamCache::new(stream(batches), options).unwrap()
}

fn order(
    seed: Option<u64>,
    window: Option<u64>,
    rows: bool,
    shard: Option<(u64, u64)>,
) -> ReaderOptions {
    ReaderOptions {
        order: ReadOrder {
            shuffle: seed.map(|seed| Shuffle { seed, window, rows }),
            shard: shard.map(|(index, count)| Shard { index, count }),
        },
        ..ReaderOptions::from_start()
    }
}

/// The batch numbers a reader returns, in order (a batch is named by its first id).
fn batches(cache: &StreamCache, options: ReaderOptions) -> Vec<i64> {
    cache
        .reader_with(options)
        .unwrap()
        .map(|batch| {
            let ids = batch.unwrap();
            let ids = ids.column(0).as_primitive::<Int64Type>();
            ids.values().iter().min().unwrap() / ROWS
        })
        .collect()
}

#[test]
fn a_seed_gives_one_order_and_another_seed_another() {
    let cache = cache(50, CacheOptions::default());
    let first = batches(&cache, order(Some(7), None, false, None));
    assert_eq!(first, batches(&cache, order(Some(7), None, false, None)));
    assert_ne!(first, batches(&cache, order(Some(8), None, false, None)));
    assert_ne!(first, (0..50).collect::<Vec<_>>());
    let sorted: Vec<_> = first
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>(), "a permutation");
}

#[test]
fn shards_split_the_order_and_their_union_is_the_stream() {
    let cache = cache(23, CacheOptions::default());
    for (seed, window) in [(None, None), (Some(3), None), (Some(3), Some(4))] {
        let whole = batches(&cache, order(seed, window, false, None));
        let shards: Vec<_> = (0..3)
            .map(|index| batches(&cache, order(seed, window, false, Some((index, 3)))))
            .collect();
        for (index, shard) in shards.iter().enumerate() {
            let expected: Vec<_> = whole.iter().copied().skip(index).step_by(3).collect();
            assert_eq!(shard, &expected, "{seed:?} {window:?} shard {index}");
        }
        let mut union: Vec<_> = shards.concat();
        union.sort();
        assert_eq!(union, (0..23).collect::<Vec<_>>());
    }
}

#[test]
fn a_window_reorders_only_within_reach() {
    let cache = cache(200, CacheOptions::default());
    let got = batches(&cache, order(Some(1), Some(5), false, None));
    assert_ne!(got, (0..200).collect::<Vec<_>>());
    // The k-th batch returned was filled at most window - 1 places after it.
    for (k, batch) in got.iter().enumerate() {
        assert!(*batch <= k as i64 + 4, "batch {batch} returned {k}th");
    }
}

#[test]
fn a_window_reads_a_live_stream_lazily() {
    let cache = cache(100, CacheOptions::default());
    let mut reader = cache
        .reader_with(order(Some(2), Some(8), false, None))
        .unwrap();
    reader.next().unwrap().unwrap();
    assert_eq!(cache.ingested_count(), 8, "one window filled");
    // A whole-stream shuffle reads everything first.
    let mut whole = cache
        .reader_with(order(Some(2), None, false, None))
        .unwrap();
    whole.next().unwrap().unwrap();
    assert!(cache.upstream_exhausted());
}

#[test]
fn shuffled_rows_are_a_seeded_permutation_of_each_batch() {
    let cache = cache(5, CacheOptions::default());
    let ids = |seed| -> Vec<Vec<i64>> {
        cache
            .reader_with(order(Some(seed), Some(2), true, None))
            .unwrap()
            .map(|b| {
                b.unwrap()
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    };
    let first = ids(9);
    assert_eq!(first, ids(9));
    assert!(first.iter().any(|batch| !batch.is_sorted()), "{first:?}");
    for batch in &first {
        let mut sorted = batch.clone();
        sorted.sort();
        let start = sorted[0];
        assert_eq!(sorted, (start..start + ROWS).collect::<Vec<_>>());
    }
}

#[test]
fn position_counts_batches_returned_for_an_ordered_reader() {
    let cache = cache(10, CacheOptions::default());
    let mut reader = cache
        .reader_with(order(None, None, false, Some((1, 4))))
        .unwrap();
    assert_eq!(reader.position(), 0);
    reader.next().unwrap().unwrap();
    reader.next().unwrap().unwrap();
    assert_eq!(reader.position(), 2);
    let mut plain = cache.reader(true).unwrap();
    plain.next().unwrap().unwrap();
    assert_eq!(plain.position(), 1, "the stream index, as before");
}

#[test]
fn bad_orders_are_refused_naming_the_option() {
    let cache = cache(4, CacheOptions::default());
    let refused = |options: ReaderOptions| cache.reader_with(options).unwrap_err().to_string();
    assert!(refused(order(None, None, false, Some((3, 3)))).contains("shard index 3"));
    assert!(refused(order(None, None, false, Some((0, 0)))).contains("shard count is 0"));
    assert!(refused(order(Some(1), Some(0), false, None)).contains("shuffle_window is 0"));
    let frontier = ReaderOptions {
        from_start: false,
        ..order(Some(1), None, false, None)
    };
    assert!(refused(frontier).contains("from_start"));
}

#[test]
fn a_window_larger_than_the_budget_is_refused_once_sizes_are_known() {
    let options = CacheOptions {
        max_readers: Some(2),
        memory_capacity: Some(4096),
        ..CacheOptions::default()
    };
    let cache = cache(100, options);
    cache.ingest_next().unwrap();
    let err = cache
        .reader_with(order(Some(1), Some(1000), false, None))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("shuffle_window=1000") && err.contains("memory_capacity"),
        "{err}"
    );
    cache
        .reader_with(order(Some(1), Some(4), false, None))
        .unwrap();
}

#[test]
fn shards_and_windows_under_max_readers_keep_memory_bounded() {
    let batches_in = 400;
    let options = CacheOptions {
        max_readers: Some(2),
        ..CacheOptions::default()
    };
    let cache = cache(batches_in, options);
    let mut readers: Vec<_> = (0..2)
        .map(|index| {
            cache
                .reader_with(order(Some(5), Some(8), false, Some((index, 2))))
                .unwrap()
        })
        .collect();
    let batch_bytes = {
        readers[0].next().unwrap().unwrap();
        cache.stats().unwrap().memory_bytes / cache.ingested_count()
    };
    let mut seen = 1;
    let mut most = 0;
    'outer: loop {
        for reader in readers.iter_mut() {
            match reader.next() {
                Some(batch) => {
                    batch.unwrap();
                    seen += 1;
                }
                None if seen == batches_in => break 'outer,
                None => {}
            }
            most = most.max(cache.stats().unwrap().memory_bytes);
        }
    }
    let stats = cache.stats().unwrap();
    assert_eq!(stats.batches_ingested, batches_in as u64);
    assert!(stats.batches_evicted > 300, "{stats:?}");
    // The oldest batch in the window stays until it is drawn: a few windows' worth.
    assert!(
        most <= 64 * batch_bytes,
        "{most} bytes held, batches of {batch_bytes}"
    );
}

#[test]
fn checking_reader_options_refuses_what_reader_with_refuses_and_counts_no_reader() {
    let options = CacheOptions {
        max_readers: Some(1),
        memory_capacity: Some(4096),
        ..CacheOptions::default()
    };
    let cache = cache(100, options);
    let first = cache.reader(true).unwrap();
    cache.ingest_next().unwrap();
    let frontier = ReaderOptions {
        from_start: false,
        ..order(Some(1), None, false, None)
    };
    for refused in [
        order(None, None, false, Some((3, 3))),
        order(None, None, false, Some((0, 0))),
        order(Some(1), Some(0), false, None),
        order(Some(1), Some(1000), false, None),
        frontier,
    ] {
        let checked = cache.check_reader_options(&refused).unwrap_err();
        let made = cache.reader_with(refused).unwrap_err();
        assert_eq!(checked.to_string(), made.to_string());
        assert!(matches!(
            checked,
            batchcorder_core::Error::InvalidArgument(_)
        ));
    }
    // The one reader max_readers allows is taken: a check still passes and counts none.
    for valid in [
        ReaderOptions::default(),
        order(Some(1), Some(4), false, Some((1, 2))),
    ] {
        cache.check_reader_options(&valid).unwrap();
    }
    assert_eq!(cache.stats().unwrap().readers_live, 1);
    assert!(cache
        .reader_with(order(Some(1), Some(4), false, None))
        .is_err());
    drop(first);
    cache.close().unwrap();
    let closed = cache.check_reader_options(&ReaderOptions::default());
    assert!(matches!(closed, Err(batchcorder_core::Error::Closed)));
}
