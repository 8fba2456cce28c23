//! A panic inside the core never crosses the C boundary: it becomes BC_INTERNAL (EIO in a
//! stream callback), and the cache it interrupted is poisoned.

use std::ffi::CStr;
use std::ptr;
use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch, RecordBatchReader};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use batchcorder::abi::{ArrowArray, ArrowArrayStream};
use batchcorder::bc_last_error;
use batchcorder::cache::*;
use batchcorder::BcStatus::*;
use batchcorder_core::{CacheOptions, StreamCache};

/// Yields one batch, then panics.
struct PanicsOnSecondBatch {
    schema: SchemaRef,
    served: bool,
}

impl Iterator for PanicsOnSecondBatch {
    type Item = Result<RecordBatch, ArrowError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.served {
            panic!("a bug deep inside the upstream");
        }
        self.served = true;
        let ids = Arc::new(Int64Array::from(vec![1, 2, 3]));
        Some(Ok(
            RecordBatch::try_new(self.schema.clone(), vec![ids]).unwrap()
        ))
    }
}

impl RecordBatchReader for PanicsOnSecondBatch {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

fn panicking_cache() -> *mut BcCache {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let upstream = PanicsOnSecondBatch {
        schema,
        served: false,
    };
    let cache = StreamCache::new(Box::new(upstream), CacheOptions::default()).unwrap();
    BcCache::into_raw(cache)
}

fn last_error() -> String {
    // SAFETY: the library's message, NUL-terminated, valid until its next call here.
    unsafe { CStr::from_ptr(bc_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// A reader of `cache` past its first batch, which reads fine.
fn reader_past_the_first_batch(cache: *mut BcCache) -> ArrowArrayStream {
    let mut reader = ArrowArrayStream::RELEASED;
    let mut array = ArrowArray::RELEASED;
    // SAFETY: a live handle; the reader and the array are live once made, and released
    // once.
    unsafe {
        let status = bc_cache_reader(cache, true, ptr::null(), &mut reader);
        assert_eq!(status, BC_OK);
        let code = (reader.get_next.unwrap())(&mut reader, &mut array);
        assert_eq!(code, 0, "the first batch is fine");
        (array.release.unwrap())(&mut array);
    }
    reader
}

#[test]
fn a_panic_is_bc_internal_and_poisons_the_cache() {
    std::panic::set_hook(Box::new(|_| {})); // keep the expected panics out of the output
    let cache = panicking_cache();
    let mut reader = reader_past_the_first_batch(cache);
    let mut array = ArrowArray::RELEASED;
    // SAFETY: `cache` is live until freed at the end, `reader` live until released, and
    // every other pointer a local.
    unsafe {
        assert_eq!(bc_cache_ingest_all(cache, ptr::null_mut()), BC_INTERNAL);
        assert!(
            last_error().contains("a bug deep inside the upstream"),
            "{}",
            last_error()
        );

        // Poisoned: every later call fails cleanly instead of reading half-updated state.
        assert_eq!(bc_cache_ingest_all(cache, ptr::null_mut()), BC_INTERNAL);
        assert!(last_error().contains("poisoned"), "{}", last_error());
        let mut stats = batchcorder::cache::BcStats::default();
        assert_eq!(bc_cache_stats(cache, &mut stats), BC_INTERNAL);
        let code = (reader.get_next.unwrap())(&mut reader, &mut array);
        assert_eq!(code, libc::EIO);
        let message = CStr::from_ptr((reader.get_last_error.unwrap())(&mut reader));
        assert!(message.to_string_lossy().contains("poisoned"));
        (reader.release.unwrap())(&mut reader);
        // Closing still releases what the poisoned cache holds.
        assert_eq!(bc_cache_close(cache), BC_OK);
        bc_cache_free(cache);
    }
}

#[test]
fn a_panic_inside_a_reader_callback_is_eio() {
    std::panic::set_hook(Box::new(|_| {}));
    let cache = panicking_cache();
    let mut reader = reader_past_the_first_batch(cache);
    let mut array = ArrowArray::RELEASED;
    // SAFETY: `cache` is live until freed at the end, `reader` live until released, and
    // every other pointer a local.
    unsafe {
        let code = (reader.get_next.unwrap())(&mut reader, &mut array);
        assert_eq!(code, libc::EIO, "the panic, caught");
        let message = CStr::from_ptr((reader.get_last_error.unwrap())(&mut reader));
        assert!(message.to_string_lossy().contains("panic"), "{message:?}");
        assert_eq!(bc_cache_ingest_all(cache, ptr::null_mut()), BC_INTERNAL);
        (reader.release.unwrap())(&mut reader);
        bc_cache_free(cache);
    }
}
