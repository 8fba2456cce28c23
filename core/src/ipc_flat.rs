//! Flat columns decoded straight from an IPC record batch message that
//! `disk::check_message` has parsed and verified: [`FlatBuffers`], the addresses of the
//! columns' buffers in the message, sizes and alignment checked, without arrow-ipc's
//! second verification of the flatbuffer, its `ArrayData` builders and `align_buffers`.
//! The C layer exports them as they are, without arrays in between; typed arrays are
//! built from them only when something needs a `RecordBatch` ([`FlatBuffers::to_batch`]).
//! Any other column, a compressed body or a misaligned buffer goes to arrow-ipc's decoder
//! instead.
//!
//! Sizes are checked here, so that building never panics; what the values say (offsets,
//! UTF-8, null counts) is checked by [`FlatBuffers::validate`] on a persisted batch's
//! first read, as arrow-ipc's unchecked decode is by `crate::validate`.

use std::ffi::c_void;
use std::sync::Arc;

use arrow_array::types::{BinaryType, ByteArrayType, LargeBinaryType, LargeUtf8Type, Utf8Type};
use arrow_array::{
    downcast_primitive, ArrayRef, ArrowPrimitiveType, BooleanArray, FixedSizeBinaryArray,
    GenericByteArray, PrimitiveArray, RecordBatch,
};
use arrow_buffer::{
    ArrowNativeType, BooleanBuffer, Buffer, MutableBuffer, NullBuffer, OffsetBuffer, ScalarBuffer,
};
use arrow_schema::{ArrowError, DataType, SchemaRef};

use crate::storage::{Allocations, Derived};
use crate::validate::{check_null_count, check_offset_values, Utf8};

/// Whether every column of `schema` is of a type decoded here.
pub(crate) fn is_flat(schema: &SchemaRef) -> bool {
    schema.fields().iter().all(|field| match field.data_type() {
        DataType::Boolean
        | DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::FixedSizeBinary(_) => true,
        other => other.is_primitive(),
    })
}

/// A batch of flat columns as the buffers of the IPC message it was decoded from, which
/// it keeps. Made only by the disk tier, after the checks of a first read (or for bytes
/// that passed them), so what the buffers hold is valid for their types.
pub struct FlatBuffers {
    schema: SchemaRef,
    rows: usize,
    /// Every buffer below lies in it.
    message: Buffer,
    columns: Vec<FlatColumn>,
}

/// One column's buffers as the C Data Interface lists them: its validity bitmap (NULL
/// when it has no nulls), then its own (values; or offsets, then values), all starting
/// at offset 0.
pub struct FlatColumn {
    null_count: usize,
    n_buffers: usize,
    addresses: [*const c_void; 3],
    /// Bytes of each buffer the column uses.
    lengths: [usize; 3],
}

// SAFETY: the addresses are of the immutable message the batch holds.
unsafe impl Send for FlatBuffers {}
// SAFETY: as above.
unsafe impl Sync for FlatBuffers {}

/// The offsets of an empty string column whose message has none: the C Data Interface
/// asks for one.
static NO_OFFSETS: u64 = 0;

fn no_offsets() -> *const c_void {
    std::ptr::from_ref(&NO_OFFSETS).cast()
}

impl FlatBuffers {
    /// Rows in the batch.
    #[inline]
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The columns, in the schema's order.
    #[inline]
    pub fn columns(&self) -> &[FlatColumn] {
        &self.columns
    }

    /// The columns as typed arrays over the message's bytes.
    pub fn to_batch(&self) -> Result<RecordBatch, ArrowError> {
        let columns = self
            .schema
            .fields()
            .iter()
            .zip(&self.columns)
            .map(|(field, column)| self.array(field.data_type(), column))
            .collect::<Result<Vec<_>, _>>()?;
        // SAFETY: what `RecordBatch::try_new` checks holds: a column per field, each
        // built with its field's type, `rows` long, with nulls only where allowed
        // (`decode`).
        Ok(unsafe { RecordBatch::new_unchecked(self.schema.clone(), columns, self.rows) })
    }

    /// Buffer `index` of `column` (0: the validity bitmap).
    fn buffer(&self, column: &FlatColumn, index: usize) -> Buffer {
        let (address, len) = (column.addresses[index], column.lengths[index]);
        if std::ptr::eq(address, no_offsets()) {
            return Buffer::from(MutableBuffer::new(0));
        }
        // Inside the message (`decode`).
        let start = address.addr() - self.message.as_ptr().addr();
        self.message.slice_with_length(start, len)
    }

    fn array(&self, data_type: &DataType, column: &FlatColumn) -> Result<ArrayRef, ArrowError> {
        let len = self.rows;
        let nulls = (column.null_count > 0).then(|| {
            let bits = BooleanBuffer::new(self.buffer(column, 0), 0, len);
            // SAFETY: the null count matches the bitmap (`validate`).
            unsafe { NullBuffer::new_unchecked(bits, column.null_count) }
        });
        let values = |index| self.buffer(column, index);
        macro_rules! primitive {
            ($t:ty) => {
                primitive::<$t>(data_type, len, nulls, values(1))
            };
        }
        Ok(downcast_primitive! {
            data_type => (primitive),
            DataType::Boolean => Arc::new(BooleanArray::new(BooleanBuffer::new(values(1), 0, len), nulls)),
            DataType::FixedSizeBinary(width) => Arc::new(FixedSizeBinaryArray::try_new_with_len(
                *width, values(1), nulls, len,
            )?),
            DataType::Utf8 => bytes::<Utf8Type>(len, nulls, values(1), values(2)),
            DataType::LargeUtf8 => bytes::<LargeUtf8Type>(len, nulls, values(1), values(2)),
            DataType::Binary => bytes::<BinaryType>(len, nulls, values(1), values(2)),
            DataType::LargeBinary => bytes::<LargeBinaryType>(len, nulls, values(1), values(2)),
            other => return Err(ArrowError::InvalidArgumentError(format!("{other} is not flat"))),
        })
    }

    /// What arrow's full validation checks that `decode` did not: each column's null
    /// count, and a string or binary column's offsets and UTF-8 (as `utf8` says).
    pub(crate) fn validate(&self, utf8: Utf8) -> Result<(), ArrowError> {
        for (field, column) in self.schema.fields().iter().zip(&self.columns) {
            let data_type = field.data_type();
            let text = utf8 == Utf8::Check;
            match data_type {
                DataType::Utf8 => self.offsets::<i32>(data_type, column, text)?,
                DataType::LargeUtf8 => self.offsets::<i64>(data_type, column, text)?,
                DataType::Binary => self.offsets::<i32>(data_type, column, false)?,
                DataType::LargeBinary => self.offsets::<i64>(data_type, column, false)?,
                _ => {}
            }
            if column.null_count > 0 {
                check_null_count(self.bytes(column, 0), 0, self.rows, column.null_count)?;
            }
        }
        Ok(())
    }

    /// The bytes of buffer `index` of `column`.
    fn bytes(&self, column: &FlatColumn, index: usize) -> &[u8] {
        // SAFETY: `decode` found the buffer inside the message, which `self` keeps (or
        // it is `NO_OFFSETS`, as long as its length).
        unsafe { std::slice::from_raw_parts(column.addresses[index].cast(), column.lengths[index]) }
    }

    fn offsets<T: ArrowNativeType>(
        &self,
        data_type: &DataType,
        column: &FlatColumn,
        utf8: bool,
    ) -> Result<(), ArrowError> {
        let offsets = self.bytes(column, 1);
        // SAFETY: `decode` checked that they are aligned for `T`, and as many as rows + 1
        // (or none, for no rows).
        let offsets = unsafe {
            std::slice::from_raw_parts(offsets.as_ptr().cast::<T>(), offsets.len() / size_of::<T>())
        };
        let values = self.bytes(column, 2);
        check_offset_values(data_type, offsets, values, values.len(), utf8)
    }
}

impl FlatColumn {
    /// Nulls in the column.
    #[inline]
    pub fn null_count(&self) -> usize {
        self.null_count
    }

    /// The addresses of its buffers, as a C array's `buffers` lists them; they live as
    /// long as the batch.
    #[inline]
    pub fn buffers(&self) -> &[*const c_void] {
        &self.addresses[..self.n_buffers]
    }
}

/// What [`decode`] learnt of one message: its rows, and each column's null count and
/// where its buffers lie in the message, so that a later read of the same bytes makes its
/// [`FlatBuffers`] without parsing the message again. Numbers packed in `u16`s, or each in
/// two (low first) when one takes more than 16 bits: first `rows << 1 | wide`, then per
/// column `null_count << 2 | buffers` and each buffer's start in the message and its
/// length (none for the bitmap of a column without nulls). 40 bytes for the five columns
/// of `bench/small_batches.py`; empty when none is kept.
#[derive(Debug)]
pub(crate) struct Layout(Box<[u16]>);

/// A layout holds at most this many numbers (a batch of 40 to 80 flat columns): wider
/// batches are parsed on every read, so that a save's layouts stay a small part of it.
const LAYOUT_NUMBERS: usize = 256;

impl Layout {
    /// The layout of `flat`: none kept (empty) if it is too wide for [`LAYOUT_NUMBERS`]
    /// or its numbers take more than 32 bits.
    pub(crate) fn of(flat: &FlatBuffers) -> Self {
        let (mut numbers, mut nulls) = (1, 0);
        for column in &flat.columns {
            numbers += 1 + 2 * stored(column);
            nulls = nulls.max(column.null_count);
        }
        // Every buffer lies in the message (`decode`), so its start and length are below
        // the message's length; then the heads, `rows << 1 | wide` and each column's
        // (`rows` may exceed the message's bytes: a fixed-size binary of width 0).
        let heads = nulls.checked_mul(4).zip(flat.rows.checked_mul(2));
        let largest =
            heads.map(|(column, first)| (column | 3).max(first | 1).max(flat.message.len()));
        match largest {
            _ if numbers > LAYOUT_NUMBERS => Self(Box::default()),
            Some(largest) if largest < u16::MAX as usize => Self(pack::<false>(flat, numbers)),
            Some(largest) if largest < u32::MAX as usize => Self(pack::<true>(flat, numbers)),
            _ => Self(Box::default()),
        }
    }

    /// The batch of `schema` that `message` holds, whose layout this is; `None` if none
    /// was kept.
    pub(crate) fn flat(&self, schema: &SchemaRef, message: &Buffer) -> Option<FlatBuffers> {
        let numbers = &self.0;
        Some(match numbers.first()? & 1 {
            0 => unpack(
                numbers.iter().map(|&n| n.into()),
                u16::MAX.into(),
                schema,
                message,
            ),
            _ => {
                let join = |pair: &[u16]| usize::from(pair[0]) | usize::from(pair[1]) << 16;
                let pairs = numbers.chunks_exact(2).map(join);
                unpack(pairs, u32::MAX as usize, schema, message)
            }
        })
    }
}

/// Buffers of `column` that a layout lists: its bitmap only if it has nulls.
fn stored(column: &FlatColumn) -> usize {
    column.n_buffers - usize::from(column.null_count == 0)
}

/// The layout of `flat`: `numbers` numbers, each below `u16::MAX` (`u32::MAX` if `WIDE`),
/// which stands for [`NO_OFFSETS`].
fn pack<const WIDE: bool>(flat: &FlatBuffers, numbers: usize) -> Box<[u16]> {
    let no_offsets_at = if WIDE {
        u32::MAX as usize
    } else {
        u16::MAX.into()
    };
    let base = flat.message.as_ptr().addr();
    // Written by index into room made once: `Vec::push` checked its room for each.
    let mut packed = vec![0; numbers << usize::from(WIDE)].into_boxed_slice();
    let mut at = 0;
    let mut put = |n: usize| {
        packed[at] = n as u16;
        if WIDE {
            packed[at + 1] = (n >> 16) as u16;
        }
        at += 1 + usize::from(WIDE);
    };
    put(flat.rows << 1 | usize::from(WIDE));
    for column in &flat.columns {
        put(column.null_count << 2 | column.n_buffers);
        for index in column.n_buffers - stored(column)..column.n_buffers {
            let address = column.addresses[index];
            put(match std::ptr::eq(address, no_offsets()) {
                true => no_offsets_at,
                false => address.addr() - base,
            });
            put(column.lengths[index]);
        }
    }
    packed
}

/// The batch of `schema` in `message` whose layout lists `numbers`.
fn unpack(
    mut numbers: impl Iterator<Item = usize>,
    no_offsets_at: usize,
    schema: &SchemaRef,
    message: &Buffer,
) -> FlatBuffers {
    // `message` is the very bytes this layout was learnt from, which `decode` checked
    // (the same entry of an immutable file): every buffer lies inside it.
    let mut next = || numbers.next().unwrap_or(no_offsets_at);
    let rows = next() >> 1;
    let mut columns = Vec::with_capacity(schema.fields().len());
    for _ in schema.fields().iter() {
        let head = next();
        let (null_count, n_buffers) = (head >> 2, head & 3);
        let mut column = FlatColumn {
            null_count,
            n_buffers,
            addresses: [std::ptr::null(); 3],
            lengths: [0; 3],
        };
        for index in usize::from(null_count == 0)..n_buffers {
            let start = next();
            column.addresses[index] = match start == no_offsets_at {
                true => no_offsets(),
                false => message.as_ptr().wrapping_add(start).cast(),
            };
            column.lengths[index] = next();
        }
        columns.push(column);
    }
    FlatBuffers {
        schema: schema.clone(),
        rows,
        message: message.clone(),
        columns,
    }
}

impl Derived for FlatBuffers {
    fn to_batch(&self) -> Option<Result<RecordBatch, ArrowError>> {
        Some(FlatBuffers::to_batch(self))
    }

    fn allocations(&self) -> Option<Allocations> {
        let found = (self.message.capacity() > 0).then(|| {
            (
                self.message.data_ptr().as_ptr().addr(),
                self.message.capacity() as u64,
            )
        });
        Some(Allocations::of_buffers(found.into_iter().collect()))
    }
}

/// The batch of `schema` in `header`, whose body is `message` from byte `body_start`;
/// `Ok(None)` when arrow-ipc must decode it (compressed, a misaligned buffer, a type
/// not decoded here). What the buffers hold is unchecked: the caller validates them
/// ([`FlatBuffers::validate`]) before any value is read, unless these bytes passed that
/// validation before.
pub(crate) fn decode(
    schema: &SchemaRef,
    header: arrow_ipc::RecordBatch<'_>,
    message: &Buffer,
    body_start: usize,
) -> Result<Option<FlatBuffers>, String> {
    if header.compression().is_some() {
        return Ok(None);
    }
    let rows = usize::try_from(header.length()).map_err(|_| "a negative row count")?;
    let mut parts = Parts {
        nodes: header.nodes().into_iter().flatten(),
        buffers: header.buffers().into_iter().flatten(),
        body: message.as_ptr().wrapping_add(body_start),
    };
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let Some(column) = column(field.data_type(), rows, &mut parts)? else {
            return Ok(None);
        };
        if !field.is_nullable() && column.null_count > 0 {
            return Err(format!(
                "its non-nullable column {} holds nulls",
                field.name()
            ));
        }
        columns.push(column);
    }
    Ok(Some(FlatBuffers {
        schema: schema.clone(),
        rows,
        message: message.clone(),
        columns,
    }))
}

/// The header's nodes and buffers, taken in turn.
struct Parts<N, B> {
    nodes: N,
    buffers: B,
    body: *const u8,
}

/// Where a buffer lies, and its bytes.
type Span = (*const c_void, usize);

impl<'a, N, B> Parts<N, B>
where
    N: Iterator<Item = &'a arrow_ipc::FieldNode>,
    B: Iterator<Item = &'a arrow_ipc::Buffer>,
{
    /// The next node's null count, if its length is `rows`.
    fn node(&mut self, rows: usize) -> Result<usize, String> {
        let node = self
            .nodes
            .next()
            .ok_or("it has fewer field nodes than the schema has columns")?;
        if node.length() != rows as i64 {
            return Err(format!(
                "a column of {} rows in a batch of {rows}",
                node.length()
            ));
        }
        // `check_message` refused negative ones.
        usize::try_from(node.null_count()).map_err(|_| "a negative null count".to_string())
    }

    /// The next buffer (`check_message` found it inside the body).
    fn buffer(&mut self) -> Result<Span, String> {
        let buffer = self
            .buffers
            .next()
            .ok_or_else(|| "it has fewer buffers than its columns need".to_string())?;
        let (offset, len) = (buffer.offset() as usize, buffer.length() as usize);
        Ok((self.body.wrapping_add(offset).cast(), len))
    }

    /// The next buffer as a null bitmap for `len` values with `null_count` nulls; none
    /// when there are no nulls, as arrow-ipc reads it.
    fn nulls(&mut self, len: usize, null_count: usize) -> Result<Span, String> {
        let bitmap = self.buffer()?;
        if null_count == 0 {
            return Ok((std::ptr::null(), 0));
        }
        bits(bitmap, len, "null bitmap")
    }
}

/// One column of type `data_type` and `len` rows; `Ok(None)` for arrow-ipc to decode.
fn column<'a, N, B>(
    data_type: &DataType,
    len: usize,
    parts: &mut Parts<N, B>,
) -> Result<Option<FlatColumn>, String>
where
    N: Iterator<Item = &'a arrow_ipc::FieldNode>,
    B: Iterator<Item = &'a arrow_ipc::Buffer>,
{
    let null_count = parts.node(len)?;
    let nulls = parts.nulls(len, null_count)?;
    let leaf = |spans: &[Span]| {
        let mut column = FlatColumn {
            null_count,
            n_buffers: 1 + spans.len(),
            addresses: [nulls.0, std::ptr::null(), std::ptr::null()],
            lengths: [nulls.1, 0, 0],
        };
        for (i, &(address, len)) in spans.iter().enumerate() {
            (column.addresses[i + 1], column.lengths[i + 1]) = (address, len);
        }
        Some(column)
    };
    macro_rules! primitive {
        ($t:ty) => {
            scalars::<<$t as ArrowPrimitiveType>::Native>(parts.buffer()?, len, "values")?
                .and_then(|values| leaf(&[values]))
        };
    }
    Ok(downcast_primitive! {
        data_type => (primitive),
        DataType::Boolean => leaf(&[bits(parts.buffer()?, len, "boolean values")?]),
        DataType::FixedSizeBinary(width) => {
            let values = parts.buffer()?;
            let needed = usize::try_from(*width).ok().and_then(|w| w.checked_mul(len));
            let Some(needed) = needed.filter(|&needed| needed <= values.1) else {
                return Err(too_short("fixed-size binary values", values.1, len));
            };
            leaf(&[(values.0, needed)])
        }
        DataType::Utf8 => bytes_spans::<Utf8Type, _, _>(len, parts)?.and_then(|s| leaf(&s)),
        DataType::LargeUtf8 => bytes_spans::<LargeUtf8Type, _, _>(len, parts)?.and_then(|s| leaf(&s)),
        DataType::Binary => bytes_spans::<BinaryType, _, _>(len, parts)?.and_then(|s| leaf(&s)),
        DataType::LargeBinary => bytes_spans::<LargeBinaryType, _, _>(len, parts)?.and_then(|s| leaf(&s)),
        _ => None,
    })
}

fn too_short(what: &str, bytes: usize, len: usize) -> String {
    format!("its {what} buffer of {bytes} bytes is too short for {len} values")
}

/// `len` bits at the start of `span`.
fn bits(span: Span, len: usize, what: &str) -> Result<Span, String> {
    if span.1 < len.div_ceil(8) {
        return Err(too_short(what, span.1, len));
    }
    Ok((span.0, len.div_ceil(8)))
}

/// `len` values of `T` at the start of `span`, if it is aligned for them.
fn scalars<T>(span: Span, len: usize, what: &str) -> Result<Option<Span>, String> {
    let needed = len.checked_mul(size_of::<T>());
    let Some(needed) = needed.filter(|&needed| needed <= span.1) else {
        return Err(too_short(what, span.1, len));
    };
    if span.0.align_offset(align_of::<T>()) != 0 {
        return Ok(None); // arrow-ipc copies it into an aligned buffer
    }
    Ok(Some((span.0, needed)))
}

/// A string or binary column's offsets and values.
fn bytes_spans<'a, T: ByteArrayType, N, B>(
    len: usize,
    parts: &mut Parts<N, B>,
) -> Result<Option<[Span; 2]>, String>
where
    N: Iterator<Item = &'a arrow_ipc::FieldNode>,
    B: Iterator<Item = &'a arrow_ipc::Buffer>,
{
    let (offsets, values) = (parts.buffer()?, parts.buffer()?);
    let offsets = match len {
        // An empty array may come with no offsets at all.
        0 if offsets.1 == 0 => (no_offsets(), 0),
        // As arrow's validation refuses it (`Buffer::typed_data`).
        _ if offsets.1 % size_of::<T::Offset>() != 0 => {
            return Err(format!(
                "its offsets buffer of {} bytes is not a whole number of offsets",
                offsets.1
            ))
        }
        _ => match scalars::<T::Offset>(offsets, len + 1, "offsets")? {
            Some(offsets) => offsets,
            None => return Ok(None),
        },
    };
    Ok(Some([offsets, values]))
}

fn primitive<T: ArrowPrimitiveType>(
    data_type: &DataType,
    len: usize,
    nulls: Option<NullBuffer>,
    values: Buffer,
) -> ArrayRef {
    let array = PrimitiveArray::<T>::new(ScalarBuffer::new(values, 0, len), nulls);
    // Only a timezone, a precision or a scale differs from the type's own.
    match *data_type == T::DATA_TYPE {
        true => Arc::new(array),
        false => Arc::new(array.with_data_type(data_type.clone())),
    }
}

fn bytes<T: ByteArrayType>(
    len: usize,
    nulls: Option<NullBuffer>,
    offsets: Buffer,
    values: Buffer,
) -> ArrayRef {
    let offsets = match offsets.is_empty() {
        true => OffsetBuffer::new_empty(),
        // SAFETY: the offsets are checked against the values (and the values for UTF-8)
        // before any value is read (`FlatBuffers::validate`), or these bytes passed that
        // check before.
        false => unsafe { OffsetBuffer::new_unchecked(ScalarBuffer::new(offsets, 0, len + 1)) },
    };
    // SAFETY: as for the offsets.
    Arc::new(unsafe { GenericByteArray::<T>::new_unchecked(offsets, values, nulls) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::types::{IntervalDayTime, IntervalMonthDayNano};
    use arrow_array::*;
    use arrow_buffer::i256;
    use arrow_ipc::reader::FileDecoder;
    use arrow_ipc::writer::{
        write_message, DictionaryTracker, IpcDataGenerator, IpcWriteContext, IpcWriteOptions,
    };
    use arrow_ipc::{Block, MetadataVersion};
    use arrow_schema::{Field, Schema, TimeUnit};

    use crate::disk::{catch_quietly, check_message};

    /// A batch of every flat type, `rows` rows, a null in every third row of the
    /// nullable columns.
    fn every_flat_type(rows: usize) -> RecordBatch {
        let n = |i: usize| (i % 3 != 1).then_some(i);
        let ints = || Int64Array::from_iter((0..rows).map(|i| n(i).map(|i| i as i64 * 7 - 9)));
        let cast = |to: DataType| {
            arrow_cast::cast(&ints(), &to)
                .or_else(|_| arrow_cast::cast(&arrow_cast::cast(&ints(), &DataType::Int32)?, &to))
                .unwrap()
        };
        let text: Vec<Option<String>> = (0..rows)
            .map(|i| n(i).map(|i| "añb€".repeat(i % 4) + &i.to_string()))
            .collect();
        let bytes: Vec<Option<Vec<u8>>> = text
            .iter()
            .map(|t| t.as_ref().map(|t| t.as_bytes().to_vec()))
            .collect();
        let bytes_ref = || bytes.iter().map(|b| b.as_deref());
        let columns: Vec<(&str, ArrayRef, bool)> = vec![
            ("i8", cast(DataType::Int8), true),
            ("u16", cast(DataType::UInt16), true),
            (
                "i32",
                Arc::new(Int32Array::from_iter_values(0..rows as i32)),
                false,
            ),
            ("i64", Arc::new(ints()), true),
            ("u64", cast(DataType::UInt64), true),
            ("f32", cast(DataType::Float32), true),
            ("f64", cast(DataType::Float64), true),
            ("date32", cast(DataType::Date32), true),
            ("date64", cast(DataType::Date64), true),
            (
                "time32",
                cast(DataType::Time32(TimeUnit::Millisecond)),
                true,
            ),
            ("time64", cast(DataType::Time64(TimeUnit::Nanosecond)), true),
            (
                "timestamp",
                cast(DataType::Timestamp(
                    TimeUnit::Microsecond,
                    Some("UTC".into()),
                )),
                true,
            ),
            ("duration", cast(DataType::Duration(TimeUnit::Second)), true),
            ("decimal128", cast(DataType::Decimal128(10, 2)), true),
            (
                "decimal256",
                Arc::new(
                    Decimal256Array::from_iter(
                        (0..rows).map(|i| n(i).map(|i| i256::from(i as i64 - 3))),
                    )
                    .with_precision_and_scale(40, 3)
                    .unwrap(),
                ),
                true,
            ),
            (
                "year_month",
                Arc::new(IntervalYearMonthArray::from_iter(
                    (0..rows).map(|i| n(i).map(|i| i as i32)),
                )),
                true,
            ),
            (
                "day_time",
                Arc::new(IntervalDayTimeArray::from_iter(
                    (0..rows).map(|i| n(i).map(|i| IntervalDayTime::new(i as i32, 5))),
                )),
                true,
            ),
            (
                "month_day_nano",
                Arc::new(IntervalMonthDayNanoArray::from_iter((0..rows).map(|i| {
                    n(i).map(|i| IntervalMonthDayNano::new(1, i as i32, -(i as i64)))
                }))),
                true,
            ),
            (
                "bool",
                Arc::new(BooleanArray::from_iter(
                    (0..rows).map(|i| n(i).map(|i| i % 2 == 0)),
                )),
                true,
            ),
            ("utf8", Arc::new(StringArray::from(text.clone())), true),
            (
                "large_utf8",
                Arc::new(LargeStringArray::from(text.clone())),
                true,
            ),
            (
                "binary",
                Arc::new(BinaryArray::from_iter(bytes_ref())),
                true,
            ),
            (
                "large_binary",
                Arc::new(LargeBinaryArray::from_iter(bytes_ref())),
                true,
            ),
            (
                "fixed",
                Arc::new(
                    FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                        (0..rows).map(|i| n(i).map(|i| [i as u8, 1, 2])),
                        3,
                    )
                    .unwrap(),
                ),
                true,
            ),
        ];
        let fields: Vec<Field> = columns
            .iter()
            .map(|(name, array, nullable)| Field::new(*name, array.data_type().clone(), *nullable))
            .collect();
        let arrays = columns.into_iter().map(|(_, array, _)| array).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
    }

    /// `batch` as one IPC message, 64-byte aligned, and its metadata's length.
    fn encode(batch: &RecordBatch) -> (Vec<u8>, usize) {
        let options = IpcWriteOptions::try_new(64, false, MetadataVersion::V5).unwrap();
        let (_, encoded) = IpcDataGenerator::default()
            .encode(
                batch,
                &mut DictionaryTracker::new(false),
                &options,
                &mut IpcWriteContext::default(),
            )
            .unwrap();
        let mut bytes = Vec::new();
        let (metadata_len, _) = write_message(&mut bytes, encoded, &options).unwrap();
        (bytes, metadata_len)
    }

    /// What a first read gives: `check_message`, then this decoder and its validation,
    /// then the arrays made from the buffers; `Ok(None)` where arrow-ipc would decode it
    /// instead.
    fn ours(
        schema: &SchemaRef,
        bytes: &Buffer,
        metadata_len: usize,
    ) -> Result<Option<RecordBatch>, String> {
        let header = check_message(bytes, metadata_len, false)?;
        catch_quietly(|| {
            let Some(flat) = decode(schema, header, bytes, metadata_len)? else {
                return Ok(None);
            };
            flat.validate(Utf8::Check).map_err(|err| err.to_string())?;
            let batch = flat.to_batch().map_err(|err| err.to_string())?;
            Ok(Some(batch))
        })?
    }

    /// arrow-ipc's checked decode after `check_message`, and arrow's full validation.
    fn arrows(
        schema: &SchemaRef,
        bytes: &Buffer,
        metadata_len: usize,
    ) -> Result<RecordBatch, String> {
        check_message(bytes, metadata_len, false)?;
        let block = Block::new(0, metadata_len as i32, (bytes.len() - metadata_len) as i64);
        catch_quietly(|| {
            let batch = FileDecoder::new(schema.clone(), MetadataVersion::V5)
                .read_record_batch(&block, bytes)
                .map_err(|err| err.to_string())?
                .ok_or("no batch")?;
            for column in batch.columns() {
                column
                    .to_data()
                    .validate_full()
                    .map_err(|err| err.to_string())?;
            }
            Ok(batch)
        })?
    }

    /// A batch of every flat type, whole and sliced three ways, each with its name.
    fn every_flat_type_and_slices() -> Vec<(&'static str, RecordBatch)> {
        let whole = every_flat_type(13);
        vec![
            ("whole", whole.clone()),
            ("sliced", whole.slice(3, 9)),
            ("one row", whole.slice(1, 1)),
            ("empty", whole.slice(5, 0)),
        ]
    }

    #[test]
    fn decodes_every_flat_type_as_arrow_ipc_does() {
        for (name, batch) in every_flat_type_and_slices() {
            let (bytes, metadata_len) = encode(&batch);
            let bytes = Buffer::from_slice_ref(&bytes);
            let schema = batch.schema();
            assert!(is_flat(&schema));
            let ours = ours(&schema, &bytes, metadata_len)
                .unwrap()
                .expect("decoded here");
            assert_eq!(
                ours,
                arrows(&schema, &bytes, metadata_len).unwrap(),
                "{name}"
            );
            assert_eq!(ours, batch, "{name}");
            // Zero-copy: the values point into the message.
            let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
            if batch.num_rows() > 0 {
                let values = ours.column(3).to_data().buffers()[0].as_ptr() as usize;
                assert!(range.contains(&values), "{name}");
            }
        }
    }

    /// `batch` as a message, decoded here, and the layout learnt from that decode.
    fn decoded_and_layout(batch: &RecordBatch) -> (Buffer, FlatBuffers, Layout) {
        let (bytes, metadata_len) = encode(batch);
        let bytes = Buffer::from_slice_ref(&bytes);
        let header = check_message(&bytes, metadata_len, false).unwrap();
        let decoded = decode(&batch.schema(), header, &bytes, metadata_len)
            .unwrap()
            .expect("decoded here");
        let layout = Layout::of(&decoded);
        (bytes, decoded, layout)
    }

    /// A layout makes the batch its message was decoded into, from the same bytes at
    /// another address too (a window mapped again), for every flat type; in `u16`s for a
    /// message under 64 KiB.
    #[test]
    fn a_layout_makes_the_batch_decode_made() {
        let mut cases = every_flat_type_and_slices();
        cases.push(("over 64 KiB", every_flat_type(4000)));
        for (name, batch) in cases {
            let (first, decoded, layout) = decoded_and_layout(&batch);
            let schema = batch.schema();
            decoded.validate(Utf8::Check).unwrap();
            let narrow = layout.0.first().is_some_and(|first| first & 1 == 0);
            assert_eq!(narrow, first.len() < u16::MAX as usize, "{name}");
            let again = layout.flat(&schema, &first).expect("kept");
            assert_eq!(again.rows(), decoded.rows(), "{name}");
            for (ours, theirs) in again.columns().iter().zip(decoded.columns()) {
                assert_eq!(ours.null_count(), theirs.null_count(), "{name}");
                assert_eq!(ours.buffers(), theirs.buffers(), "{name}");
                assert_eq!(ours.lengths, theirs.lengths, "{name}");
            }
            let elsewhere = Buffer::from_slice_ref(first.as_slice());
            assert_ne!(elsewhere.as_ptr(), first.as_ptr());
            let moved = layout
                .flat(&schema, &elsewhere)
                .unwrap()
                .to_batch()
                .unwrap();
            assert_eq!(moved, batch, "{name}");
            let inside = elsewhere.as_ptr().addr()..elsewhere.as_ptr().addr() + elsewhere.len();
            if batch.num_rows() > 0 {
                let values = moved.column(3).to_data().buffers()[0].as_ptr().addr();
                assert!(inside.contains(&values), "{name}");
            }
        }
    }

    /// Rows that take more than 16 bits in a short message (values of no bytes) take a
    /// layout of `u32`s.
    #[test]
    fn many_rows_of_no_bytes_take_wide_words() {
        let rows = 70_000;
        let empty =
            FixedSizeBinaryArray::try_new_with_len(0, Buffer::from(Vec::<u8>::new()), None, rows);
        let batch =
            RecordBatch::try_from_iter([("empty", Arc::new(empty.unwrap()) as ArrayRef)]).unwrap();
        let (bytes, _, layout) = decoded_and_layout(&batch);
        assert!(bytes.len() < 1000);
        assert_eq!(layout.0.first().map(|first| first & 1), Some(1), "wide");
        let again = layout.flat(&batch.schema(), &bytes).unwrap();
        assert_eq!(again.to_batch().unwrap(), batch);
    }

    /// A batch too wide for a small layout gets none, and is parsed on each read.
    #[test]
    fn a_wide_batch_keeps_no_layout() {
        let columns = |n: usize| {
            let arrays = (0..n).map(|i| {
                let column: ArrayRef = Arc::new(Int32Array::from(vec![Some(1), None]));
                (format!("c{i}"), column)
            });
            RecordBatch::try_from_iter(arrays).unwrap()
        };
        // A column with nulls takes 5 words: one for the rows, 51 columns are 256.
        for (n, kept) in [(51, true), (52, false)] {
            let batch = columns(n);
            let (bytes, _, layout) = decoded_and_layout(&batch);
            assert_eq!(
                layout.flat(&batch.schema(), &bytes).is_some(),
                kept,
                "{n} columns"
            );
        }
    }

    /// Every byte of a message changed in turn: this decoder refuses exactly what
    /// arrow-ipc's checked decode and full validation refuse, and what it accepts is
    /// what arrow-ipc reads.
    #[test]
    fn damaged_messages_are_refused_as_arrow_refuses_them() {
        let batch = every_flat_type(10).slice(1, 9);
        let schema = batch.schema();
        let (good, metadata_len) = encode(&batch);
        let (mut decoded_here, mut refused) = (0, 0);
        for at in 0..good.len() {
            for change in [0x01u8, 0x04, 0x80, 0xff] {
                let mut damaged = good.clone();
                damaged[at] ^= change;
                let bytes = Buffer::from_slice_ref(&damaged);
                let theirs = arrows(&schema, &bytes, metadata_len);
                match ours(&schema, &bytes, metadata_len) {
                    Ok(None) => {}
                    Ok(Some(ours)) => {
                        decoded_here += 1;
                        let theirs = theirs.unwrap_or_else(|err| {
                            panic!("byte {at} ^ {change:#x}: accepted, arrow refuses: {err}")
                        });
                        // Debug output, so that a NaN equals itself.
                        assert_eq!(
                            format!("{ours:?}"),
                            format!("{theirs:?}"),
                            "byte {at} ^ {change:#x}"
                        );
                    }
                    Err(why) => {
                        refused += 1;
                        assert!(
                            theirs.is_err(),
                            "byte {at} ^ {change:#x}: refused ({why}), arrow accepts"
                        );
                    }
                }
            }
        }
        assert!(
            decoded_here > 1000 && refused > 100,
            "{decoded_here} {refused}"
        );
    }

    #[test]
    fn other_columns_are_left_to_arrow_ipc() {
        let list = ListArray::from_iter_primitive::<arrow_array::types::Int32Type, _, _>([
            Some(vec![Some(1)]),
            None,
        ]);
        let batch = RecordBatch::try_from_iter([("list", Arc::new(list) as ArrayRef)]).unwrap();
        assert!(!is_flat(&batch.schema()));
        let dictionary: DictionaryArray<arrow_array::types::Int8Type> =
            ["a", "b", "a"].into_iter().collect();
        let batch = RecordBatch::try_from_iter([("d", Arc::new(dictionary) as ArrayRef)]).unwrap();
        assert!(!is_flat(&batch.schema()));
        // A misaligned buffer is copied by arrow-ipc, not read here.
        let batch = every_flat_type(4);
        let (bytes, metadata_len) = encode(&batch);
        let shifted = Buffer::from_slice_ref([&[0u8][..], &bytes].concat()).slice(1);
        assert_eq!(ours(&batch.schema(), &shifted, metadata_len), Ok(None));
    }
}
