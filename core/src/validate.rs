//! Arrow's full validation of arrays decoded from a persisted file, with a faster check of
//! offsets and UTF-8.
//!
//! arrow-data's `validate_full` walks a string array's offsets one at a time, checking the
//! char boundaries at each: 0.16 ms for a 64 Ki-row string column here, which doubled the
//! time four processes take to replay a save (bench/notes.md). The same checks are made
//! below in one pass over the offsets and one `is_ascii` over the values (per-string
//! boundaries only for text that is not ASCII). Every other check is arrow's own:
//! `validate`, `validate_nulls` and `validate_values`.
//!
//! A column of a flat type is checked from its typed array ([`validate_column`]), without
//! the copy into an `ArrayData` (a third of a 10-row batch's checks, bench/notes.md).

use arrow_array::cast::AsArray;
use arrow_array::{Array, OffsetSizeTrait};
use arrow_buffer::bit_chunk_iterator::UnalignedBitChunk;
use arrow_buffer::{ArrowNativeType, ScalarBuffer};
use arrow_data::ArrayData;
use arrow_schema::{ArrowError, DataType};

/// Whether the text values of string arrays are checked for UTF-8: the one check that
/// reads every byte of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Utf8 {
    Check,
    /// A process validated these very bytes before (`crate::save::validation_note`).
    Noted,
}

/// What [`ArrayData::validate_full`] checks, for `data` and its children; UTF-8 as `utf8`
/// says.
pub(crate) fn validate_full(data: &ArrayData, utf8: Utf8) -> Result<(), ArrowError> {
    data.validate()?;
    data.validate_nulls()?;
    let values = || data.buffers().get(1).map_or(0, |b| b.len());
    let child = || data.child_data().first().map_or(0, |c| c.len());
    match data.data_type() {
        DataType::Utf8 => check_offsets::<i32>(data, values(), utf8 == Utf8::Check)?,
        DataType::LargeUtf8 => check_offsets::<i64>(data, values(), utf8 == Utf8::Check)?,
        DataType::Binary => check_offsets::<i32>(data, values(), false)?,
        DataType::LargeBinary => check_offsets::<i64>(data, values(), false)?,
        DataType::List(_) | DataType::Map(..) => check_offsets::<i32>(data, child(), false)?,
        DataType::LargeList(_) => check_offsets::<i64>(data, child(), false)?,
        _ => data.validate_values()?,
    }
    for (i, child) in data.child_data().iter().enumerate() {
        validate_full(child, utf8).map_err(|err| {
            ArrowError::InvalidArgumentError(format!(
                "{} child #{i} invalid: {err}",
                data.data_type()
            ))
        })?;
    }
    Ok(())
}

/// What [`validate_full`] checks for `array`, one column of a batch. arrow-rs's typed
/// constructors assert that a flat column's buffers are aligned and large enough (a
/// damaged save's panic there is caught and reported by the reader), so what is left is
/// its null count, and a string or binary column's offsets and UTF-8 (as `utf8` says);
/// any other column is copied into an `ArrayData` and checked in full.
pub(crate) fn validate_column(array: &dyn Array, utf8: Utf8) -> Result<(), ArrowError> {
    let flat = match array.data_type() {
        DataType::Utf8 => strings::<i32>(array, utf8 == Utf8::Check),
        DataType::LargeUtf8 => strings::<i64>(array, utf8 == Utf8::Check),
        DataType::Binary => binaries::<i32>(array),
        DataType::LargeBinary => binaries::<i64>(array),
        DataType::Boolean | DataType::FixedSizeBinary(_) => Ok(()),
        primitive if primitive.is_primitive() => Ok(()),
        _ => return validate_full(&array.to_data(), utf8),
    };
    flat?;
    match array.nulls() {
        Some(nulls) => check_null_count(
            nulls.validity(),
            nulls.offset(),
            nulls.len(),
            nulls.null_count(),
        ),
        None => Ok(()),
    }
}

/// A column's `null_count` against its validity bitmap: `len` bits of `bitmap` from bit
/// `offset` (arrow-ipc and the flat decoder take the count from the message, unchecked).
pub(crate) fn check_null_count(
    bitmap: &[u8],
    offset: usize,
    len: usize,
    null_count: usize,
) -> Result<(), ArrowError> {
    let actual = len - UnalignedBitChunk::new(bitmap, offset, len).count_ones();
    if actual != null_count {
        return Err(ArrowError::InvalidArgumentError(format!(
            "null_count value ({null_count}) doesn't match actual number of nulls in array ({actual})"
        )));
    }
    Ok(())
}

fn strings<O: OffsetSizeTrait>(array: &dyn Array, utf8: bool) -> Result<(), ArrowError> {
    let strings = array.as_string::<O>();
    let values = strings.values().as_slice();
    check_offset_values(
        array.data_type(),
        strings.offsets(),
        values,
        values.len(),
        utf8,
    )
}

fn binaries<O: OffsetSizeTrait>(array: &dyn Array) -> Result<(), ArrowError> {
    let bytes = array.as_binary::<O>();
    let values = bytes.values().as_slice();
    check_offset_values(
        array.data_type(),
        bytes.offsets(),
        values,
        values.len(),
        false,
    )
}

/// The offsets of `data` (checked for size by `validate`) never decrease and stay within
/// `0..=limit`; with `utf8`, the values they span are UTF-8, split on char boundaries.
fn check_offsets<T: ArrowNativeType>(
    data: &ArrayData,
    limit: usize,
    utf8: bool,
) -> Result<(), ArrowError> {
    let buffer = &data.buffers()[0];
    if buffer.is_empty() {
        return Ok(()); // an empty array may have no offsets at all (`validate` checked that)
    }
    // `validate` checked that the buffer is aligned and holds these.
    let offsets = ScalarBuffer::<T>::new(buffer.clone(), data.offset(), data.len() + 1);
    let values = match utf8 {
        true => data.buffers()[1].as_slice(),
        false => &[],
    };
    check_offset_values(data.data_type(), &offsets, values, limit, utf8)
}

/// `offsets` never decrease and stay within `0..=limit`; with `utf8`, the `values` they
/// span are UTF-8, split on char boundaries.
pub(crate) fn check_offset_values<T: ArrowNativeType>(
    data_type: &DataType,
    offsets: &[T],
    values: &[u8],
    limit: usize,
    utf8: bool,
) -> Result<(), ArrowError> {
    let invalid = |why: String| ArrowError::InvalidArgumentError(format!("{data_type}: {why}"));
    if offsets.is_empty() {
        return Ok(());
    }
    // Branch-free, so that it vectorises; the position is looked for only on failure.
    let decreasing = offsets
        .iter()
        .zip(&offsets[1..])
        .fold(false, |bad, (a, b)| bad | (b < a));
    if decreasing {
        let at = offsets.windows(2).position(|w| w[1] < w[0]).unwrap_or(0);
        return Err(invalid(format!("non-monotonic offset at slot {at}")));
    }
    let (first, last) = (offsets[0], offsets[offsets.len() - 1]);
    let (Some(start), Some(end)) = (first.to_usize(), last.to_usize()) else {
        return Err(invalid(format!("negative offset {first:?}")));
    };
    if end > limit {
        return Err(invalid(format!(
            "offset {end} out of bounds: {end} > {limit}"
        )));
    }
    if !utf8 {
        return Ok(());
    }
    let values = &values[start..end];
    if values.is_ascii() {
        return Ok(()); // every offset is a char boundary
    }
    let text =
        std::str::from_utf8(values).map_err(|err| invalid(format!("invalid UTF-8 ({err})")))?;
    match offsets
        .iter()
        .position(|o| !text.is_char_boundary(o.as_usize() - start))
    {
        Some(at) => Err(invalid(format!("offset {at} splits a UTF-8 character"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::make_array;
    use arrow_buffer::Buffer;

    /// A Utf8 (or Binary) array over `offsets` and `values`, built without validation.
    fn strings(data_type: DataType, offsets: &[i32], values: &[u8]) -> ArrayData {
        let builder = ArrayData::builder(data_type)
            .len(offsets.len().saturating_sub(1))
            .add_buffer(Buffer::from_slice_ref(offsets))
            .add_buffer(Buffer::from_slice_ref(values));
        // SAFETY: only validated below, never read.
        unsafe { builder.build_unchecked() }
    }

    /// Refuses exactly what arrow's own full validation refuses.
    #[test]
    fn agrees_with_arrow_on_damaged_strings() {
        let text = "añb€cd".as_bytes(); // 1 + 2 + 1 + 3 + 1 + 1 bytes
        let cases: Vec<(Vec<i32>, Vec<u8>)> = vec![
            (vec![0, 1, 3, 4, 7, 9], text.to_vec()),
            (vec![0, 2, 3, 4, 7, 9], text.to_vec()), // inside ñ
            (vec![0, 1, 3, 5, 7, 9], text.to_vec()), // inside €
            (vec![0, 1, 3, 4, 7, 10], text.to_vec()), // past the end
            (vec![0, 3, 1, 4, 7, 9], text.to_vec()), // backwards
            (vec![-1, 1, 3, 4, 7, 9], text.to_vec()), // negative
            (
                vec![0, 1, 3, 4, 7, 9],
                [&text[..6], &[0xff], &text[7..]].concat(),
            ),
            (vec![0, 2, 4], b"abcd".to_vec()),
            (vec![0, 2, 5], b"abcd".to_vec()),
            (vec![1, 2, 4], b"abcd".to_vec()), // a first offset past 0 is allowed
            (vec![0], Vec::new()),
            (vec![], Vec::new()),
        ];
        for (offsets, values) in cases {
            for data_type in [DataType::Utf8, DataType::Binary] {
                let data = strings(data_type.clone(), &offsets, &values);
                let ours = validate_full(&data, Utf8::Check).is_ok();
                let arrows = data.validate_full().is_ok();
                assert_eq!(ours, arrows, "{data_type} over {offsets:?}, {values:?}");
                // The typed array's constructor refuses by panicking, as on a read.
                let typed = crate::disk::catch_quietly(|| make_array(data.clone()))
                    .is_ok_and(|array| validate_column(array.as_ref(), Utf8::Check).is_ok());
                assert_eq!(
                    typed, arrows,
                    "typed {data_type} over {offsets:?}, {values:?}"
                );
            }
        }
    }

    /// A null count that the bitmap does not bear out is refused, in a flat column as in
    /// any other (arrow-ipc takes the count from the message, unchecked).
    #[test]
    fn a_wrong_null_count_is_refused() {
        let bitmap = Buffer::from_slice_ref([0b1011u8]); // one null in four
        for null_count in [0, 1, 2] {
            let builder = ArrayData::builder(DataType::Int32)
                .len(4)
                .null_count(null_count)
                .null_bit_buffer(Some(bitmap.clone()))
                .add_buffer(Buffer::from_slice_ref([1i32, 2, 3, 4]));
            // SAFETY: only validated below, never read.
            let data = unsafe { builder.build_unchecked() };
            let arrows = data.validate_full().is_ok();
            assert_eq!(arrows, null_count != 2, "{null_count}");
            let ours = validate_column(make_array(data).as_ref(), Utf8::Check).is_ok();
            assert_eq!(ours, arrows, "{null_count}");
        }
    }

    /// Noted text skips only the UTF-8 check: offsets are still checked.
    #[test]
    fn noted_text_still_has_its_offsets_checked() {
        let not_utf8 = strings(DataType::Utf8, &[0, 1, 2], &[b'a', 0xff]);
        assert!(validate_full(&not_utf8, Utf8::Check).is_err());
        assert!(validate_full(&not_utf8, Utf8::Noted).is_ok());
        for offsets in [[0, 3, 2], [0, 1, 3]] {
            let bad = strings(DataType::Utf8, &offsets, b"ab");
            assert!(validate_full(&bad, Utf8::Noted).is_err(), "{offsets:?}");
        }
    }
}
