//! A producer's C stream as the cache's upstream: the engine's import adapted to the
//! core's `BatchSource`, with the producer's errno kept and the form each batch is kept in
//! chosen by its size.

use arrow_array::RecordBatch;
use arrow_data::ffi::FFI_ArrowArray;
use arrow_schema::{ArrowError, SchemaRef};

use crate::abi::ArrowArrayStream;
use crate::derived::{FlatExport, TreeExport};
use batchcorder_cdata::import::{ImportError, Importer, ProducerStream, StreamError};
use batchcorder_cdata::schema_copy::SchemaCopy;
use batchcorder_core::storage::{Allocations, CachedBatch};
use batchcorder_core::{BatchSource, Pulled};
use batchcorder_core::{Error, Result};

/// An upstream C stream, owned: dropping it calls its `release`.
pub struct CStreamUpstream {
    stream: ProducerStream,
    importer: Importer,
}

impl CStreamUpstream {
    /// Read the schema of a stream the caller still owns, with what importing its batches
    /// needs, and as the producer wrote it; the stream is not consumed.
    ///
    /// # Safety
    /// `raw` points to a live, unreleased stream.
    pub(crate) unsafe fn schema_of(raw: *mut ArrowArrayStream) -> Result<(Importer, SchemaCopy)> {
        // SAFETY: as the caller promised.
        unsafe { ProducerStream::read_schema(raw) }.map_err(|err| match err {
            StreamError::Missing(callback) => {
                Error::InvalidArgument(format!("upstream stream has no {callback} callback"))
            }
            StreamError::Failed { errno, message } => Error::Upstream { message, errno },
            StreamError::InvalidSchema(problem) => Error::Upstream {
                message: format!("the upstream schema cannot be imported: {problem}"),
                errno: libc::EINVAL,
            },
        })
    }

    /// Take ownership of `raw`, leaving it released (its `release` is NULL afterwards).
    ///
    /// # Safety
    /// `raw` points to a live, unreleased stream whose schema `importer` was read from.
    pub unsafe fn take(raw: *mut ArrowArrayStream, importer: Importer) -> Self {
        Self {
            // SAFETY: as the caller promised.
            stream: unsafe { ProducerStream::take(raw) },
            importer,
        }
    }

    /// Keep a checked batch in the form that replays best: a batch of flat columns as the
    /// producer's columns alone, imported into arrow-rs when something needs a
    /// `RecordBatch`; a tiny batch as a copy, its producer's arrays released; any other as
    /// an arrow-rs import with the producer's tree kept for exports.
    fn import(&self, array: &mut FFI_ArrowArray) -> std::result::Result<Pulled, ImportError> {
        let mut arrived = self.importer.check(array)?;
        let rows = arrived.rows();
        if rows == 0 {
            return Ok(owned(arrived.into_empty_batch()?));
        }
        let mut tiny_and_flat = false;
        if let Some(buffers) = arrived.flat_buffers()? {
            let allocations = Allocations::of_buffers(buffers);
            tiny_and_flat = tiny(&allocations);
            if !tiny_and_flat {
                match arrived.keep_flat() {
                    Ok(flat) => {
                        return Ok(Pulled {
                            batch: CachedBatch::deferred(rows, Box::new(FlatExport(flat))),
                            allocations: Some(allocations),
                        })
                    }
                    Err(back) => arrived = back, // a root with a validity bitmap
                }
            }
        }
        let kept = arrived.keep_tree()?;
        if let Some(copy) = tiny_and_flat.then(|| kept.copy()).flatten() {
            // The producer's arrays go back at once: its bookkeeping for them would cost
            // more than the data (bench/notes.md). Reads export the copy with arrow-rs.
            return Ok(owned(copy?));
        }
        let allocations = Allocations::of_data(kept.rows());
        let (batch, image) = kept.into_batch()?;
        Ok(Pulled {
            batch: CachedBatch::with_derived(batch, Some(Box::new(TreeExport(image)))),
            allocations: Some(allocations),
        })
    }
}

fn owned(batch: RecordBatch) -> Pulled {
    Pulled {
        batch: CachedBatch::new(batch),
        allocations: None,
    }
}

/// A batch whose buffers average at most this many bytes is copied at ingestion.
const COMPACT_AT_MOST_BYTES_PER_BUFFER: u64 = 64;

/// Whether a batch with `allocations` is tiny enough to copy.
fn tiny(allocations: &Allocations) -> bool {
    let (bytes, buffers) = allocations.totals();
    bytes <= buffers as u64 * COMPACT_AT_MOST_BYTES_PER_BUFFER
}

/// An import failure as the upstream's error; the core keeps it at that position.
pub(crate) fn import_error(err: ImportError) -> ArrowError {
    match err {
        ImportError::Malformed(problem) => ArrowError::InvalidArgumentError(format!(
            "the upstream produced a malformed batch: {problem}; the batches before it stay \
             readable"
        )),
        ImportError::Arrow(err) => err,
    }
}

/// An upstream errno as the `ArrowError` variant that [`Error::from_upstream`] maps back.
fn errno_error(errno: i32, message: String) -> ArrowError {
    match errno {
        libc::EINVAL => ArrowError::InvalidArgumentError(message),
        libc::ENOMEM => ArrowError::MemoryError(message),
        other => ArrowError::IoError(message, std::io::Error::from_raw_os_error(other)),
    }
}

impl BatchSource for CStreamUpstream {
    fn schema(&self) -> SchemaRef {
        self.importer.schema().clone()
    }

    fn pull(&mut self) -> Option<std::result::Result<Pulled, ArrowError>> {
        let mut array = FFI_ArrowArray::empty();
        match self.stream.next_into(&mut array) {
            Ok(true) => Some(self.import(&mut array).map_err(import_error)),
            Ok(false) => None,
            Err(StreamError::Failed { errno, message }) => Some(Err(errno_error(errno, message))),
            Err(StreamError::Missing(callback)) => Some(Err(ArrowError::CDataInterface(format!(
                "upstream has no {callback}"
            )))),
            Err(StreamError::InvalidSchema(problem)) => {
                Some(Err(ArrowError::CDataInterface(problem)))
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow_array::ffi_stream::FFI_ArrowArrayStream;
    use arrow_array::{ArrayRef, Int32Array, Int64Array, StringArray};

    /// What a C stream upstream over `batches` hands over, batch by batch.
    pub(crate) fn pull_all(batches: Vec<RecordBatch>) -> Vec<Pulled> {
        let schema = batches[0].schema();
        let reader =
            arrow_array::RecordBatchIterator::new(batches.into_iter().map(Ok), schema.clone());
        let mut stream = FFI_ArrowArrayStream::new(Box::new(reader));
        let raw = std::ptr::from_mut(&mut stream).cast::<ArrowArrayStream>();
        // SAFETY: arrow-rs's live stream, the same C struct.
        let (importer, _) = unsafe { CStreamUpstream::schema_of(raw) }.unwrap();
        // SAFETY: as above; `stream` is left released.
        let mut upstream = unsafe { CStreamUpstream::take(raw, importer) };
        std::iter::from_fn(|| upstream.pull().map(std::result::Result::unwrap)).collect()
    }

    /// A batch of 100 rows whose one column is dictionary-encoded, so not flat.
    pub(crate) fn encoded() -> RecordBatch {
        let keys = Int32Array::from_iter_values((0..100).map(|i| i % 3));
        let words = Arc::new(StringArray::from(vec!["ab", "cd", "ef"]));
        let column = arrow_array::DictionaryArray::try_new(keys, words).unwrap();
        RecordBatch::try_from_iter([("d", Arc::new(column) as ArrayRef)]).unwrap()
    }

    #[test]
    fn a_batch_of_flat_columns_is_imported_on_first_use_and_others_at_once() {
        let rows: Vec<i64> = (0..100).collect();
        let flat = RecordBatch::try_from_iter([(
            "i",
            Arc::new(Int64Array::from(rows.clone())) as ArrayRef,
        )])
        .unwrap();
        let [pulled] = &pull_all(vec![flat.clone()])[..] else {
            panic!()
        };
        assert!(pulled.batch.batch_if_made().is_none());
        assert_eq!(pulled.batch.num_rows(), 100);
        assert_eq!(pulled.batch.batch().unwrap(), &flat);

        let encoded = encoded();
        let [pulled] = &pull_all(vec![encoded.clone()])[..] else {
            panic!()
        };
        assert_eq!(pulled.batch.batch_if_made(), Some(&encoded));
        assert!(pulled.batch.derived_if_present::<TreeExport>().is_some());
    }

    #[test]
    fn a_tiny_batch_is_a_copy_that_keeps_nothing_of_the_producer() {
        let tiny =
            RecordBatch::try_from_iter([("i", Arc::new(Int32Array::from(vec![7])) as _)]).unwrap();
        let [pulled] = &pull_all(vec![tiny.clone()])[..] else {
            panic!()
        };
        assert_eq!(pulled.batch.batch_if_made(), Some(&tiny));
        assert!(pulled.allocations.is_none());
        assert!(pulled.batch.derived_if_present::<TreeExport>().is_none());
    }

    #[test]
    fn a_schema_with_a_type_of_no_layout_is_the_upstreams_error_naming_it() {
        unsafe extern "C" fn get_schema(
            _: *mut ArrowArrayStream,
            out: *mut crate::abi::ArrowSchema,
        ) -> std::ffi::c_int {
            use arrow_schema::ffi::FFI_ArrowSchema;
            let column = FFI_ArrowSchema::try_new("w:-1", vec![], None)
                .and_then(|column| column.with_name("w"))
                .expect("a valid C schema");
            let rows = FFI_ArrowSchema::try_new("+s", vec![column], None).expect("valid");
            // SAFETY: the stream contract hands `get_schema` a writable schema.
            unsafe { out.write(crate::abi::ArrowSchema::from_ffi(rows)) };
            0
        }
        let mut stream = ArrowArrayStream {
            get_schema: Some(get_schema),
            ..ArrowArrayStream::RELEASED
        };
        // SAFETY: a stream whose one callback used here is live.
        let Err(err) = (unsafe { CStreamUpstream::schema_of(&mut stream) }) else {
            panic!("a type with no layout passed");
        };
        assert_eq!(err.errno(), libc::EINVAL);
        let message = err.to_string();
        assert!(
            message.contains("cannot be imported") && message.contains("FixedSizeBinary(-1)"),
            "{message}"
        );
    }

    /// The buffers the import lists for `batch` as a stream hands it over, those its flat
    /// form finds again, and those of arrow-rs's import of it.
    fn listed_three_ways(batch: &RecordBatch) -> [Allocations; 3] {
        use batchcorder_core::storage::Derived;
        let [pulled] = &pull_all(vec![batch.clone()])[..] else {
            panic!()
        };
        let flat = pulled
            .batch
            .derived_if_present::<FlatExport>()
            .expect("kept flat");
        let imported = flat.to_batch().unwrap().unwrap();
        [
            pulled.allocations.clone().unwrap(),
            flat.allocations().unwrap(),
            Allocations::of_batch(&imported),
        ]
    }

    #[test]
    fn flat_columns_list_the_buffers_arrow_rs_would_import() {
        use arrow_array::{BooleanArray, FixedSizeBinaryArray, Float64Array, LargeBinaryArray};
        let rows = 200;
        let batch = RecordBatch::try_from_iter([
            (
                "i",
                Arc::new(Int32Array::from_iter(
                    (0..rows).map(|i| (i % 3 > 0).then_some(i)),
                )) as ArrayRef,
            ),
            (
                "f",
                Arc::new(Float64Array::from_iter_values((0..rows).map(f64::from))) as _,
            ),
            (
                "s",
                Arc::new(StringArray::from_iter(
                    (0..rows).map(|i| (i % 4 > 0).then(|| "abc".repeat(i as usize % 5))),
                )) as _,
            ),
            (
                "b",
                Arc::new(BooleanArray::from_iter((0..rows).map(|i| Some(i % 2 == 0)))) as _,
            ),
            (
                "x",
                Arc::new(
                    FixedSizeBinaryArray::try_from_iter((0..rows).map(|i| [i as u8; 8])).unwrap(),
                ) as _,
            ),
            (
                "l",
                Arc::new(LargeBinaryArray::from_iter_values(
                    (0..rows).map(|i| vec![i as u8; i as usize % 7]),
                )) as _,
            ),
            (
                "n",
                Arc::new(arrow_array::NullArray::new(rows as usize)) as _,
            ),
        ])
        .unwrap();
        for slice in [batch.clone(), batch.slice(1, 150), batch.slice(150, 50)] {
            let [listed, kept, imported] = listed_three_ways(&slice);
            assert_eq!(listed, kept, "rows {}", slice.num_rows());
            assert_eq!(listed, imported, "rows {}", slice.num_rows());
        }
    }
}
