//! The engine's kept forms of a batch as the core's `Derived` values, and the C export of
//! a cached batch: a copy of the image kept with it, its buffers as read back from disk,
//! or arrow-rs's export of the batch.

use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StructArray};
use arrow_data::ffi::FFI_ArrowArray;
use arrow_schema::{ArrowError, DataType};

use crate::abi::ArrowArray;
use crate::upstream::import_error;
use batchcorder_cdata::image::{self, FlatImage, Image, Leaves, TreeImage};
use batchcorder_cdata::import::FlatBatch;
use batchcorder_core::storage::{prefetch, Allocations, CachedBatch, Derived};
use batchcorder_core::FlatBuffers;

/// A batch imported into arrow-rs, with the producer's tree kept for exports.
#[repr(transparent)]
pub(crate) struct TreeExport(pub TreeImage);

/// A batch held only as the producer's columns: a [`CachedBatch::deferred`].
#[repr(transparent)]
pub(crate) struct FlatExport(pub FlatBatch);

impl Derived for TreeExport {
    /// The image is what a read copies.
    fn prefetch(&self) {
        prefetch_words(self.0.words());
    }
}

impl Derived for FlatExport {
    /// The image is what a read copies.
    fn prefetch(&self) {
        prefetch_words(self.0.image().words());
    }

    fn to_batch(&self) -> Option<Result<RecordBatch, ArrowError>> {
        Some(self.0.to_batch().map_err(import_error))
    }

    fn allocations(&self) -> Option<Allocations> {
        self.0.buffers().map(Allocations::of_buffers)
    }
}

/// A batch made in this process (handed over by a Rust upstream, or decoded from disk by
/// arrow-ipc: a compressed spill, a misaligned buffer) whose columns are all flat leaves,
/// laid out as a flat image on its first export: exports copy it, as they copy a kept
/// one, instead of going through arrow-rs.
pub(crate) struct OwnImage {
    /// `None` when a column is not a flat leaf: arrow-rs exports such a batch.
    image: Option<Arc<FlatImage>>,
    /// What the image's nodes' `buffers` point to: the addresses of the batch's buffers.
    /// A `Vec` as it was filled: a boxed slice would be reallocated to its length.
    _addresses: Vec<*const c_void>,
}

// SAFETY: the addresses are of immutable buffers, which the batch holding this keeps.
unsafe impl Send for OwnImage {}
// SAFETY: as above.
unsafe impl Sync for OwnImage {}

impl Derived for OwnImage {
    /// The image is what a read copies.
    fn prefetch(&self) {
        if let Some(image) = &self.image {
            prefetch_words(image.words());
        }
    }
}

impl OwnImage {
    fn of(batch: &RecordBatch) -> Self {
        let columns = batch.columns();
        // Per column: its validity bitmap (or NULL), then its buffers, as C lists them.
        let mut addresses = Vec::with_capacity(columns.len() * 3);
        let mut layouts = Vec::with_capacity(columns.len());
        for column in columns {
            let Some(layout) = flat_leaf(column.as_ref(), &mut addresses) else {
                return Self {
                    image: None,
                    _addresses: Vec::new(),
                };
            };
            layouts.push(layout);
        }
        let mut next = addresses.as_mut_ptr();
        let nodes = columns
            .iter()
            .zip(layouts)
            .map(|(column, (offset, n_buffers))| {
                let buffers = next;
                // SAFETY: `addresses` holds `n_buffers` for each column, in this order.
                next = unsafe { next.add(n_buffers) };
                batchcorder_cdata::abi::ArrowArray::leaf(
                    column.len() as i64,
                    column.null_count() as i64,
                    offset as i64,
                    buffers,
                    n_buffers,
                )
            });
        let image = FlatImage::of_leaves(batch.num_rows() as i64, nodes);
        Self {
            image: Some(image),
            _addresses: addresses,
        }
    }
}

/// For a column with a C layout of a validity bitmap and its own buffers, all under one
/// offset: push the buffers' addresses onto `addresses`, and return that offset and how
/// many there are. `None` for any other column (nested, dictionary, views, null).
fn flat_leaf(array: &dyn Array, addresses: &mut Vec<*const c_void>) -> Option<(usize, usize)> {
    use arrow_array::cast::AsArray;
    // arrow-rs keeps a sliced column's values sliced (offset 0, but for booleans' bits)
    // and its bitmap with its own bit offset.
    let (offset, values): (usize, [Option<&[u8]>; 2]) = match array.data_type() {
        DataType::Boolean => {
            let bits = array.as_boolean().values();
            (bits.offset(), [Some(bits.inner().as_slice()), None])
        }
        DataType::Utf8 => {
            let strings = array.as_string::<i32>();
            (
                0,
                [
                    Some(strings.offsets().inner().inner()),
                    Some(strings.values()),
                ],
            )
        }
        DataType::LargeUtf8 => {
            let strings = array.as_string::<i64>();
            (
                0,
                [
                    Some(strings.offsets().inner().inner()),
                    Some(strings.values()),
                ],
            )
        }
        DataType::Binary => {
            let bytes = array.as_binary::<i32>();
            (
                0,
                [Some(bytes.offsets().inner().inner()), Some(bytes.values())],
            )
        }
        DataType::LargeBinary => {
            let bytes = array.as_binary::<i64>();
            (
                0,
                [Some(bytes.offsets().inner().inner()), Some(bytes.values())],
            )
        }
        DataType::FixedSizeBinary(_) => {
            (0, [Some(array.as_fixed_size_binary().value_data()), None])
        }
        _ => arrow_array::downcast_primitive_array!(
            array => (0, [Some(array.values().inner().as_slice()), None]),
            _ => return None
        ),
    };
    // arrow-rs's export shifts a bitmap that starts elsewhere; such a column goes there.
    if array.nulls().is_some_and(|nulls| nulls.offset() != offset) {
        return None;
    }
    let validity = array.nulls().map_or(ptr::null(), |n| n.buffer().as_ptr());
    addresses.push(validity.cast());
    let values = values.into_iter().flatten();
    let before = addresses.len();
    addresses.extend(values.map(|v| v.as_ptr().cast::<c_void>()));
    Some((offset, 1 + addresses.len() - before))
}

/// A batch of flat columns read back from disk, held as its message's buffers: exported
/// straight from them, without arrays or an image in between.
#[repr(transparent)] // a `&FlatBuffers` is cast to a `&SavedLeaves`
struct SavedLeaves(FlatBuffers);

impl SavedLeaves {
    fn of(flat: &FlatBuffers) -> &Self {
        // SAFETY: a transparent wrapper of the same type.
        unsafe { &*ptr::from_ref(flat).cast::<Self>() }
    }
}

impl Leaves for SavedLeaves {
    fn length(&self) -> i64 {
        self.0.rows() as i64
    }

    fn columns(&self) -> usize {
        self.0.columns().len()
    }

    fn column(&self, index: usize) -> batchcorder_cdata::abi::ArrowArray {
        let column = &self.0.columns()[index];
        let buffers = column.buffers();
        batchcorder_cdata::abi::ArrowArray::leaf(
            self.0.rows() as i64,
            column.null_count() as i64,
            0,
            buffers.as_ptr(),
            buffers.len(),
        )
    }
}

/// The image kept with `cached`: the C stream import's, the buffers of a batch read back
/// from disk, or one laid out on its first export from a batch made in this process.
#[inline]
fn image_of(cached: &CachedBatch) -> Option<Image<'_>> {
    if let Some(flat) = cached.derived_if_present::<FlatExport>() {
        return Some(Image::Flat(flat.0.image()));
    }
    if let Some(saved) = cached.derived_if_present::<FlatBuffers>() {
        return Some(Image::Leaves(SavedLeaves::of(saved)));
    }
    if let Some(tree) = cached.derived_if_present::<TreeExport>() {
        return Some(Image::Tree(&tree.0));
    }
    let own = cached.derived(OwnImage::of)?;
    own.image.as_deref().map(Image::Flat)
}

fn prefetch_words(words: &[u64]) {
    const CACHE_LINE_WORDS: usize = 64 / size_of::<u64>();
    for line in words.chunks(CACHE_LINE_WORDS) {
        prefetch(line.as_ptr());
    }
}

/// Write `cached` into `out` as a new C array the caller releases: a copy of the image
/// kept with it (every batch that came through the C stream import has one, and a flat
/// batch made here gets one), its buffers (a flat batch read back from disk), or else
/// arrow-rs's export (a batch with nested or dictionary columns made here: read back
/// from disk, or from a Rust upstream). On failure `out` is as it was.
#[inline]
pub(crate) fn export_cached(
    cached: Arc<CachedBatch>,
    out: &mut MaybeUninit<ArrowArray>,
) -> Result<(), ArrowError> {
    if let Err(cached) = image::export(cached, image_of, out) {
        let data = StructArray::from(cached.batch()?.clone()).into_data();
        out.write(ArrowArray::from_ffi(FFI_ArrowArray::new(&data)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{
        ArrayRef, BooleanArray, Decimal128Array, FixedSizeBinaryArray, Int64Array,
        LargeStringArray, StringArray, TimestampMicrosecondArray,
    };
    use arrow_schema::DataType;

    use crate::upstream::tests::{encoded, pull_all};

    fn import(array: ArrowArray, batch: &RecordBatch) -> RecordBatch {
        let data_type = DataType::Struct(batch.schema().fields().clone());
        // SAFETY: an export of ours, of this type.
        let data = unsafe { arrow_array::ffi::from_ffi_and_data_type(array.into_ffi(), data_type) };
        RecordBatch::from(StructArray::from(data.unwrap()))
    }

    /// Every kind of flat leaf, with nulls.
    fn leaves_with_nulls() -> RecordBatch {
        let rows = 40;
        let some = |i: usize| i % 3 != 0;
        let columns: Vec<(&str, ArrayRef)> = vec![
            (
                "b",
                Arc::new(BooleanArray::from_iter(
                    (0..rows).map(|i| some(i).then_some(i % 2 == 0)),
                )),
            ),
            (
                "s",
                Arc::new(StringArray::from_iter(
                    (0..rows).map(|i| some(i).then(|| format!("ä{i}"))),
                )),
            ),
            (
                "l",
                Arc::new(LargeStringArray::from_iter_values(
                    (0..rows).map(|i| "x".repeat(i)),
                )),
            ),
            (
                "d",
                Arc::new(Decimal128Array::from_iter(
                    (0..rows).map(|i| some(i).then_some(i as i128)),
                )),
            ),
            (
                "t",
                Arc::new(TimestampMicrosecondArray::from_iter_values(0..rows as i64)),
            ),
            (
                "f",
                Arc::new(
                    FixedSizeBinaryArray::try_from_iter((0..rows).map(|i| [i as u8; 3])).unwrap(),
                ),
            ),
        ];
        RecordBatch::try_from_iter(columns).unwrap()
    }

    /// A batch made here is exported from its image, laid out once; one that is not flat
    /// (a dictionary, a nested column, a bitmap sliced apart from its values) goes through
    /// arrow-rs, and equally well.
    #[test]
    fn a_flat_batch_made_here_gets_an_image_and_others_do_not() {
        let flat = leaves_with_nulls();
        let nested = RecordBatch::try_from_iter([(
            "nested",
            Arc::new(StructArray::from(flat.clone())) as ArrayRef,
        )])
        .unwrap();
        let cases = [
            (flat.slice(0, 0), true),
            (flat.slice(5, 27), false),
            (flat.slice(5, 27).project(&[2, 4, 5]).unwrap(), true),
            (flat, true),
            (nested, false),
            (encoded(), false),
        ];
        for (batch, imaged) in cases {
            let cached = Arc::new(CachedBatch::new(batch.clone()));
            let mut out = MaybeUninit::uninit();
            export_cached(cached.clone(), &mut out).unwrap();
            // SAFETY: written on success.
            assert_eq!(import(unsafe { out.assume_init() }, &batch), batch);
            let own = cached.derived_if_present::<OwnImage>().expect("looked for");
            assert_eq!(own.image.is_some(), imaged, "{:?}", batch.schema());
        }
    }

    /// A save of flat columns is read back as its messages' buffers and exported from
    /// them: what a consumer imports is the batch saved, on the first read (checked) and
    /// on a later one (passed), and the export outlives the cache.
    #[test]
    fn a_flat_save_exports_straight_from_its_buffers() {
        use arrow_array::RecordBatchIterator;
        use batchcorder_core::{CacheOptions, OpenOptions, StreamCache};
        let flat = leaves_with_nulls();
        let source = vec![
            flat.clone(),
            flat.slice(5, 27),
            flat.slice(3, 0),
            flat.slice(1, 1),
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("saved");
        let batches = RecordBatchIterator::new(source.clone().into_iter().map(Ok), flat.schema());
        let cache = StreamCache::new(Box::new(batches), CacheOptions::default()).unwrap();
        cache.persist(&path).unwrap();
        drop(cache);
        let (opened, _) = StreamCache::open(&path, &OpenOptions::default()).unwrap();
        for _ in 0..2 {
            let mut reader = opened.reader(true).unwrap();
            let mut exports = Vec::new();
            for expected in &source {
                let cached = reader.next_cached().unwrap().expect("a batch");
                assert!(cached.derived_if_present::<FlatBuffers>().is_some());
                assert!(cached.batch_if_made().is_none(), "no arrays were made");
                let mut out = MaybeUninit::uninit();
                export_cached(cached, &mut out).unwrap();
                // SAFETY: written on success.
                exports.push((unsafe { out.assume_init() }, expected));
            }
            drop(reader);
            for (out, expected) in exports {
                assert_eq!(import(out, expected), *expected);
            }
        }
    }

    #[test]
    fn every_kind_of_cached_batch_exports_and_outlives_the_cache() {
        let flat = RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from_iter_values(0..100)) as ArrayRef,
            ),
            ("s", Arc::new(StringArray::from(vec!["abcd"; 100])) as _),
        ])
        .unwrap();
        for original in [flat, leaves_with_nulls(), encoded()] {
            let pulled = pull_all(vec![original.clone()]).pop().unwrap();
            // Rust-made (arrow-rs's export), kept by the import (a copy of its image).
            for cached in [
                Arc::new(CachedBatch::new(original.clone())),
                Arc::new(pulled.batch),
            ] {
                let export = || {
                    let mut out = MaybeUninit::uninit();
                    export_cached(cached.clone(), &mut out).unwrap();
                    // SAFETY: written on success.
                    unsafe { out.assume_init() }
                };
                let exports = [export(), export()];
                drop(cached);
                for out in exports {
                    assert_eq!(import(out, &original), original);
                }
            }
        }
    }
}
