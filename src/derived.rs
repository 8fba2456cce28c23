//! The engine's kept forms of a batch as the core's `Derived` values, and the C export of
//! a cached batch: a copy of the image kept with it, or arrow-rs's export of the batch.

use std::mem::MaybeUninit;
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StructArray};
use arrow_data::ffi::FFI_ArrowArray;
use arrow_schema::ArrowError;

use crate::abi::ArrowArray;
use crate::upstream::import_error;
use batchcorder_cdata::image::{self, Image, TreeImage};
use batchcorder_cdata::import::FlatBatch;
use batchcorder_core::storage::{prefetch, Allocations, CachedBatch, Derived};

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

/// The image kept with `cached`, if the C stream import kept one.
#[inline]
fn image_of(cached: &CachedBatch) -> Option<Image<'_>> {
    if let Some(flat) = cached.derived_if_present::<FlatExport>() {
        return Some(Image::Flat(flat.0.image()));
    }
    let tree = cached.derived_if_present::<TreeExport>()?;
    Some(Image::Tree(&tree.0))
}

fn prefetch_words(words: &[u64]) {
    const CACHE_LINE_WORDS: usize = 64 / size_of::<u64>();
    for line in words.chunks(CACHE_LINE_WORDS) {
        prefetch(line.as_ptr());
    }
}

/// Write `cached` into `out` as a new C array the caller releases: a copy of the image
/// kept with it (every batch that came through the C stream import has one), or else
/// arrow-rs's export (a batch read back from disk, which is decoded anew for every read,
/// or one from a Rust upstream). On failure `out` is as it was.
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
    use arrow_array::{ArrayRef, Int64Array, StringArray};
    use arrow_schema::DataType;

    use crate::upstream::tests::{encoded, pull_all};

    fn import(array: ArrowArray, batch: &RecordBatch) -> RecordBatch {
        let data_type = DataType::Struct(batch.schema().fields().clone());
        // SAFETY: an export of ours, of this type.
        let data = unsafe { arrow_array::ffi::from_ffi_and_data_type(array.into_ffi(), data_type) };
        RecordBatch::from(StructArray::from(data.unwrap()))
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
        for original in [flat, encoded()] {
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
