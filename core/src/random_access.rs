//! Random access: a batch by its position in the stream, and rows by theirs, found through
//! the row index of the memory tier ([`crate::storage::RowIndex`]). Neither is a reader:
//! `max_readers` does not count it, and it holds back no eviction.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_select::interleave::interleave_record_batch;

use crate::cache::{made, StreamCache};
use crate::error::{Error, Result};
use crate::storage::CachedBatch;

impl StreamCache {
    /// Batch `index` of the stream as cached, pulling the upstream up to it and no
    /// further. [`Error::OutOfRange`] past the end (the whole upstream is pulled to know
    /// it), [`Error::Evicted`] for a batch `max_readers` dropped.
    pub fn cached_batch(&self, index: u64) -> Result<Arc<CachedBatch>> {
        match self.batch_at(index)? {
            Some(batch) => Ok(batch),
            None => Err(Error::OutOfRange(format!(
                "batch index {index} is out of range: the stream has {} batches; ask for \
                 an index below that",
                self.ingested_count()
            ))),
        }
    }

    /// Batch `index` of the stream, as [`cached_batch`](Self::cached_batch) finds it.
    pub fn batch(&self, index: u64) -> Result<RecordBatch> {
        let cached = self.cached_batch(index)?;
        Ok(made(&cached)?.clone())
    }

    /// The stream's rows at `rows` (positions counted over the whole stream), in that
    /// order, as one batch: what `take` over the stream as one table gives. A row may come
    /// more than once. Only the batches holding the rows are read, and the upstream is
    /// pulled only as far as the largest row. Dictionary columns whose batches hold
    /// different dictionaries come out with one dictionary that covers them.
    pub fn take(&self, rows: &[u64]) -> Result<RecordBatch> {
        let Some(&last) = rows.iter().max() else {
            self.shared().ensure_open()?;
            return Ok(RecordBatch::new_empty(self.schema()));
        };
        self.index_rows_through(last)?;
        let located = self.shared().with_row_index(|index| {
            rows.iter()
                .map(|&row| {
                    index.locate(row).ok_or_else(|| {
                        Error::Internal(format!("row {row} is missing from the row index"))
                    })
                })
                .collect::<Result<Vec<_>>>()
        })??;
        let mut positions: Vec<u64> = located.iter().map(|&(batch, _)| batch).collect();
        positions.sort_unstable();
        positions.dedup();
        let batches = positions
            .iter()
            .map(|&position| self.batch(position))
            .collect::<Result<Vec<_>>>()?;
        let indices: Vec<(usize, usize)> = located
            .iter()
            .map(|&(batch, offset)| {
                let at = positions.binary_search(&batch).unwrap_or_else(|at| at);
                (at, offset as usize)
            })
            .collect();
        let sources: Vec<&RecordBatch> = batches.iter().collect();
        interleave_record_batch(&sources, &indices).map_err(|err| {
            Error::InvalidArgument(format!(
                "cannot gather rows of this stream's batches: {err}; read whole batches by \
                 their index instead"
            ))
        })
    }

    /// Make the row index cover stream row `row`: learn the rows of each batch up to
    /// the one holding it, pulling the upstream as far as that batch.
    fn index_rows_through(&self, row: u64) -> Result<()> {
        loop {
            let (batches, rows) = self
                .shared()
                .with_row_index(|index| (index.batches(), index.rows()))?;
            if row < rows {
                return Ok(());
            }
            // A live cache's batches enter the index as they are stored; a save's are
            // learned here, as they are first read.
            let Some(batch) = self.batch_at(batches)? else {
                return Err(Error::OutOfRange(format!(
                    "row {row} is out of range: the stream has {rows} rows; take rows below \
                     that"
                )));
            };
            self.shared()
                .with_row_index(|index| index.learn(batches, batch.num_rows() as u64))?;
        }
    }
}
