//! Import: a producer's C `ArrowArrayStream`, its schema, and each array it hands over,
//! checked against the schema's plan, then kept as the producer's columns (a flat batch,
//! imported into arrow-rs only when a `RecordBatch` is needed) or as its whole tree under
//! an arrow-rs import.

use std::ffi::{c_int, CStr};
use std::ptr;
use std::sync::Arc;

use arrow_array::ffi::from_ffi_and_data_type;
use arrow_array::{Array, ArrayRef, RecordBatch, RecordBatchOptions, StructArray};
use arrow_data::ffi::FFI_ArrowArray;
use arrow_data::ArrayData;
use arrow_schema::ffi::FFI_ArrowSchema;
use arrow_schema::{ArrowError, DataType, Schema, SchemaRef};

use crate::abi::{ArrowArray, ArrowArrayStream, ArrowSchema};
use crate::image::{FlatImage, TreeImage};
use crate::kept::KeptTree;
use crate::layout::Plan;
use crate::schema_copy::SchemaCopy;

/// A stream call that did not hand over what it should.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// The stream has no such callback.
    Missing(&'static str),
    /// The callback failed with this errno; the message is `get_last_error`'s.
    Failed { errno: i32, message: String },
    /// The schema it handed over cannot be imported, for this reason.
    InvalidSchema(String),
}

/// Why an array the producer handed over was not imported.
#[derive(Debug)]
pub enum ImportError {
    /// It breaks the C Data Interface or Arrow's rules for its type: what is wrong, where.
    Malformed(String),
    /// arrow-rs could not import it.
    Arrow(ArrowError),
}

impl From<ArrowError> for ImportError {
    fn from(err: ArrowError) -> Self {
        Self::Arrow(err)
    }
}

/// A producer's stream, owned: dropping it calls its `release`.
pub struct ProducerStream {
    stream: ArrowArrayStream,
}

// SAFETY: the C Stream Interface lets a consumer call a stream from any thread, one call
// at a time, which `&mut self` ensures.
unsafe impl Send for ProducerStream {}

impl ProducerStream {
    /// Read the schema of a stream the caller still owns, exactly as its producer wrote
    /// it, with what importing its arrays needs; the stream is not consumed.
    ///
    /// # Safety
    /// `raw` points to a live, unreleased stream.
    pub unsafe fn read_schema(
        raw: *mut ArrowArrayStream,
    ) -> Result<(Importer, SchemaCopy), StreamError> {
        // SAFETY: a live stream, as the caller promised.
        let get_schema = unsafe { (*raw).get_schema }.ok_or(StreamError::Missing("get_schema"))?;
        let mut schema = FFI_ArrowSchema::empty();
        // SAFETY: a live stream, and a released schema for the producer to write.
        let code = unsafe { get_schema(raw, ptr::from_mut(&mut schema).cast()) };
        // SAFETY: the stream's call returned just now.
        unsafe { outcome(raw, code) }?;
        // SAFETY: the producer just wrote an unreleased schema.
        let exact = unsafe { SchemaCopy::of(ArrowSchema::of_ffi(&schema)) }
            .map_err(StreamError::InvalidSchema)?;
        let importer = Importer::new(&exact.arrow_view()).map_err(StreamError::InvalidSchema)?;
        Ok((importer, exact))
    }

    /// Take ownership of `raw`, leaving it released (its `release` is NULL afterwards).
    ///
    /// # Safety
    /// `raw` points to a live, unreleased stream.
    pub unsafe fn take(raw: *mut ArrowArrayStream) -> Self {
        // SAFETY: a live stream; the released state is what the caller is left with.
        let stream = unsafe { ptr::replace(raw, ArrowArrayStream::RELEASED) };
        Self { stream }
    }

    /// Have the producer write its next array into `out`, a released array, where it
    /// stays until it is kept (no copy of the struct on the way); `false` at the end of the
    /// stream, with `out` left released.
    #[inline]
    pub fn next_into(&mut self, out: &mut FFI_ArrowArray) -> Result<bool, StreamError> {
        let Some(get_next) = self.stream.get_next else {
            return Err(StreamError::Missing("get_next"));
        };
        debug_assert!(out.is_released(), "a live array would leak");
        let raw = ptr::from_mut(&mut self.stream);
        // SAFETY: an owned, live stream, and a released array for the producer to write.
        let code = unsafe { get_next(raw, ptr::from_mut(out).cast()) };
        // SAFETY: the stream's call returned just now.
        unsafe { outcome(raw, code) }?;
        Ok(!out.is_released())
    }
}

impl Drop for ProducerStream {
    fn drop(&mut self) {
        if let Some(release) = self.stream.release {
            // SAFETY: an owned, live stream, released once, here.
            unsafe { release(&mut self.stream) };
        }
    }
}

/// `code`, what a call of the stream at `raw` returned, as a result.
///
/// # Safety
/// `raw` points to a live stream, whose last call returned `code`.
#[inline]
unsafe fn outcome(raw: *mut ArrowArrayStream, code: c_int) -> Result<(), StreamError> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: as the caller promised.
    Err(unsafe { failure(raw, code) })
}

/// A failed call's errno, with the message the call left, or a placeholder when it left
/// none.
///
/// # Safety
/// As for [`outcome`].
#[cold]
unsafe fn failure(raw: *mut ArrowArrayStream, code: c_int) -> StreamError {
    // SAFETY: a live stream, as the caller promised.
    let get_last_error = unsafe { (*raw).get_last_error };
    // SAFETY: as above.
    let text = get_last_error.map(|get| unsafe { get(raw) });
    let message = match text.filter(|text| !text.is_null()) {
        // SAFETY: a NUL-terminated message, valid until the stream's next call.
        Some(text) => unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned(),
        None => "the upstream stream failed without a message".into(),
    };
    StreamError::Failed {
        errno: code,
        message,
    }
}

/// What importing a stream's arrays needs: its schema as arrow-rs holds it, and the plan
/// every array is checked against. Shared with the stream's flat batches.
pub struct Importer {
    rows: Arc<Rows>,
}

struct Rows {
    schema: SchemaRef,
    row_type: DataType,
    plan: Plan,
}

impl Importer {
    /// The importer of arrays of `root`'s rows, a C schema that arrow-rs reads.
    pub fn new(root: &FFI_ArrowSchema) -> Result<Self, String> {
        let schema = Arc::new(Schema::try_from(root).map_err(|err| err.to_string())?);
        Ok(Self {
            rows: Arc::new(Rows {
                row_type: DataType::Struct(schema.fields().clone()),
                plan: Plan::new(root)?,
                schema,
            }),
        })
    }

    /// The importer of arrays of `schema`'s rows.
    pub fn for_schema(schema: &Schema) -> Result<Self, String> {
        Self::new(&FFI_ArrowSchema::try_from(schema).map_err(|err| err.to_string())?)
    }

    #[inline]
    pub fn schema(&self) -> &SchemaRef {
        &self.rows.schema
    }

    /// Check `array`, a struct array of the stream's rows, against the plan: arrow-rs
    /// trusts a tree's shape (and asserts on some of it). The array stays where it is
    /// until it is kept; one that is not is released when its owner drops it.
    #[inline]
    pub fn check<'a>(&'a self, array: &'a mut FFI_ArrowArray) -> Result<Arrived<'a>, ImportError> {
        // SAFETY: an unreleased array is valid to read.
        unsafe { self.rows.plan.check(ArrowArray::of_ffi(array)) }
            .map_err(|problem| ImportError::Malformed(format!("the batch: {problem}")))?;
        Ok(Arrived {
            array,
            rows: &self.rows,
        })
    }
}

/// An array the plan accepted, not kept yet.
pub struct Arrived<'a> {
    array: &'a mut FFI_ArrowArray,
    rows: &'a Arc<Rows>,
}

impl<'a> Arrived<'a> {
    /// How many rows it has.
    #[inline]
    pub fn rows(&self) -> usize {
        ArrowArray::of_ffi(self.array).length as usize
    }

    /// The batch of a zero-row array: no rows' data is kept, since an empty string
    /// column's one offset may be any value (the C Data Interface allows it) and arrow-rs's
    /// validation refuses that; but each column keeps the dictionaries its producer sent,
    /// which a consumer of the replay sees (and an IPC writer compares with the next
    /// batch's).
    pub fn into_empty_batch(self) -> Result<RecordBatch, ImportError> {
        let schema = &self.rows.schema;
        if !self.rows.plan.has_dictionary() {
            return Ok(RecordBatch::new_empty(schema.clone()));
        }
        // SAFETY: a tree the plan accepted for this type; nothing of it is read but its
        // dictionaries, which are validated in full below.
        let data = unsafe { from_ffi_and_data_type(take(self.array), self.rows.row_type.clone()) }?;
        Ok(batch_of_rows(empty_keeping_dictionaries(&data)?, schema)?)
    }

    /// (start, bytes) of each of its buffers when its columns are all flat and it has no
    /// nulls of its own, as arrow-rs's import would make them; `None` otherwise.
    #[inline]
    pub fn flat_buffers(&self) -> Result<Option<Vec<(usize, u64)>>, ImportError> {
        // SAFETY: an unreleased array that the plan accepted.
        unsafe { self.rows.plan.flat_buffers(ArrowArray::of_ffi(self.array)) }
            .map_err(|problem| ImportError::Malformed(format!("the batch: {problem}")))
    }

    /// Keep its columns as they came, without an arrow-rs import. Hands it back when its
    /// root cannot give them away (a validity bitmap) or they are not leaves.
    #[inline]
    pub fn keep_flat(self) -> Result<FlatBatch, Self> {
        match FlatImage::take_columns(self.array) {
            Some(image) => Ok(FlatBatch {
                image,
                rows: self.rows.clone(),
            }),
            None => Err(self),
        }
    }

    /// Keep its tree, and import the rows into arrow-rs through a second root.
    pub fn keep_tree(self) -> Result<KeptRows<'a>, ImportError> {
        let tree = Arc::new(KeptTree::new(take(self.array)));
        let rows = import_rows(KeptTree::shared_import_root(&tree), self.rows)?;
        Ok(KeptRows {
            rows,
            tree,
            schema: &self.rows.schema,
        })
    }
}

/// A batch kept as the producer's tree, imported into arrow-rs and validated.
pub struct KeptRows<'a> {
    rows: ArrayData,
    tree: Arc<KeptTree>,
    schema: &'a SchemaRef,
}

impl KeptRows<'_> {
    /// The struct array of the rows, for a caller that counts its buffers.
    #[inline]
    pub fn rows(&self) -> &ArrayData {
        &self.rows
    }

    /// A copy of the batch that keeps nothing of the producer's, when neither the rows
    /// nor their columns are sliced; `None` otherwise. For a batch so small that the
    /// producer's bookkeeping for it would cost more than its data.
    pub fn copy(&self) -> Option<Result<RecordBatch, ArrowError>> {
        let rows = &self.rows;
        let whole = |data: &ArrayData| data.len() == rows.len() && data.offset() == 0;
        if rows.offset() != 0 || !rows.child_data().iter().all(whole) {
            return None;
        }
        let columns: Vec<ArrayRef> = rows
            .child_data()
            .iter()
            .map(|column| {
                let mut copy =
                    arrow_data::transform::MutableArrayData::new(vec![column], false, column.len());
                copy.try_extend(0, 0, column.len()).ok()?;
                Some(arrow_array::make_array(copy.freeze()))
            })
            .collect::<Option<_>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        Some(RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &options,
        ))
    }

    /// The batch, and the image of the tree that its exports copy.
    pub fn into_batch(self) -> Result<(RecordBatch, TreeImage), ArrowError> {
        let batch = batch_of_rows(self.rows, self.schema)?;
        Ok((batch, TreeImage::new(self.tree)))
    }
}

/// A batch kept as the producer's columns alone, in an image that exports copy; imported
/// into arrow-rs only when a `RecordBatch` is needed.
pub struct FlatBatch {
    image: Arc<FlatImage>,
    rows: Arc<Rows>,
}

impl FlatBatch {
    #[inline]
    pub fn image(&self) -> &FlatImage {
        &self.image
    }

    /// The batch, imported into arrow-rs and validated; its buffers stay the producer's.
    pub fn to_batch(&self) -> Result<RecordBatch, ImportError> {
        let rows = import_rows(FlatImage::shared_import_root(&self.image), &self.rows)?;
        Ok(batch_of_rows(rows, &self.rows.schema)?)
    }

    /// (start, bytes) of each of its buffers, as [`Arrived::flat_buffers`] found them.
    pub fn buffers(&self) -> Option<Vec<(usize, u64)>> {
        self.image.read_root(|root| {
            // SAFETY: the producer's columns, checked when the batch arrived and unreleased
            // while the image lives.
            unsafe { self.rows.plan.flat_buffers(root) }.ok().flatten()
        })
    }
}

/// The array in `slot`, which is left released.
fn take(slot: &mut FFI_ArrowArray) -> FFI_ArrowArray {
    std::mem::replace(slot, FFI_ArrowArray::empty())
}

/// The rows under `root`, a root over a kept tree that the plan accepted, imported into
/// arrow-rs and validated.
fn import_rows(root: FFI_ArrowArray, rows: &Rows) -> Result<ArrayData, ImportError> {
    // SAFETY: a tree the plan accepted for this type.
    let data = unsafe { from_ffi_and_data_type(root, rows.row_type.clone()) }?;
    data.validate()
        .map_err(|err| ImportError::Malformed(err.to_string()))?;
    Ok(data)
}

/// An empty array of `data`'s type whose dictionaries, at every depth, are `data`'s.
fn empty_keeping_dictionaries(data: &ArrayData) -> Result<ArrayData, ImportError> {
    let empty = ArrayData::new_empty(data.data_type());
    if !holds_dictionary(data) {
        return Ok(empty);
    }
    let children = match data.data_type() {
        DataType::Dictionary(..) => {
            let values = data.child_data()[0].clone();
            values.validate_full().map_err(|err| {
                ImportError::Malformed(format!("a dictionary of a zero-row batch: {err}"))
            })?;
            vec![values]
        }
        _ => data
            .child_data()
            .iter()
            .map(empty_keeping_dictionaries)
            .collect::<Result<_, _>>()?,
    };
    Ok(empty.into_builder().child_data(children).build()?)
}

/// Whether `data` or an array below it is dictionary-encoded (arrow-rs holds a
/// dictionary's values as its child).
fn holds_dictionary(data: &ArrayData) -> bool {
    matches!(data.data_type(), DataType::Dictionary(..))
        || data.child_data().iter().any(holds_dictionary)
}

fn batch_of_rows(data: ArrayData, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let rows = StructArray::from(data);
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    let (_, mut columns, _) = rows.into_parts();
    // `StructArray::from` collects the columns in place into the import's child list,
    // whose capacity is for `ArrayData`s: 544 bytes kept for one column, otherwise.
    columns.shrink_to_fit();
    RecordBatch::try_new_with_options(schema.clone(), columns, &options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::ffi_stream::FFI_ArrowArrayStream;
    use arrow_array::{Int32Array, Int64Array, StringArray};
    use arrow_schema::Field;

    /// A producer's stream over `batches`, written by arrow-rs, as the raw struct.
    fn stream_of(batches: Vec<RecordBatch>) -> ArrowArrayStream {
        let schema = batches[0].schema();
        let reader =
            arrow_array::RecordBatchIterator::new(batches.into_iter().map(Ok), schema.clone());
        let mut stream = FFI_ArrowArrayStream::new(Box::new(reader));
        // SAFETY: the same C struct, live; arrow-rs's struct is left released.
        unsafe {
            ptr::replace(
                ptr::from_mut(&mut stream).cast::<ArrowArrayStream>(),
                ArrowArrayStream::RELEASED,
            )
        }
    }

    /// The arrays of a stream over `batches`, and its importer.
    fn arrays_of(batches: Vec<RecordBatch>) -> (Importer, Vec<FFI_ArrowArray>) {
        let mut raw = stream_of(batches);
        // SAFETY: a live stream.
        let (importer, _) = unsafe { ProducerStream::read_schema(&mut raw) }.unwrap();
        // SAFETY: as above.
        let mut stream = unsafe { ProducerStream::take(&mut raw) };
        assert!(raw.release.is_none());
        let arrays = std::iter::from_fn(|| {
            let mut array = FFI_ArrowArray::empty();
            stream.next_into(&mut array).unwrap().then_some(array)
        })
        .collect();
        (importer, arrays)
    }

    /// A batch of one string column, "s": ab, cd, ef.
    fn three_strings() -> RecordBatch {
        let column = StringArray::from(vec!["ab", "cd", "ef"]);
        RecordBatch::try_from_iter([("s", Arc::new(column) as _)]).unwrap()
    }

    #[test]
    fn a_stream_without_get_next_or_a_failing_one_says_so() {
        let mut raw = stream_of(vec![three_strings()]);
        let get_next = raw.get_next.take();
        // SAFETY: a live stream.
        let mut stream = unsafe { ProducerStream::take(&mut raw) };
        let mut array = FFI_ArrowArray::empty();
        let missing = stream.next_into(&mut array).unwrap_err();
        assert_eq!(missing, StreamError::Missing("get_next"));
        stream.stream.get_next = get_next;
        assert!(stream.next_into(&mut array).unwrap());
        assert!(!array.is_released());
        let mut end = FFI_ArrowArray::empty();
        assert!(!stream.next_into(&mut end).unwrap());
    }

    #[test]
    fn flat_columns_are_kept_flat_and_others_as_a_tree() {
        let rows: Vec<i64> = (0..100).collect();
        let flat = RecordBatch::try_from_iter([
            ("i", Arc::new(Int64Array::from(rows.clone())) as ArrayRef),
            ("s", Arc::new(StringArray::from(vec!["ab"; 100])) as _),
        ])
        .unwrap();
        let (importer, arrays) = arrays_of(vec![flat.clone()]);
        for mut array in arrays {
            let arrived = importer.check(&mut array).unwrap();
            assert_eq!(arrived.rows(), 100);
            let listed = arrived.flat_buffers().unwrap().unwrap();
            let Ok(kept) = arrived.keep_flat() else {
                panic!("flat columns are kept flat")
            };
            assert_eq!(kept.buffers(), Some(listed));
            assert_eq!(kept.to_batch().unwrap(), flat);
        }

        let nested = RecordBatch::try_from_iter([(
            "list",
            Arc::new(arrow_array::ListArray::from_iter_primitive::<
                arrow_array::types::Int64Type,
                _,
                _,
            >(rows.iter().map(|&v| Some(vec![Some(v)])))) as _,
        )])
        .unwrap();
        let (importer, arrays) = arrays_of(vec![nested.clone()]);
        for mut array in arrays {
            let arrived = importer.check(&mut array).unwrap();
            assert!(arrived.flat_buffers().unwrap().is_none());
            let kept = arrived.keep_tree().unwrap();
            assert!(kept.copy().is_some(), "unsliced rows are copied on request");
            let (batch, _image) = kept.into_batch().unwrap();
            assert_eq!(batch, nested);
        }
    }

    #[test]
    fn a_batch_with_an_offset_is_not_copied() {
        let batch = three_strings();
        let (importer, arrays) = arrays_of(vec![batch.clone()]);
        for array in arrays {
            let mut raw = ArrowArray::from_ffi(array);
            (raw.offset, raw.length) = (1, 2);
            // SAFETY: arrow-rs's export, sliced within its children's rows.
            let mut sliced = unsafe { raw.into_ffi() };
            let kept = importer.check(&mut sliced).unwrap().keep_tree().unwrap();
            assert!(kept.copy().is_none());
            assert_eq!(kept.into_batch().unwrap().0, batch.slice(1, 2));
        }
    }

    #[test]
    fn an_empty_slice_whose_one_offset_is_not_zero_is_an_empty_batch() {
        let batch = three_strings();
        // arrow-rs exports this slice with offset 0 and its one offset 4.
        let (importer, arrays) = arrays_of(vec![batch.slice(2, 0), batch.slice(3, 0)]);
        assert_eq!(arrays.len(), 2);
        for mut array in arrays {
            let arrived = importer.check(&mut array).unwrap();
            assert_eq!(arrived.rows(), 0);
            assert_eq!(
                arrived.into_empty_batch().unwrap(),
                RecordBatch::new_empty(batch.schema())
            );
        }
    }

    #[test]
    fn a_zero_row_batch_keeps_its_dictionaries_at_every_depth() {
        use arrow_array::{DictionaryArray, ListArray};
        let keys = Int32Array::from(vec![0, 1, 0]);
        let words = Arc::new(StringArray::from(vec!["ab", "cd"]));
        let dictionary: ArrayRef = Arc::new(DictionaryArray::try_new(keys, words).unwrap());
        let offsets = arrow_buffer::OffsetBuffer::from_lengths([2, 0, 1]);
        let item = Arc::new(Field::new("item", dictionary.data_type().clone(), true));
        let list: ArrayRef =
            Arc::new(ListArray::try_new(item, offsets, dictionary.clone(), None).unwrap());
        let batch = RecordBatch::try_from_iter([("d", dictionary), ("l", list)]).unwrap();
        let (importer, arrays) =
            arrays_of(vec![batch.slice(1, 0), batch.clone(), batch.slice(2, 0)]);
        let values = |batch: &RecordBatch, column: usize| {
            let data = batch.column(column).to_data();
            let dictionary = match column {
                0 => data,
                _ => data.child_data()[0].clone(),
            };
            arrow_array::make_array(dictionary.child_data()[0].clone())
        };
        for (index, mut array) in arrays.into_iter().enumerate() {
            let arrived = importer.check(&mut array).unwrap();
            if index == 1 {
                continue;
            }
            let got = arrived.into_empty_batch().unwrap();
            assert_eq!(got.num_rows(), 0);
            for column in 0..2 {
                assert_eq!(
                    &values(&got, column),
                    &values(&batch, column),
                    "column {column}"
                );
            }
        }
    }

    #[test]
    fn a_malformed_array_is_named_before_arrow_rs_reads_it() {
        let (importer, arrays) = arrays_of(vec![three_strings()]);
        for array in arrays {
            let mut raw = ArrowArray::from_ffi(array);
            raw.n_children = 0;
            // SAFETY: arrow-rs's export with its child count lowered: its release still
            // frees every child it made.
            let mut spoiled = unsafe { raw.into_ffi() };
            let Err(ImportError::Malformed(problem)) = importer.check(&mut spoiled) else {
                panic!("a missing child passed");
            };
            assert!(problem.contains("0 children"), "{problem}");
        }
    }

    #[test]
    fn a_schema_with_a_type_of_no_layout_is_refused_by_name() {
        let column = FFI_ArrowSchema::try_new("w:-1", vec![], None)
            .and_then(|column| column.with_name("w"))
            .unwrap();
        let rows = FFI_ArrowSchema::try_new("+s", vec![column], None).unwrap();
        let problem = Importer::new(&rows).err().unwrap();
        assert!(problem.contains("FixedSizeBinary(-1)"), "{problem}");
        assert!(Importer::for_schema(&three_strings().schema()).is_ok());
    }
}
