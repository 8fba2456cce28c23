//! Random access: a batch by its position in the stream, and rows by theirs, found through
//! the row index of the memory tier ([`crate::storage::RowIndex`]). Neither is a reader:
//! `max_readers` does not count it, and it holds back no eviction.

use std::sync::Arc;

use arrow_array::{Array, RecordBatch, RecordBatchOptions};
use arrow_select::interleave::interleave;

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
        // Located in a snapshot, outside the state lock that every read takes.
        let index = self.shared().with_row_index(|index| index.clone())?;
        let located = rows
            .iter()
            .map(|&row| {
                index.locate(row).ok_or_else(|| {
                    Error::Internal(format!("row {row} is missing from the row index"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        drop(index);
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
        let schema = self.schema();
        // Column by column rather than `interleave_record_batch`, which cannot make a
        // batch of no columns: its row count would be lost.
        let columns = (0..schema.fields().len())
            .map(|column| {
                let values: Vec<&dyn Array> =
                    batches.iter().map(|b| b.column(column).as_ref()).collect();
                interleave(&values, &indices)
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|err| {
                Error::InvalidArgument(format!(
                    "cannot gather rows of this stream's batches: {err}; read whole batches \
                     by their index instead"
                ))
            })?;
        let options = RecordBatchOptions::new().with_row_count(Some(indices.len()));
        RecordBatch::try_new_with_options(schema, columns, &options)
            .map_err(|err| Error::Internal(format!("gathered rows do not fit the schema: {err}")))
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

#[cfg(test)]
mod tests {
    use arrow_array::{Int64Array, RecordBatchIterator};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;
    use crate::CacheOptions;

    /// A cache over `batches` batches of 3 rows each, whose ids count the stream's rows.
    fn cache(batches: i64, options: CacheOptions) -> StreamCache {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let made: Vec<_> = (0..batches)
            .map(|b| {
                let ids = Int64Array::from_iter_values(b * 3..b * 3 + 3);
                Ok(RecordBatch::try_new(schema.clone(), vec![Arc::new(ids)]).unwrap())
            })
            .collect();
        let upstream = Box::new(RecordBatchIterator::new(made, schema));
        StreamCache::new(upstream, options).unwrap()
    }

    fn ids(batch: &RecordBatch) -> Vec<i64> {
        let column = batch
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        column.values().to_vec()
    }

    #[test]
    fn a_batch_and_rows_are_read_only_as_far_as_they_lie() {
        let cache = cache(5, CacheOptions::default());
        assert_eq!(ids(&cache.batch(1).unwrap()), [3, 4, 5]);
        assert_eq!(cache.ingested_count(), 2);
        assert_eq!(ids(&cache.take(&[8, 0, 8, 4]).unwrap()), [8, 0, 8, 4]);
        assert_eq!(cache.ingested_count(), 3);
        assert_eq!(cache.take(&[]).unwrap().num_rows(), 0);
        assert!(matches!(cache.batch(5), Err(Error::OutOfRange(m)) if m.contains("has 5 batches")));
        assert!(
            matches!(cache.take(&[15]), Err(Error::OutOfRange(m)) if m.contains("has 15 rows"))
        );
    }

    #[test]
    fn a_batch_eviction_dropped_is_evicted_and_close_is_closed() {
        let options = CacheOptions {
            max_readers: Some(1),
            ..CacheOptions::default()
        };
        let cache = cache(3, options);
        assert_eq!(cache.reader(true).unwrap().count(), 3);
        let evicted = Error::Evicted {
            position: 1,
            evicted_below: 3,
        };
        assert_eq!(cache.batch(1).unwrap_err(), evicted);
        cache.close().unwrap();
        assert_eq!(cache.take(&[0]).unwrap_err(), Error::Closed);
        assert_eq!(cache.take(&[]).unwrap_err(), Error::Closed);
    }
}
