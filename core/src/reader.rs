//! Readers: an independent position in the cached stream, optionally cast to a target schema.

use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchOptions, RecordBatchReader};
use arrow_cast::{can_cast_types, cast_with_options, CastOptions};
use arrow_schema::{ArrowError, Schema, SchemaRef};

use crate::cache::{made, Shared};
use crate::error::{Error, Result};
use crate::order::{shuffle_rows, ReadOrder, Sequence};
use crate::registry::ReaderSlot;
use crate::storage::CachedBatch;

/// One pass over the cache from its starting position.
///
/// `Send` but not shared: one thread at a time calls it, like any Arrow stream. It keeps
/// the cache's storage alive until dropped.
pub struct CacheReader {
    shared: Arc<Shared>,
    /// The stream positions this reader returns, in its order.
    sequence: Sequence,
    /// Batches returned so far.
    returned: u64,
    /// Shuffled or sharded: `position` counts the batches returned.
    reorders: bool,
    /// The seed of the rows' order, with `shuffle_rows`.
    row_seed: Option<u64>,
    slot: Arc<ReaderSlot>,
    target: Option<Cast>,
    finished: bool,
}

/// How [`crate::StreamCache::reader_with`] makes a reader.
#[derive(Debug, Clone, Default)]
pub struct ReaderOptions {
    /// From batch 0, or (false, the `Default`) from the ingestion frontier; see
    /// [`ReaderOptions::from_start`].
    pub from_start: bool,
    /// The order and share of the batches ([`ReadOrder`]); the stream's own by default.
    pub order: ReadOrder,
    /// A cast applied to every batch returned.
    pub cast: Option<Cast>,
}

impl ReaderOptions {
    /// A reader of the whole stream in order, from batch 0.
    pub fn from_start() -> Self {
        Self {
            from_start: true,
            ..Self::default()
        }
    }
}

/// What a cast does with a value that does not convert (a string that is not a number,
/// an integer out of the target's range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCastFailure {
    /// The read fails, naming the field and the value, and the reader stays at the batch
    /// (pyarrow's `safe=True`).
    #[default]
    Error,
    /// The value becomes null (pyarrow's `safe=False`).
    Null,
}

/// A cast applied to every batch a reader returns.
#[derive(Debug, Clone)]
pub struct Cast {
    pub schema: SchemaRef,
    pub on_failure: OnCastFailure,
}

impl Cast {
    /// A cast to `schema` that fails on a value that does not convert.
    pub fn to(schema: SchemaRef) -> Self {
        Self {
            schema,
            on_failure: OnCastFailure::Error,
        }
    }
}

impl std::fmt::Debug for CacheReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheReader")
            .field("position", &self.position())
            .field("reorders", &self.reorders)
            .field("finished", &self.finished)
            .field("casts", &self.target.is_some())
            .finish()
    }
}

impl CacheReader {
    pub(crate) fn new(
        shared: Arc<Shared>,
        sequence: Sequence,
        order: &ReadOrder,
        slot: Arc<ReaderSlot>,
        target: Option<Cast>,
    ) -> Self {
        slot.advance_to(sequence.lowest_needed());
        Self {
            shared,
            sequence,
            returned: 0,
            reorders: order.reorders(),
            row_seed: order.shuffle.filter(|s| s.rows).map(|s| s.seed),
            slot,
            target,
            finished: false,
        }
    }

    /// For a reader in the stream's order, the stream index of the next batch it returns
    /// (its start plus the batches returned). For a shuffled or sharded reader, the
    /// number of batches it has returned: its place in its own order.
    pub fn position(&self) -> u64 {
        match (&self.sequence, self.reorders) {
            (Sequence::Stride { next, .. }, false) => *next,
            _ => self.returned,
        }
    }

    /// Fail with [`Error::Closed`] once the cache is closed (or the poisoned error), as a
    /// read would: for a caller that asks the schema of a reader.
    pub fn ensure_open(&self) -> Result<()> {
        self.shared.ensure_open()
    }

    /// The schema of the batches this reader returns.
    pub fn output_schema(&self) -> SchemaRef {
        match &self.target {
            Some(cast) => cast.schema.clone(),
            None => self.shared.schema().clone(),
        }
    }

    /// The next stored batch as cached, without any cast or row shuffle; `None` at the
    /// end.
    pub fn next_cached(&mut self) -> Result<Option<Arc<CachedBatch>>> {
        let batch = self.current()?.map(|(_, batch)| batch);
        self.advance(batch.is_some());
        Ok(batch)
    }

    /// The batch at this reader's position and its stream position, without moving.
    fn current(&mut self) -> Result<Option<(u64, Arc<CachedBatch>)>> {
        if self.finished {
            return Ok(None);
        }
        let Some(position) = self.sequence.peek(&self.shared)? else {
            // A shuffle knows its end without reading a batch, which is what fails a
            // stride's read once the cache is closed.
            self.shared.ensure_open()?;
            return Ok(None);
        };
        Ok(self
            .shared
            .batch_at(position)?
            .map(|batch| (position, batch)))
    }

    /// Move past the current batch, or mark the end of the stream.
    fn advance(&mut self, past_batch: bool) {
        if self.finished {
            return;
        }
        if past_batch {
            self.sequence.pass();
            self.returned += 1;
            self.slot.advance_to(self.sequence.lowest_needed());
        } else {
            self.finished = true;
            self.slot.advance_to(u64::MAX);
        }
        if self.shared.watches_readers() {
            self.shared.reader_moved();
        }
    }

    /// Cast every batch from now on as `cast` says (checked as [`validate_cast`] does).
    pub fn cast_to(&mut self, cast: Cast) -> Result<()> {
        validate_cast(self.shared.schema(), &cast.schema)?;
        self.target = Some(cast);
        Ok(())
    }

    /// Mark the cache unusable after a panic interrupted this reader's call.
    pub fn poison_cache(&self) {
        self.shared.poison();
    }

    /// True when batches change before they are returned (a cast, a row shuffle), so
    /// that [`CacheReader::next_batch`] must be used rather than `next_cached`.
    pub fn casts(&self) -> bool {
        self.target.is_some() || self.row_seed.is_some()
    }

    /// The next batch, its rows shuffled and cast to the target schema as the reader
    /// says; `None` at the end. A batch that fails its cast is not passed: the next call
    /// tries it again.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let Some((position, cached)) = self.current()? else {
            self.advance(false);
            return Ok(None);
        };
        let shuffled;
        let batch = match self.row_seed {
            Some(seed) => {
                shuffled = shuffle_rows(made(&cached)?, seed, position)?;
                &shuffled
            }
            None => made(&cached)?,
        };
        let batch = match &self.target {
            None => batch.clone(),
            Some(cast) => cast_batch(batch, cast, position)?,
        };
        self.advance(true);
        Ok(Some(batch))
    }
}

impl Drop for CacheReader {
    fn drop(&mut self) {
        if self.shared.watches_readers() {
            // A reader that is gone needs nothing more.
            self.slot.advance_to(u64::MAX);
            self.shared.reader_moved();
        }
    }
}

impl Iterator for CacheReader {
    type Item = std::result::Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_batch().map_err(ArrowError::from).transpose()
    }
}

impl RecordBatchReader for CacheReader {
    fn schema(&self) -> SchemaRef {
        self.output_schema()
    }
}

/// Check that every batch of `source` can be cast to `target`, naming the first field
/// that cannot. Field count and names must match; types must be castable.
pub fn validate_cast(source: &Schema, target: &Schema) -> Result<()> {
    if source.fields().len() != target.fields().len() {
        return Err(Error::InvalidArgument(format!(
            "requested_schema has {} fields but the stream has {}; request the same fields \
             in the same order",
            target.fields().len(),
            source.fields().len()
        )));
    }
    for (from, to) in source.fields().iter().zip(target.fields()) {
        if from.name() != to.name() {
            return Err(Error::InvalidArgument(format!(
                "requested_schema field {:?} does not match stream field {:?} at the same \
                 position; request the same names in the same order",
                to.name(),
                from.name()
            )));
        }
        if !can_cast_types(from.data_type(), to.data_type()) {
            return Err(Error::InvalidArgument(format!(
                "requested_schema field {:?}: cannot cast {} to {}",
                to.name(),
                from.data_type(),
                to.data_type()
            )));
        }
    }
    Ok(())
}

fn cast_batch(batch: &RecordBatch, cast: &Cast, position: u64) -> Result<RecordBatch> {
    let options = CastOptions {
        // arrow-rs's `safe` means "null on failure", the opposite of pyarrow's.
        safe: cast.on_failure == OnCastFailure::Null,
        ..CastOptions::default()
    };
    let target = &cast.schema;
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                cast_with_options(column, field.data_type(), &options).map_err(|err| {
                    Error::InvalidArgument(format!(
                        "cannot cast field {:?} of batch {position} to {}: {err}; fix the \
                         value, or cast with safe=False (BC_CAST_FAILURE_NULL in C) to \
                         turn values that do not convert into nulls",
                        field.name(),
                        field.data_type()
                    ))
                })
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(target.clone(), columns, &options).map_err(|err| {
        Error::InvalidArgument(format!("cast batch does not fit requested_schema: {err}"))
    })
}
