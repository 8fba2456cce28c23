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
use crate::array_export::{ExportRoot, FlatExport, OwnedArray};
use crate::schema_copy::SchemaCopy;
use batchcorder_core::storage::{Allocations, CachedBatch};
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

    /// The cache keeps the producer's columns (see [`OwnedArray`]): replays export copies
    /// of their structs. A batch of flat columns is imported into arrow-rs only when
    /// something needs a `RecordBatch` (see [`FlatExport::new`]), or copied when it is
    /// tiny; others are imported at once.
    fn import(&self, mut array: FFI_ArrowArray) -> std::result::Result<Pulled, ArrowError> {
        // SAFETY: the layouts are equal (abi.rs); an unreleased array is valid to read.
        let raw = unsafe { &*(&array as *const FFI_ArrowArray).cast::<ArrowArray>() };
        // arrow-rs trusts the tree's shape (and asserts on some of it): check it first.
        unsafe { check_shape(raw, &self.row_type) }
            .map_err(|problem| malformed(format!("the batch: {problem}")))?;
        if raw.length == 0 {
            return Ok(Pulled {
                batch: CachedBatch::new(empty_batch(array, &self.schema)?),
                allocations: None,
            });
        }
        // SAFETY: the shape was checked against the schema.
        let flat = unsafe { flat_buffers(raw, &self.schema) }
            .map_err(|problem| malformed(format!("the batch: {problem}")))?;
        let rows = raw.length as usize;
        let mut tiny_and_flat = false;
        if let Some(buffers) = flat {
            let allocations = Allocations::of_buffers(buffers);
            tiny_and_flat = tiny(&allocations);
            if !tiny_and_flat {
                match FlatExport::new(array, self.schema.clone()) {
                    Ok(root) => {
                        return Ok(Pulled {
                            batch: CachedBatch::deferred(rows, Box::new(root)),
                            allocations: Some(allocations),
                        })
                    }
                    Err(back) => array = back, // a root with a validity bitmap
                }
            }
        }
        let tree = Arc::new(OwnedArray::new(array));
        let data = import_rows(OwnedArray::shared_import_root(&tree), &self.schema)?;
        if let Some(columns) = tiny_and_flat.then(|| compact_copy(&data)).flatten() {
            // The producer's arrays go back at once: its bookkeeping for them would cost
            // more than the data (bench/notes.md). Reads export the copy with arrow-rs.
            let options = RecordBatchOptions::new().with_row_count(Some(data.len()));
            drop(data);
            drop(tree);
            let batch = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
            return Ok(Pulled {
                batch: CachedBatch::new(batch),
                allocations: None,
            });
        }
        let allocations = Allocations::of_data(&data);
        let batch = batch_of_rows(data, &self.schema)?;
        Ok(Pulled {
            batch: CachedBatch::with_derived(batch, Some(Box::new(ExportRoot::new(tree)))),
            allocations: Some(allocations),
        })
    }
}

/// The batch under `root`, a root over a kept tree whose columns have the fields of
/// `schema`, imported into arrow-rs and validated; its buffers stay the producer's.
pub(crate) fn import_batch(
    root: FFI_ArrowArray,
    schema: &SchemaRef,
) -> std::result::Result<RecordBatch, ArrowError> {
    batch_of_rows(import_rows(root, schema)?, schema)
}

fn import_rows(
    root: FFI_ArrowArray,
    schema: &SchemaRef,
) -> std::result::Result<arrow_data::ArrayData, ArrowError> {
    let row_type = DataType::Struct(schema.fields().clone());
    // SAFETY: a tree whose shape `check_shape` accepted for this type.
    let data = unsafe { from_ffi_and_data_type(root, row_type) }?;
    data.validate().map_err(|err| malformed(err.to_string()))?;
    Ok(data)
}

/// The batch of a zero-row `root`: no rows' data is kept, since an empty string
/// column's one offset may be any value (the C Data Interface allows it) and arrow-rs's
/// validation refuses that; but each column keeps the dictionaries its producer sent,
/// which a consumer of the replay sees (and an IPC writer compares with the next batch's).
fn empty_batch(
    root: FFI_ArrowArray,
    schema: &SchemaRef,
) -> std::result::Result<RecordBatch, ArrowError> {
    if !schema
        .fields()
        .iter()
        .any(|f| has_dictionary(f.data_type()))
    {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    let row_type = DataType::Struct(schema.fields().clone());
    // SAFETY: a tree whose shape `check_shape` accepted for this type; nothing of it is
    // read but its dictionaries, which are validated in full below.
    let data = unsafe { from_ffi_and_data_type(root, row_type) }?;
    batch_of_rows(empty_keeping_dictionaries(&data)?, schema)
}

/// An empty array of `data`'s type whose dictionaries, at every depth, are `data`'s.
fn empty_keeping_dictionaries(
    data: &arrow_data::ArrayData,
) -> std::result::Result<arrow_data::ArrayData, ArrowError> {
    let empty = arrow_data::ArrayData::new_empty(data.data_type());
    if !has_dictionary(data.data_type()) {
        return Ok(empty);
    }
    let children = match data.data_type() {
        DataType::Dictionary(..) => {
            let values = data.child_data()[0].clone();
            values
                .validate_full()
                .map_err(|err| malformed(format!("a dictionary of a zero-row batch: {err}")))?;
            vec![values]
        }
        _ => data
            .child_data()
            .iter()
            .map(empty_keeping_dictionaries)
            .collect::<std::result::Result<_, _>>()?,
    };
    empty.into_builder().child_data(children).build()
}

fn has_dictionary(data_type: &DataType) -> bool {
    match data_type {
        DataType::Dictionary(..) => true,
        DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::FixedSizeList(f, _)
        | DataType::Map(f, _) => has_dictionary(f.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_dictionary(f.data_type())),
        DataType::Union(fields, _) => fields.iter().any(|(_, f)| has_dictionary(f.data_type())),
        DataType::RunEndEncoded(_, values) => has_dictionary(values.data_type()),
        _ => false,
    }
}

fn batch_of_rows(
    data: arrow_data::ArrayData,
    schema: &SchemaRef,
) -> std::result::Result<RecordBatch, ArrowError> {
    let rows = StructArray::from(data);
    let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
    let (_, mut columns, _) = rows.into_parts();
    // `StructArray::from` collects the columns in place into the import's child list,
    // whose capacity is for `ArrayData`s: 544 bytes kept for one column, otherwise.
    columns.shrink_to_fit();
    RecordBatch::try_new_with_options(schema.clone(), columns, &options)
}

/// A batch whose buffers average at most this many bytes is copied at ingestion.
const COMPACT_AT_MOST_BYTES_PER_BUFFER: u64 = 64;

/// Whether a batch with `allocations` is tiny enough to copy (see [`compact_copy`]).
fn tiny(allocations: &Allocations) -> bool {
    let (bytes, buffers) = allocations.totals();
    bytes <= buffers as u64 * COMPACT_AT_MOST_BYTES_PER_BUFFER
}

/// (start, bytes) of every buffer of a batch whose columns are all of flat types (see
/// [`is_flat`]), each as long as arrow-rs's import makes it; `None` when a column is
/// not flat or the root has a validity bitmap. An empty validity bitmap is left out,
/// as arrow-rs drops it. Fails on offsets that arrow-rs's validation would refuse.
///
/// # Safety
/// `root` is an unreleased array that [`check_shape`] accepted for `schema`'s row type.
pub(crate) unsafe fn flat_buffers(
    root: &ArrowArray,
    schema: &SchemaRef,
) -> std::result::Result<Option<Vec<(usize, u64)>>, String> {
    let fields = schema.fields();
    if fields.is_empty() || !fields.iter().all(|f| is_flat(f.data_type())) {
        return Ok(None);
    }
    // SAFETY: a struct array has one buffer, its validity bitmap.
    if !unsafe { *root.buffers }.is_null() && root.null_count != 0 {
        return Ok(None);
    }
    // Sized for every buffer a column can have, so that the list is rarely shrunk.
    let most = (0..fields.len())
        .map(|index| {
            // SAFETY: `check_shape` found one valid child per field.
            let column = unsafe { &**root.children.add(index) };
            let values = column.n_buffers.max(1) as usize - 1;
            values + usize::from(column.null_count != 0)
        })
        .sum();
    let mut found = Vec::with_capacity(most);
    for (index, field) in fields.iter().enumerate() {
        // SAFETY: `check_shape` found one valid child per field.
        let column = unsafe { &**root.children.add(index) };
        unsafe { column_buffers(column, field.data_type(), &mut found) }
            .map_err(|problem| format!("its child {:?}: {problem}", field.name()))?;
    }
    Ok(Some(found))
}

/// A type whose arrays have no children and no dictionary, and buffers whose lengths
/// follow from the array's length and offsets.
fn is_flat(data_type: &DataType) -> bool {
    data_type.is_primitive()
        || matches!(
            data_type,
            DataType::Null
                | DataType::Boolean
                | DataType::Utf8
                | DataType::LargeUtf8
                | DataType::Binary
                | DataType::LargeBinary
                | DataType::FixedSizeBinary(_)
        )
}

/// Add the buffers of `column`, of a flat type, to `found`.
///
/// # Safety
/// `column` is an unreleased array that [`check_shape`] accepted for `data_type`.
unsafe fn column_buffers(
    column: &ArrowArray,
    data_type: &DataType,
    found: &mut Vec<(usize, u64)>,
) -> std::result::Result<(), String> {
    let slots = (column.offset + column.length) as u64;
    // SAFETY: `check_shape` found the buffer list to hold `n_buffers` pointers.
    let buffer = |index: usize| unsafe { *column.buffers.add(index) };
    let mut add = |pointer: *const std::ffi::c_void, bytes: u64| {
        if !pointer.is_null() && bytes > 0 {
            found.push((pointer as usize, bytes));
        }
    };
    if column.n_buffers == 0 {
        return Ok(()); // the null type
    }
    if column.null_count != 0 {
        add(buffer(0), slots.div_ceil(8));
    }
    let values = match data_type {
        DataType::Boolean => slots.div_ceil(8),
        DataType::FixedSizeBinary(width) => slots * *width as u64,
        DataType::Utf8 | DataType::Binary => {
            return unsafe { variable_buffers::<i32>(column, &mut add) };
        }
        DataType::LargeUtf8 | DataType::LargeBinary => {
            return unsafe { variable_buffers::<i64>(column, &mut add) };
        }
        other => slots * other.primitive_width().unwrap_or(0) as u64,
    };
    add(buffer(1), values);
    Ok(())
}

/// Add the offsets and values buffers of a string or binary `column` with offsets of
/// type `O`; fails when its offsets in use are negative or decreasing.
///
/// # Safety
/// As for [`column_buffers`].
unsafe fn variable_buffers<O: Copy + Into<i64>>(
    column: &ArrowArray,
    add: &mut impl FnMut(*const std::ffi::c_void, u64),
) -> std::result::Result<(), String> {
    let slots = (column.offset + column.length) as usize;
    // SAFETY: three buffers, checked by `check_shape`.
    let (offsets, values) = unsafe { (*column.buffers.add(1), *column.buffers.add(2)) };
    let width = size_of::<O>();
    add(offsets, ((slots + 1) * width) as u64);
    if column.length == 0 && column.offset == 0 {
        return Ok(()); // no values, whatever its one offset says
    }
    if offsets.is_null() {
        return Err("it has rows but no offsets buffer".into());
    }
    let offsets = offsets.cast::<O>();
    // SAFETY: an offsets buffer holds `offset + length + 1` offsets.
    let (first, last): (i64, i64) = unsafe {
        (
            (*offsets.add(column.offset as usize)).into(),
            (*offsets.add(slots)).into(),
        )
    };
    if first < 0 || last < first {
        return Err(format!(
            "its offsets run from {first} to {last}, where they must not be negative or decrease"
        ));
    }
    add(values, last as u64);
    Ok(())
}

/// Copies of the columns of `rows`, the struct array of a tiny batch of flat columns
/// (see [`tiny`]), when neither it nor its columns are sliced; `None` otherwise, and the
/// producer's arrays are kept.
fn compact_copy(rows: &arrow_data::ArrayData) -> Option<Vec<arrow_array::ArrayRef>> {
    let whole = |data: &arrow_data::ArrayData| data.len() == rows.len() && data.offset() == 0;
    if rows.offset() != 0 || !rows.child_data().iter().all(whole) {
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
    use arrow_array::{ArrayRef, Int32Array, StringArray};
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

    /// The buffers `flat_buffers` lists for `batch` exported by arrow-rs, those a
    /// `FlatExport` of that export finds again, and those of arrow-rs's import of it.
    fn listed_three_ways(batch: &RecordBatch) -> [Allocations; 3] {
        use batchcorder_core::storage::Derived;
        let exported = FFI_ArrowArray::new(&StructArray::from(batch.clone()).into_data());
        let raw = unsafe { &*(&exported as *const FFI_ArrowArray).cast::<ArrowArray>() };
        let schema = batch.schema();
        let row_type = DataType::Struct(schema.fields().clone());
        unsafe { check_shape(raw, &row_type) }.unwrap();
        let listed = unsafe { flat_buffers(raw, &schema) }.unwrap().unwrap();
        let flat = FlatExport::new(exported, schema).unwrap_or_else(|_| panic!("not flat"));
        let imported = flat.to_batch().unwrap().unwrap();
        [
            Allocations::of_buffers(listed),
            flat.allocations().unwrap(),
            Allocations::of_batch(&imported),
        ]
    }

    #[test]
    fn flat_columns_list_the_buffers_arrow_rs_would_import() {
        use arrow_array::{BooleanArray, FixedSizeBinaryArray, Float64Array, LargeBinaryArray};
        let batch = RecordBatch::try_from_iter([
            (
                "i",
                Arc::new(Int32Array::from(vec![Some(1), None, Some(3), Some(4)])) as _,
            ),
            (
                "f",
                Arc::new(Float64Array::from(vec![1.0, 2.0, 3.0, 4.0])) as _,
            ),
            (
                "s",
                Arc::new(StringArray::from(vec![
                    Some("ab"),
                    None,
                    Some(""),
                    Some("cde"),
                ])) as _,
            ),
            (
                "b",
                Arc::new(BooleanArray::from(vec![true, false, true, true])) as _,
            ),
            (
                "x",
                Arc::new(
                    FixedSizeBinaryArray::try_from_iter([b"ab", b"cd", b"ef", b"gh"].into_iter())
                        .unwrap(),
                ) as _,
            ),
            (
                "l",
                Arc::new(LargeBinaryArray::from(vec![&b"z"[..], b"", b"yy", b"x"])) as _,
            ),
            ("n", Arc::new(arrow_array::NullArray::new(4)) as _),
        ])
        .unwrap();
        for slice in [batch.clone(), batch.slice(1, 2), batch.slice(3, 1)] {
            let [listed, kept, imported] = listed_three_ways(&slice);
            assert_eq!(listed, kept, "rows {}", slice.num_rows());
            assert_eq!(listed, imported, "rows {}", slice.num_rows());
        }
        let nested = RecordBatch::try_from_iter([(
            "list",
            Arc::new(arrow_array::ListArray::from_iter_primitive::<
                arrow_array::types::Int32Type,
                _,
                _,
            >([Some(vec![Some(1)])])) as _,
        )])
        .unwrap();
        let exported = FFI_ArrowArray::new(&StructArray::from(nested.clone()).into_data());
        let raw = unsafe { &*(&exported as *const FFI_ArrowArray).cast::<ArrowArray>() };
        assert_eq!(unsafe { flat_buffers(raw, &nested.schema()) }, Ok(None));
    }

    /// What a C stream upstream over `batches` hands over, batch by batch.
    fn pull_all(batches: Vec<RecordBatch>) -> Vec<Pulled> {
        let schema = batches[0].schema();
        let reader =
            arrow_array::RecordBatchIterator::new(batches.into_iter().map(Ok), schema.clone());
        let mut stream = FFI_ArrowArrayStream::new(Box::new(reader));
        let raw = (&mut stream as *mut FFI_ArrowArrayStream).cast::<ArrowArrayStream>();
        let mut upstream = unsafe { CStreamUpstream::take(raw, schema) };
        std::iter::from_fn(|| upstream.pull().map(Result::unwrap)).collect()
    }

    #[test]
    fn a_batch_of_flat_columns_is_imported_on_first_use_and_others_at_once() {
        let rows: Vec<i64> = (0..100).collect();
        let flat = RecordBatch::try_from_iter([(
            "i",
            Arc::new(arrow_array::Int64Array::from(rows.clone())) as _,
        )])
        .unwrap();
        let [pulled] = &pull_all(vec![flat.clone()])[..] else {
            panic!()
        };
        assert!(pulled.batch.batch_if_made().is_none());
        assert_eq!(pulled.batch.num_rows(), 100);
        assert_eq!(pulled.batch.batch().unwrap(), &flat);

        let nested = RecordBatch::try_from_iter([(
            "list",
            Arc::new(arrow_array::ListArray::from_iter_primitive::<
                arrow_array::types::Int64Type,
                _,
                _,
            >(rows.iter().map(|&v| Some(vec![Some(v)])))) as _,
        )])
        .unwrap();
        let [pulled] = &pull_all(vec![nested.clone()])[..] else {
            panic!()
        };
        assert_eq!(pulled.batch.batch_if_made(), Some(&nested));
    }

    /// A batch of one string column, "s": ab, cd, ef.
    fn three_strings() -> RecordBatch {
        let column = StringArray::from(vec!["ab", "cd", "ef"]);
        RecordBatch::try_from_iter([("s", Arc::new(column) as _)]).unwrap()
    }

    #[test]
    fn an_empty_slice_whose_one_offset_is_not_zero_is_an_empty_batch() {
        let batch = three_strings();
        // arrow-rs exports this slice with offset 0 and its one offset 4.
        let pulled = pull_all(vec![batch.slice(2, 0), batch.slice(3, 0)]);
        assert_eq!(pulled.len(), 2);
        for one in &pulled {
            assert_eq!(
                one.batch.batch().unwrap(),
                &RecordBatch::new_empty(batch.schema())
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
        let pulled = pull_all(vec![batch.slice(1, 0), batch.clone(), batch.slice(2, 0)]);
        let values = |batch: &RecordBatch, column: usize| {
            let data = batch.column(column).to_data();
            let dictionary = match column {
                0 => data,
                _ => data.child_data()[0].clone(),
            };
            arrow_array::make_array(dictionary.child_data()[0].clone())
        };
        for one in [&pulled[0], &pulled[2]] {
            let got = one.batch.batch().unwrap();
            assert_eq!(got.num_rows(), 0);
            for column in 0..2 {
                assert_eq!(
                    &values(got, column),
                    &values(&batch, column),
                    "column {column}"
                );
            }
        }
    }

    #[test]
    fn decreasing_string_offsets_are_refused_before_anything_reads_them() {
        let batch = three_strings();
        let mut exported = FFI_ArrowArray::new(&StructArray::from(batch.clone()).into_data());
        let raw = unsafe { &mut *(&mut exported as *mut FFI_ArrowArray).cast::<ArrowArray>() };
        let column = unsafe { &mut **raw.children };
        let offsets = unsafe { *column.buffers.add(1) }.cast::<i32>().cast_mut();
        unsafe { *offsets.add(3) = -1 };
        let problem = unsafe { flat_buffers(raw, &batch.schema()) }.unwrap_err();
        assert!(
            problem.contains("\"s\"") && problem.contains("from 0 to -1"),
            "{problem}"
        );
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
