//! Reading orders: shuffled epochs and shards of the stream.
//!
//! A reader's order is a sequence of stream positions. Without a shuffle it is the
//! stream itself; with one, a seeded permutation of the whole stream, or (with a window)
//! the output of a shuffle buffer like tf.data's. A shard of `count` takes the elements
//! `index`, `index + count`, ... of that sequence, so the shards of one seed split the
//! same order and their union is the stream with no batch twice.
//!
//! Reproducible: the random numbers come from ChaCha8 (`rand_chacha`), keyed by the seed
//! (little-endian, in the key's first 8 bytes; the rest zero). Stream 0 orders the
//! batches; stream `p + 1` orders the rows of the batch at position `p`. A bounded draw
//! takes `next_u64` and rejects the top partial range, and the permutation is the
//! Fisher-Yates shuffle from the last element down; so an order depends only on the seed
//! and the stream, on any machine, for a given library version.

use arrow_array::{RecordBatch, UInt32Array};
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use crate::cache::Shared;
use crate::error::{Error, Result};

/// How a reader orders the batches it returns. The default is the stream's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadOrder {
    /// A seeded random order instead of the stream's.
    pub shuffle: Option<Shuffle>,
    /// Only this share of the (possibly shuffled) order.
    pub shard: Option<Shard>,
}

/// A seeded random order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shuffle {
    /// The same seed gives the same order, in any process.
    pub seed: u64,
    /// `None`: a permutation of the whole stream, which is read to its end before the
    /// first batch. `Some(n)`: a shuffle buffer of `n` batches, which works on a live
    /// stream: fill `n` positions, return a random one, refill.
    pub window: Option<u64>,
    /// Also permute the rows inside each batch (seeded by the seed and the batch's
    /// position).
    pub rows: bool,
}

/// Every `count`-th element of the order, starting at `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// Check `index < count` and `count >= 1`, naming what is wrong.
    pub fn new(index: u64, count: u64) -> Result<Self> {
        if count == 0 {
            return Err(Error::InvalidArgument(
                "shard count is 0; pass the number of shards (at least 1)".into(),
            ));
        }
        if index >= count {
            return Err(Error::InvalidArgument(format!(
                "shard index {index} is out of range for {count} shards; pass an index from \
                 0 to {}",
                count - 1
            )));
        }
        Ok(Self { index, count })
    }
}

/// Check a shuffle window: at least 1.
pub fn check_window(window: u64) -> Result<()> {
    if window == 0 {
        return Err(Error::InvalidArgument(
            "shuffle_window is 0; pass the number of batches to shuffle among (at least 1), \
             or no window to shuffle the whole stream"
                .into(),
        ));
    }
    Ok(())
}

impl ReadOrder {
    /// Check the order against where the reader starts, naming the option that is wrong.
    pub fn validate(&self, from_start: bool) -> Result<()> {
        if let Some(shard) = self.shard {
            Shard::new(shard.index, shard.count)?;
        }
        let Some(shuffle) = self.shuffle else {
            return Ok(());
        };
        if let Some(window) = shuffle.window {
            check_window(window)?;
        }
        if !from_start {
            return Err(Error::InvalidArgument(
                "shuffle needs a reader from the start: a reader at the frontier \
                 (from_start=false) has no earlier batches to shuffle; pass from_start=true"
                    .into(),
            ));
        }
        Ok(())
    }

    /// True unless this is the stream's own order.
    pub fn reorders(&self) -> bool {
        self.shuffle.is_some() || self.shard.is_some()
    }

    fn shard(&self) -> Shard {
        self.shard.unwrap_or(Shard { index: 0, count: 1 })
    }
}

/// The random numbers of `seed`'s stream `stream`.
fn rng(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(stream);
    rng
}

/// A uniform draw from `0..bound` (`bound >= 1`), without modulo bias.
fn below(rng: &mut ChaCha8Rng, bound: u64) -> u64 {
    let zone = u64::MAX - u64::MAX % bound;
    loop {
        let draw = rng.next_u64();
        if draw < zone {
            return draw % bound;
        }
    }
}

/// Fisher-Yates, from the last element down.
fn permute<T>(items: &mut [T], rng: &mut ChaCha8Rng) {
    for last in (1..items.len()).rev() {
        let other = below(rng, last as u64 + 1) as usize;
        items.swap(last, other);
    }
}

/// The rows of `batch`, at stream position `position`, in `seed`'s order for it.
pub(crate) fn shuffle_rows(batch: &RecordBatch, seed: u64, position: u64) -> Result<RecordBatch> {
    if batch.num_rows() < 2 {
        // Nothing to move; `take` would rebuild the columns (and drop an empty
        // dictionary's values).
        return Ok(batch.clone());
    }
    let rows = u32::try_from(batch.num_rows()).map_err(|_| {
        Error::InvalidArgument(format!(
            "batch {position} has {} rows, more than shuffle_rows can permute (2^32 - 1)",
            batch.num_rows()
        ))
    })?;
    let mut order: Vec<u32> = (0..rows).collect();
    permute(&mut order, &mut rng(seed, position.saturating_add(1)));
    arrow_select::take::take_record_batch(batch, &UInt32Array::from(order)).map_err(|err| {
        Error::Internal(format!(
            "cannot permute the rows of batch {position}: {err}"
        ))
    })
}

/// The stream positions one reader returns, one at a time.
#[derive(Debug)]
pub(crate) enum Sequence {
    /// Stream order: `next`, `next + step`, ...
    Stride { next: u64, step: u64 },
    /// A permutation of the whole stream, made on the first read.
    Permuted {
        seed: u64,
        shard: Shard,
        /// This shard's positions, in order, and the lowest of each suffix.
        mine: Option<(Vec<u64>, Vec<u64>)>,
        at: usize,
    },
    /// A shuffle buffer over the stream.
    Window(Box<Window>),
}

#[derive(Debug)]
pub(crate) struct Window {
    rng: ChaCha8Rng,
    shard: Shard,
    size: usize,
    /// Positions filled and not yet emitted by the (whole, unsharded) order.
    buffer: Vec<u64>,
    /// The next position to fill from.
    fill: u64,
    /// The stream has no batch at `fill`.
    drained: bool,
    /// Elements the whole order has emitted.
    emitted: u64,
    /// The buffer slot of the next element this shard returns, once drawn.
    pending: Option<usize>,
}

impl Sequence {
    /// The sequence of `order` for a reader that starts at `start`.
    pub fn new(order: &ReadOrder, start: u64) -> Result<Self> {
        let shard = order.shard();
        Ok(match order.shuffle {
            None => {
                // The first position at or after `start` that belongs to the shard:
                // `(index - start) mod count`, kept below `count` so that a count near
                // 2^64 does not wrap.
                let behind = start % shard.count;
                let offset = match shard.index.checked_sub(behind) {
                    Some(ahead) => ahead,
                    None => shard.count - (behind - shard.index),
                };
                Sequence::Stride {
                    next: start.saturating_add(offset),
                    step: shard.count,
                }
            }
            Some(Shuffle {
                seed, window: None, ..
            }) => Sequence::Permuted {
                seed,
                shard,
                mine: None,
                at: 0,
            },
            Some(Shuffle {
                seed,
                window: Some(size),
                ..
            }) => {
                let size = usize::try_from(size).map_err(|_| {
                    Error::InvalidArgument(format!("shuffle_window={size} is too large"))
                })?;
                Sequence::Window(Box::new(Window {
                    rng: rng(seed, 0),
                    shard,
                    size,
                    buffer: Vec::with_capacity(size.min(1 << 16)),
                    fill: start,
                    drained: false,
                    emitted: 0,
                    pending: None,
                }))
            }
        })
    }

    /// The position of the next batch, without moving past it; `None` at the end.
    pub fn peek(&mut self, shared: &Shared) -> Result<Option<u64>> {
        match self {
            Sequence::Stride { next, .. } => Ok(Some(*next)),
            Sequence::Permuted {
                seed,
                shard,
                mine,
                at,
            } => {
                if mine.is_none() {
                    *mine = Some(permuted(shared, *seed, *shard)?);
                }
                Ok(mine.as_ref().and_then(|(list, _)| list.get(*at).copied()))
            }
            Sequence::Window(window) => window.peek(shared),
        }
    }

    /// Move past the position `peek` returned.
    pub fn pass(&mut self) {
        match self {
            Sequence::Stride { next, step } => *next = next.saturating_add(*step),
            Sequence::Permuted { at, .. } => *at += 1,
            Sequence::Window(window) => window.pass(),
        }
    }

    /// The lowest stream position this reader may still return: what eviction must keep.
    pub fn lowest_needed(&self) -> u64 {
        match self {
            Sequence::Stride { next, .. } => *next,
            Sequence::Permuted { mine: None, .. } => 0,
            Sequence::Permuted {
                mine: Some((_, lowest)),
                at,
                ..
            } => lowest.get(*at).copied().unwrap_or(u64::MAX),
            Sequence::Window(window) => window.lowest_needed(),
        }
    }
}

/// Read the whole stream, permute its positions with `seed`, and keep `shard`'s share.
fn permuted(shared: &Shared, seed: u64, shard: Shard) -> Result<(Vec<u64>, Vec<u64>)> {
    let count = shared.ingest_all()?;
    let mut all: Vec<u64> = (0..count).collect();
    permute(&mut all, &mut rng(seed, 0));
    let mine: Vec<u64> = all
        .into_iter()
        .skip(shard.index as usize)
        .step_by(shard.count as usize)
        .collect();
    let mut lowest = mine.clone();
    for at in (0..lowest.len().saturating_sub(1)).rev() {
        lowest[at] = lowest[at].min(lowest[at + 1]);
    }
    Ok((mine, lowest))
}

impl Window {
    fn peek(&mut self, shared: &Shared) -> Result<Option<u64>> {
        loop {
            if let Some(slot) = self.pending {
                return Ok(Some(self.buffer[slot]));
            }
            while self.buffer.len() < self.size && !self.drained {
                if shared.contains(self.fill)? {
                    self.buffer.push(self.fill);
                    self.fill += 1;
                } else {
                    self.drained = true;
                }
            }
            if self.buffer.is_empty() {
                return Ok(None);
            }
            let slot = below(&mut self.rng, self.buffer.len() as u64) as usize;
            if self.emitted % self.shard.count == self.shard.index {
                self.pending = Some(slot);
            } else {
                // Another shard's element: passed over here.
                self.buffer.swap_remove(slot);
                self.emitted += 1;
            }
        }
    }

    fn pass(&mut self) {
        if let Some(slot) = self.pending.take() {
            self.buffer.swap_remove(slot);
            self.emitted += 1;
        }
    }

    fn lowest_needed(&self) -> u64 {
        let unfilled = if self.drained { u64::MAX } else { self.fill };
        self.buffer.iter().copied().fold(unfilled, u64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_the_documented_chacha8_stream() {
        // Pinned: a change here changes every user's shuffled order.
        let mut all: Vec<u64> = (0..10).collect();
        permute(&mut all, &mut rng(42, 0));
        assert_eq!(all, vec![2, 1, 4, 3, 7, 0, 5, 8, 6, 9]);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = rng(7, 3);
        let mut seen = [false; 5];
        for _ in 0..200 {
            seen[below(&mut rng, 5) as usize] = true;
        }
        assert_eq!(seen, [true; 5]);
        assert_eq!(below(&mut rng, 1), 0);
    }

    #[test]
    fn shards_and_windows_are_checked() {
        assert!(Shard::new(2, 2)
            .unwrap_err()
            .to_string()
            .contains("index 2"));
        assert!(Shard::new(0, 0)
            .unwrap_err()
            .to_string()
            .contains("count is 0"));
        assert!(check_window(0)
            .unwrap_err()
            .to_string()
            .contains("shuffle_window"));
        let shuffled = ReadOrder {
            shuffle: Some(Shuffle {
                seed: 1,
                window: None,
                rows: false,
            }),
            shard: None,
        };
        assert!(shuffled
            .validate(false)
            .unwrap_err()
            .to_string()
            .contains("from_start"));
        shuffled.validate(true).unwrap();
    }

    /// The whole-stream shuffle counts the stream by ingesting it, not by reading every
    /// batch back: with no memory tier, that read would decode each one from disk.
    #[test]
    fn a_whole_stream_shuffle_reads_each_batch_from_disk_once() {
        use arrow_array::{Int64Array, RecordBatch, RecordBatchIterator};
        use arrow_schema::{DataType, Field, Schema};
        let schema =
            std::sync::Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batches: Vec<_> = (0..20)
            .map(|b| {
                let ids = std::sync::Arc::new(Int64Array::from(vec![b; 3]));
                Ok(RecordBatch::try_new(schema.clone(), vec![ids]).unwrap())
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let options = crate::CacheOptions {
            memory_capacity: Some(0),
            disk: Some(crate::DiskOptions::new(dir.path(), 1 << 30)),
            ..Default::default()
        };
        let upstream = Box::new(RecordBatchIterator::new(batches, schema));
        let cache = crate::StreamCache::new(upstream, options).unwrap();
        let shuffled = crate::ReaderOptions {
            from_start: true,
            order: ReadOrder {
                shuffle: Some(Shuffle {
                    seed: 5,
                    window: None,
                    rows: false,
                }),
                shard: None,
            },
            cast: None,
        };
        let before = crate::disk::READS.with(std::cell::Cell::get);
        let read = cache.reader_with(shuffled).unwrap().count();
        let reads = crate::disk::READS.with(std::cell::Cell::get) - before;
        assert_eq!((read, reads), (20, 20));
    }

    /// After `close`, a reader that returned all its batches but not yet its end fails,
    /// shuffled or not. A shuffle knows its end without a read, and reported the end.
    #[test]
    fn every_order_fails_once_the_cache_is_closed() {
        use arrow_array::{Int64Array, RecordBatch, RecordBatchIterator};
        use arrow_schema::{DataType, Field, Schema};
        let schema =
            std::sync::Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batches: Vec<_> = (0..3)
            .map(|b| {
                let ids = std::sync::Arc::new(Int64Array::from(vec![b; 2]));
                Ok(RecordBatch::try_new(schema.clone(), vec![ids]).unwrap())
            })
            .collect();
        let upstream = Box::new(RecordBatchIterator::new(batches, schema));
        let cache = crate::StreamCache::new(upstream, crate::CacheOptions::default()).unwrap();
        let orders = [None, Some(None), Some(Some(2))].map(|shuffle| ReadOrder {
            shuffle: shuffle.map(|window| Shuffle {
                seed: 3,
                window,
                rows: false,
            }),
            shard: None,
        });
        let mut readers: Vec<_> = orders
            .iter()
            .map(|&order| {
                let options = crate::ReaderOptions {
                    from_start: true,
                    order,
                    cast: None,
                };
                let mut reader = cache.reader_with(options).unwrap();
                for _ in 0..3 {
                    assert!(reader.next_batch().unwrap().is_some());
                }
                reader
            })
            .collect();
        cache.close().unwrap();
        for (reader, order) in readers.iter_mut().zip(orders) {
            assert_eq!(reader.next_batch().unwrap_err(), Error::Closed, "{order:?}");
        }
    }

    #[test]
    fn a_stride_starts_at_the_shards_first_position() {
        let order = ReadOrder {
            shuffle: None,
            shard: Some(Shard { index: 1, count: 3 }),
        };
        for (start, first) in [(0, 1), (1, 1), (2, 4), (4, 4), (5, 7)] {
            match Sequence::new(&order, start).unwrap() {
                Sequence::Stride { next, step } => assert_eq!((next, step), (first, 3)),
                other => panic!("{other:?}"),
            }
        }
    }

    /// Counts above 2^63 (a Flight ticket may name any uint64): no two shards start at
    /// the same position. `index + count` wrapped, and shards 0 and 2^63 - 1 of 2^63 + 1
    /// both began at batch 0.
    #[test]
    fn a_stride_of_a_huge_shard_count_does_not_wrap() {
        let half = 1u64 << 63;
        // (index, count, start, first position)
        let cases = [
            (0, half + 1, 0, 0),
            (half - 1, half + 1, 0, half - 1),
            (half, half + 1, 0, half),
            (0, half + 1, 5, half + 1),
            (7, half + 1, 5, 7),
            (u64::MAX - 1, u64::MAX, 3, u64::MAX - 1),
        ];
        for (index, count, start, first) in cases {
            let order = ReadOrder {
                shuffle: None,
                shard: Some(Shard::new(index, count).unwrap()),
            };
            match Sequence::new(&order, start).unwrap() {
                Sequence::Stride { next, .. } => {
                    assert_eq!(next, first, "shard {index} of {count} from {start}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
