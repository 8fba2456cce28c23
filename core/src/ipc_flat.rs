//! Flat columns decoded straight from an IPC record batch message that
//! `disk::check_message` has parsed and verified: the typed arrays are built over slices
//! of the message's body, without arrow-ipc's second verification of the flatbuffer, its
//! `ArrayData` builders and `align_buffers` (two thirds of a small batch's decode,
//! bench/notes.md). Any other column, a compressed body or a misaligned buffer goes to
//! arrow-ipc's decoder instead.
//!
//! Sizes are checked here, so that building never panics; what the values say (offsets,
//! UTF-8, null counts) is left to `crate::validate` on a persisted batch's first read,
//! as for arrow-ipc's unchecked decode.

use std::sync::Arc;

use arrow_array::types::{BinaryType, ByteArrayType, LargeBinaryType, LargeUtf8Type, Utf8Type};
use arrow_array::{
    downcast_primitive, ArrayRef, ArrowPrimitiveType, BooleanArray, FixedSizeBinaryArray,
    GenericByteArray, PrimitiveArray, RecordBatch,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, SchemaRef};

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

/// The batch of `schema` in `header`, whose body is `message` from byte `body_start`;
/// `Ok(None)` when arrow-ipc must decode it (compressed, a misaligned buffer, a type
/// not decoded here). The arrays are built unchecked: the caller validates them before
/// any value is read, unless these bytes passed that validation before.
pub(crate) fn decode(
    schema: &SchemaRef,
    header: arrow_ipc::RecordBatch<'_>,
    message: &Buffer,
    body_start: usize,
) -> Result<Option<RecordBatch>, String> {
    if header.compression().is_some() {
        return Ok(None);
    }
    let rows = usize::try_from(header.length()).map_err(|_| "a negative row count")?;
    let mut parts = Parts {
        nodes: header.nodes().into_iter().flatten(),
        buffers: header.buffers().into_iter().flatten(),
        message,
        body_start,
    };
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let Some(column) = column(field.data_type(), rows, &mut parts)? else {
            return Ok(None);
        };
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(format!(
                "its non-nullable column {} holds nulls",
                field.name()
            ));
        }
        columns.push(column);
    }
    // SAFETY: what `RecordBatch::try_new` checks holds: a column per field, each built
    // with its field's type (`column`), `rows` long, and nulls only where allowed.
    Ok(Some(unsafe {
        RecordBatch::new_unchecked(schema.clone(), columns, rows)
    }))
}

/// The header's nodes and buffers, taken in turn.
struct Parts<'a, N, B> {
    nodes: N,
    buffers: B,
    message: &'a Buffer,
    body_start: usize,
}

impl<'a, N, B> Parts<'_, N, B>
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

    /// Where the next buffer lies in the body (`check_message` found it inside).
    fn next(&mut self) -> Result<&'a arrow_ipc::Buffer, String> {
        self.buffers
            .next()
            .ok_or_else(|| "it has fewer buffers than its columns need".to_string())
    }

    /// The next buffer.
    fn buffer(&mut self) -> Result<Buffer, String> {
        let buffer = self.next()?;
        let (offset, len) = (buffer.offset() as usize, buffer.length() as usize);
        Ok(self
            .message
            .slice_with_length(self.body_start + offset, len))
    }

    /// The next buffer as a null bitmap for `len` values with `null_count` nulls; none
    /// when there are no nulls, as arrow-ipc reads it.
    fn nulls(&mut self, len: usize, null_count: usize) -> Result<Option<NullBuffer>, String> {
        if null_count == 0 {
            self.next()?;
            return Ok(None);
        }
        let bits = bits(self.buffer()?, len, "null bitmap")?;
        // SAFETY: the null count is checked against the bitmap before any value is read
        // (`crate::validate::validate_column`), or these bytes passed that check before.
        Ok(Some(unsafe { NullBuffer::new_unchecked(bits, null_count) }))
    }
}

/// One column of type `data_type` and `len` rows; `Ok(None)` for arrow-ipc to decode.
fn column<'a, N, B>(
    data_type: &DataType,
    len: usize,
    parts: &mut Parts<'_, N, B>,
) -> Result<Option<ArrayRef>, String>
where
    N: Iterator<Item = &'a arrow_ipc::FieldNode>,
    B: Iterator<Item = &'a arrow_ipc::Buffer>,
{
    let null_count = parts.node(len)?;
    let nulls = parts.nulls(len, null_count)?;
    macro_rules! primitive {
        ($t:ty) => {
            primitive::<$t>(data_type, len, nulls, parts.buffer()?)
        };
    }
    downcast_primitive! {
        data_type => (primitive),
        DataType::Boolean => {
            let values = bits(parts.buffer()?, len, "boolean values")?;
            Ok(Some(Arc::new(BooleanArray::new(values, nulls))))
        }
        DataType::FixedSizeBinary(width) => {
            let values = parts.buffer()?;
            let needed = usize::try_from(*width).ok().and_then(|w| w.checked_mul(len));
            let Some(needed) = needed.filter(|&needed| needed <= values.len()) else {
                return Err(too_short("fixed-size binary values", values.len(), len));
            };
            FixedSizeBinaryArray::try_new_with_len(*width, values.slice_with_length(0, needed), nulls, len)
                .map(|array| Some(Arc::new(array) as ArrayRef))
                .map_err(|err| err.to_string())
        }
        DataType::Utf8 => bytes::<Utf8Type, _, _>(len, nulls, parts),
        DataType::LargeUtf8 => bytes::<LargeUtf8Type, _, _>(len, nulls, parts),
        DataType::Binary => bytes::<BinaryType, _, _>(len, nulls, parts),
        DataType::LargeBinary => bytes::<LargeBinaryType, _, _>(len, nulls, parts),
        _ => Ok(None),
    }
}

fn too_short(what: &str, bytes: usize, len: usize) -> String {
    format!("its {what} buffer of {bytes} bytes is too short for {len} values")
}

/// `len` bits at the start of `buffer`.
fn bits(buffer: Buffer, len: usize, what: &str) -> Result<BooleanBuffer, String> {
    if buffer.len() < len.div_ceil(8) {
        return Err(too_short(what, buffer.len(), len));
    }
    Ok(BooleanBuffer::new(buffer, 0, len))
}

/// `len` values of `T` at the start of `buffer`, if it is aligned for them.
fn scalars<T: arrow_buffer::ArrowNativeType>(
    buffer: Buffer,
    len: usize,
    what: &str,
) -> Result<Option<ScalarBuffer<T>>, String> {
    let needed = len.checked_mul(size_of::<T>());
    if needed.is_none_or(|needed| needed > buffer.len()) {
        return Err(too_short(what, buffer.len(), len));
    }

    if buffer.as_ptr().align_offset(align_of::<T>()) != 0 {
        return Ok(None); // arrow-ipc copies it into an aligned buffer
    }
    Ok(Some(ScalarBuffer::new(buffer, 0, len)))
}

fn primitive<T: ArrowPrimitiveType>(
    data_type: &DataType,
    len: usize,
    nulls: Option<NullBuffer>,
    values: Buffer,
) -> Result<Option<ArrayRef>, String> {
    let Some(values) = scalars::<T::Native>(values, len, "values")? else {
        return Ok(None);
    };
    let array = PrimitiveArray::<T>::new(values, nulls);
    // Only a timezone, a precision or a scale differs from the type's own.
    let array = match *data_type == T::DATA_TYPE {
        true => array,
        false => array.with_data_type(data_type.clone()),
    };
    Ok(Some(Arc::new(array)))
}

fn bytes<'a, T: ByteArrayType, N, B>(
    len: usize,
    nulls: Option<NullBuffer>,
    parts: &mut Parts<'_, N, B>,
) -> Result<Option<ArrayRef>, String>
where
    N: Iterator<Item = &'a arrow_ipc::FieldNode>,
    B: Iterator<Item = &'a arrow_ipc::Buffer>,
{
    let (offsets, values) = (parts.buffer()?, parts.buffer()?);
    let offsets = match len {
        // An empty array may come with no offsets at all.
        0 if offsets.is_empty() => OffsetBuffer::new_empty(),
        // As arrow's validation refuses it (`Buffer::typed_data`).
        _ if offsets.len() % size_of::<T::Offset>() != 0 => {
            return Err(format!(
                "its offsets buffer of {} bytes is not a whole number of offsets",
                offsets.len()
            ))
        }
        _ => match scalars::<T::Offset>(offsets, len + 1, "offsets")? {
            // SAFETY: the offsets are checked against the values (and the values for
            // UTF-8) before any value is read (`crate::validate::validate_column`), or
            // these bytes passed that check before.
            Some(offsets) => unsafe { OffsetBuffer::new_unchecked(offsets) },
            None => return Ok(None),
        },
    };
    // SAFETY: as for the offsets.
    let array = unsafe { GenericByteArray::<T>::new_unchecked(offsets, values, nulls) };
    Ok(Some(Arc::new(array)))
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
    use crate::validate::{validate_column, Utf8};

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

    /// What a first read gives: `check_message`, then this decoder and the columns'
    /// validation; `Ok(None)` where arrow-ipc would decode it instead.
    fn ours(
        schema: &SchemaRef,
        bytes: &Buffer,
        metadata_len: usize,
    ) -> Result<Option<RecordBatch>, String> {
        let header = check_message(bytes, metadata_len, false)?;
        catch_quietly(|| {
            let Some(batch) = decode(schema, header, bytes, metadata_len)? else {
                return Ok(None);
            };
            for column in batch.columns() {
                validate_column(column.as_ref(), Utf8::Check).map_err(|err| err.to_string())?;
            }
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

    #[test]
    fn decodes_every_flat_type_as_arrow_ipc_does() {
        let whole = every_flat_type(13);
        let cases = [
            ("whole", whole.clone()),
            ("sliced", whole.slice(3, 9)),
            ("one row", whole.slice(1, 1)),
            ("empty", whole.slice(5, 0)),
        ];
        for (name, batch) in cases {
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
