//! Import: a C `ArrowArrayStream` as the cache's upstream, keeping the producer's errno
//! and the columns of each producer array as they came, for replays to re-export.

use std::ffi::CStr;
use std::sync::Arc;

use arrow_array::ffi::{from_ffi_and_data_type, FFI_ArrowArray};
use arrow_array::ffi_stream::FFI_ArrowArrayStream;
use arrow_array::{Array, RecordBatch, RecordBatchOptions, StructArray};
use arrow_schema::ffi::FFI_ArrowSchema;
use arrow_schema::{ArrowError, DataType, SchemaRef};

use crate::abi::{ArrowArray, ArrowArrayStream, ArrowSchema};
use crate::array_export::{ExportRoot, OwnedArray};
use crate::schema_copy::SchemaCopy;
use batchcorder_core::storage::Allocations;
use batchcorder_core::{BatchSource, Pulled};
use batchcorder_core::{Error, Result};

/// An upstream C stream, owned: dropping it calls its `release`.
pub struct CStreamUpstream {
    stream: FFI_ArrowArrayStream,
    schema: SchemaRef,
    row_type: DataType,
}

impl CStreamUpstream {
    /// Read the schema of a stream the caller still owns, as arrow-rs holds it and as the
    /// producer wrote it; the stream is not consumed.
    ///
    /// # Safety
    /// `raw` points to a live, unreleased stream.
    pub(crate) unsafe fn schema_of(raw: *mut ArrowArrayStream) -> Result<(SchemaRef, SchemaCopy)> {
        let stream = unsafe { &mut *raw };
        let get_schema = stream.get_schema.ok_or_else(|| {
            Error::InvalidArgument("upstream stream has no get_schema callback".into())
        })?;
        let mut ffi_schema = FFI_ArrowSchema::empty();
        let code = unsafe { get_schema(raw, (&mut ffi_schema as *mut FFI_ArrowSchema).cast()) };
        if code != 0 {
            return Err(Error::Upstream {
                message: unsafe { last_error(raw) },
                errno: code,
            });
        }
        let invalid = |problem: String| Error::Upstream {
            message: format!("the upstream schema cannot be imported: {problem}"),
            errno: libc::EINVAL,
        };
        // SAFETY: the layouts are equal (abi.rs); the producer just wrote it.
        let raw_schema = unsafe { &*(&ffi_schema as *const FFI_ArrowSchema).cast::<ArrowSchema>() };
        let exact = unsafe { SchemaCopy::of(raw_schema) }.map_err(invalid)?;
        let schema = exact.to_arrow().map_err(|err| invalid(err.to_string()))?;
        Ok((Arc::new(schema), exact))
    }

    /// Take ownership of `raw`, leaving it released (its `release` is NULL afterwards).
    ///
    /// # Safety
    /// `raw` points to a live, unreleased stream whose schema is `schema`.
    pub unsafe fn take(raw: *mut ArrowArrayStream, schema: SchemaRef) -> Self {
        let stream = unsafe { FFI_ArrowArrayStream::from_raw(raw.cast()) };
        let row_type = DataType::Struct(schema.fields().clone());
        Self {
            stream,
            schema,
            row_type,
        }
    }

    /// arrow-rs imports the batch through a second root over the producer's columns,
    /// which the cache keeps (see [`OwnedArray`]): replays export copies of their structs.
    fn import(&self, array: FFI_ArrowArray) -> std::result::Result<Pulled, ArrowError> {
        // SAFETY: the layouts are equal (abi.rs); an unreleased array is valid to read.
        let raw = unsafe { &*(&array as *const FFI_ArrowArray).cast::<ArrowArray>() };
        // arrow-rs trusts the tree's shape (and asserts on some of it): check it first.
        unsafe { check_shape(raw, &self.row_type) }
            .map_err(|problem| malformed(format!("the batch: {problem}")))?;
        let tree = Arc::new(OwnedArray::new(array));
        let root = OwnedArray::shared_import_root(&tree);
        let data = unsafe { from_ffi_and_data_type(root, self.row_type.clone()) }?;
        data.validate().map_err(|err| malformed(err.to_string()))?;
        let allocations = Allocations::of_data(&data);
        if let Some(columns) = compact_copy(&data, &allocations) {
            // The producer's arrays go back at once: its bookkeeping for them would cost
            // more than the data (bench/notes.md). Reads export the copy with arrow-rs.
            let options = RecordBatchOptions::new().with_row_count(Some(data.len()));
            drop(data);
            drop(tree);
            let batch = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
            return Ok(Pulled {
                batch,
                derived: None,
                allocations: None,
            });
        }
        let rows = StructArray::from(data);
        let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        let (_, mut columns, _) = rows.into_parts();
        // `StructArray::from` collects the columns in place into the import's child list,
        // whose capacity is for `ArrayData`s: 544 bytes kept for one column, otherwise.
        columns.shrink_to_fit();
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        Ok(Pulled {
            batch,
            derived: Some(Box::new(ExportRoot::new(tree))),
            allocations: Some(allocations),
        })
    }
}

/// A batch whose buffers average at most this many bytes is copied at ingestion.
const COMPACT_AT_MOST_BYTES_PER_BUFFER: u64 = 64;

/// Copies of the columns of `rows`, a batch's struct array whose buffers are
/// `allocations`, when the batch is tiny (buffers averaging
/// [`COMPACT_AT_MOST_BYTES_PER_BUFFER`] bytes or less) and every column is of a flat type;
/// `None` otherwise, and the producer's arrays are kept.
fn compact_copy(
    rows: &arrow_data::ArrayData,
    allocations: &Allocations,
) -> Option<Vec<arrow_array::ArrayRef>> {
    let flat = |data: &arrow_data::ArrayData| {
        let data_type = data.data_type();
        (data_type.is_primitive()
            || matches!(
                data_type,
                DataType::Null
                    | DataType::Boolean
                    | DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Binary
                    | DataType::LargeBinary
                    | DataType::FixedSizeBinary(_)
            ))
            && data.len() == rows.len()
            && data.offset() == 0
    };
    if rows.offset() != 0 || rows.child_data().is_empty() || !rows.child_data().iter().all(flat) {
        return None;
    }
    let (bytes, buffers) = allocations.totals();
    if bytes > buffers as u64 * COMPACT_AT_MOST_BYTES_PER_BUFFER {
        return None;
    }
    rows.child_data()
        .iter()
        .map(|column| {
            let mut copy =
                arrow_data::transform::MutableArrayData::new(vec![column], false, column.len());
            copy.try_extend(0, 0, column.len()).ok()?;
            Some(arrow_array::make_array(copy.freeze()))
        })
        .collect()
}

fn malformed(problem: String) -> ArrowError {
    ArrowError::InvalidArgumentError(format!(
        "the upstream produced a malformed batch: {problem}; the batches before it stay \
         readable"
    ))
}

/// Check that `array` has the buffers, children and dictionary the C Data Interface
/// gives `data_type`, with lengths and offsets that are not negative, and children long
/// enough for their parent. Allocates nothing unless it fails: it runs on every batch.
///
/// # Safety
/// `array` is an unreleased array: its pointers are NULL or valid for their counts.
unsafe fn check_shape(array: &ArrowArray, data_type: &DataType) -> std::result::Result<(), String> {
    if array.release.is_none() {
        return Err("it is released".into());
    }
    if array.length < 0 || array.offset < 0 || array.null_count < -1 {
        return Err(format!(
            "it ({data_type}) has length {}, offset {} and null count {}",
            array.length, array.offset, array.null_count
        ));
    }
    let (expected, variadic) = buffer_count(data_type);
    let buffers_ok = if variadic {
        array.n_buffers > expected
    } else {
        array.n_buffers == expected
    };
    if !buffers_ok {
        return Err(format!(
            "it ({data_type}) has {} buffers where its type has {expected}{}",
            array.n_buffers,
            if variadic { " and more" } else { "" }
        ));
    }
    if array.n_buffers > 0 && array.buffers.is_null() {
        return Err(format!("it ({data_type}) has a NULL buffer list"));
    }
    let children = child_count(data_type);
    if array.n_children != children as i64 {
        return Err(format!(
            "it ({data_type}) has {} children where its type has {children}",
            array.n_children
        ));
    }
    if children > 0 && array.children.is_null() {
        return Err(format!("it ({data_type}) has a NULL child list"));
    }
    // Children of a struct, or of a sparse union, hold a row for each of their parent's.
    let rows = matches!(
        data_type,
        DataType::Struct(_) | DataType::Union(_, arrow_schema::UnionMode::Sparse)
    )
    .then(|| array.offset + array.length);
    for index in 0..children {
        let (name, child_type) = child_field(data_type, index);
        let in_child = |problem: String| format!("its child {name:?}: {problem}");
        // SAFETY: the child list holds `n_children` pointers (checked above).
        let Some(child) = (unsafe { (*array.children.add(index)).as_ref() }) else {
            return Err(in_child("it is NULL".into()));
        };
        unsafe { check_shape(child, child_type) }.map_err(in_child)?;
        if let Some(rows) = rows.filter(|&rows| child.length < rows) {
            return Err(in_child(format!(
                "it has {} rows where its parent needs {rows}",
                child.length
            )));
        }
    }
    match (data_type, unsafe { array.dictionary.as_ref() }) {
        (DataType::Dictionary(_, values), Some(dictionary)) => {
            unsafe { check_shape(dictionary, values) }
                .map_err(|problem| format!("its dictionary: {problem}"))
        }
        (DataType::Dictionary(..), None) => Err(format!("it ({data_type}) has no dictionary")),
        (_, Some(_)) => Err(format!(
            "it ({data_type}) has a dictionary but its type is not dictionary-encoded"
        )),
        (_, None) => Ok(()),
    }
}

/// The buffers the C Data Interface gives an array of `data_type`, and whether more may
/// follow (the variadic buffers of a view type, then their sizes).
fn buffer_count(data_type: &DataType) -> (i64, bool) {
    match data_type {
        DataType::Null | DataType::RunEndEncoded(..) => (0, false),
        DataType::Union(_, arrow_schema::UnionMode::Sparse) => (1, false),
        DataType::Union(_, arrow_schema::UnionMode::Dense) => (2, false),
        DataType::Dictionary(keys, _) => buffer_count(keys),
        DataType::Utf8View | DataType::BinaryView => (2, true),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Binary | DataType::LargeBinary => {
            (3, false)
        }
        DataType::ListView(_) | DataType::LargeListView(_) => (3, false),
        DataType::List(_) | DataType::LargeList(_) | DataType::Map(..) => (2, false),
        DataType::Struct(_) | DataType::FixedSizeList(..) => (1, false),
        _ => (2, false),
    }
}

fn child_count(data_type: &DataType) -> usize {
    match data_type {
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::ListView(_)
        | DataType::LargeListView(_)
        | DataType::FixedSizeList(..)
        | DataType::Map(..) => 1,
        DataType::Struct(fields) => fields.len(),
        DataType::Union(fields, _) => fields.len(),
        DataType::RunEndEncoded(..) => 2,
        _ => 0,
    }
}

/// The name and type of child `index` of `data_type` (below [`child_count`]).
fn child_field(data_type: &DataType, index: usize) -> (&str, &DataType) {
    let field = match data_type {
        DataType::List(field)
        | DataType::LargeList(field)
        | DataType::ListView(field)
        | DataType::LargeListView(field)
        | DataType::FixedSizeList(field, _)
        | DataType::Map(field, _) => field,
        DataType::Struct(fields) => &fields[index],
        DataType::Union(fields, _) => fields.iter().nth(index).expect("index below child_count").1,
        DataType::RunEndEncoded(run_ends, values) => [run_ends, values][index],
        other => unreachable!("{other} has no children"),
    };
    (field.name(), field.data_type())
}

/// The message a failed stream call left, or a placeholder when it left none.
unsafe fn last_error(raw: *mut ArrowArrayStream) -> String {
    let stream = unsafe { &*raw };
    let text = stream
        .get_last_error
        .map(|get| unsafe { get(raw) })
        .filter(|p| !p.is_null());
    match text {
        Some(ptr) => unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned(),
        None => "the upstream stream failed without a message".into(),
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
        self.schema.clone()
    }

    fn pull(&mut self) -> Option<std::result::Result<Pulled, ArrowError>> {
        let raw: *mut ArrowArrayStream = (&mut self.stream as *mut FFI_ArrowArrayStream).cast();
        let Some(get_next) = self.stream.get_next() else {
            return Some(Err(ArrowError::CDataInterface(
                "upstream has no get_next".into(),
            )));
        };
        let mut array = FFI_ArrowArray::empty();
        let code = unsafe { get_next(raw.cast(), &mut array) };
        if code != 0 {
            return Some(Err(errno_error(code, unsafe { last_error(raw) })));
        }
        if array.is_released() {
            return None;
        }
        Some(self.import(array))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int32Array, StringArray};
    use arrow_schema::Field;

    /// A struct array {a: int32, s: utf8} of 3 rows, exported by arrow-rs.
    fn exported() -> (FFI_ArrowArray, DataType) {
        let fields = vec![
            Field::new("a", DataType::Int32, true),
            Field::new("s", DataType::Utf8, true),
        ];
        let array = StructArray::new(
            fields.clone().into(),
            vec![
                Arc::new(Int32Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec!["x", "y", "z"])),
            ],
            None,
        );
        (
            FFI_ArrowArray::new(&array.into_data()),
            DataType::Struct(fields.into()),
        )
    }

    fn check(array: &FFI_ArrowArray, data_type: &DataType) -> std::result::Result<(), String> {
        let raw = unsafe { &*(array as *const FFI_ArrowArray).cast::<ArrowArray>() };
        unsafe { check_shape(raw, data_type) }
    }

    fn child(array: &mut FFI_ArrowArray, index: usize) -> &mut ArrowArray {
        let raw = unsafe { &mut *(array as *mut FFI_ArrowArray).cast::<ArrowArray>() };
        unsafe { &mut **raw.children.add(index) }
    }

    #[test]
    fn a_well_formed_batch_passes() {
        let (array, data_type) = exported();
        assert_eq!(check(&array, &data_type), Ok(()));
    }

    #[test]
    fn each_malformed_shape_is_named() {
        let (mut array, data_type) = exported();
        child(&mut array, 0).length = 2;
        let problem = check(&array, &data_type).unwrap_err();
        assert!(
            problem.contains("\"a\"") && problem.contains("2 rows"),
            "{problem}"
        );
        child(&mut array, 0).length = 3;

        child(&mut array, 1).n_buffers = 2;
        let problem = check(&array, &data_type).unwrap_err();
        assert!(
            problem.contains("\"s\"") && problem.contains("2 buffers"),
            "{problem}"
        );
        child(&mut array, 1).n_buffers = 3;

        let other = DataType::Struct(vec![Field::new("a", DataType::Int32, true)].into());
        let problem = check(&array, &other).unwrap_err();
        assert!(
            problem.contains("2 children") && problem.contains("has 1"),
            "{problem}"
        );

        child(&mut array, 0).offset = -1;
        let problem = check(&array, &data_type).unwrap_err();
        assert!(problem.contains("offset -1"), "{problem}");
        child(&mut array, 0).offset = 0;
        assert_eq!(check(&array, &data_type), Ok(()));
    }
}
