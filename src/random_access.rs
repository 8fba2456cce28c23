//! `bc_cache_batch` and `bc_cache_take`: a batch by its index, rows by theirs, without a
//! reader.

use std::mem::MaybeUninit;
use std::ptr;

use arrow_array::{Array, StructArray};
use arrow_data::ffi::FFI_ArrowArray;

use crate::abi::ArrowArray;
use crate::boundary::{non_null, out_arg, BcStatus};
use crate::cache::{on_cache, BcCache};
use crate::derived::export_cached;
use batchcorder_core::{Error, Result};

/// Write batch `index` of the stream (0 is the first) into `*out`, as a struct array of
/// the cache's schema: `bc_cache_schema` gives that schema, once for every batch.
///
/// The upstream is pulled up to that batch and no further. This is no reader:
/// `max_readers` does not count it and it holds back no eviction, so a batch eviction
/// already dropped is `BC_EVICTED`. An index past the end is `BC_INVALID_ARGUMENT` with
/// `bc_last_error_kind()` `BC_ERROR_KIND_OUT_OF_RANGE` and the batch count in the
/// message; the whole upstream was pulled to learn it. A closed cache is `BC_CLOSED`.
///
/// Ownership: the caller releases `*out`, which stays valid after the cache is closed or
/// freed. `*out` is written only on `BC_OK`.
///
/// # Safety
/// `cache` is NULL or a live handle; `out` is NULL or writable, and is overwritten without
/// release.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_batch(
    cache: *mut BcCache,
    index: u64,
    out: *mut ArrowArray,
) -> BcStatus {
    let body = |cache: &BcCache| -> Result<()> {
        let out = out_arg(out, "out")?;
        let cached = cache.cached_batch(index)?;
        // SAFETY: not NULL (checked by `out_arg` above) and writable, as the caller
        // promised; an `ArrowArray` may hold any bytes before it is written, and
        // `export_cached` writes it only on success.
        let out = unsafe { &mut *out.cast::<MaybeUninit<ArrowArray>>() };
        export_cached(cached, out).map_err(|err| Error::from_upstream(&err))
    };
    // SAFETY: NULL or a live handle, as this export's caller promised.
    unsafe { on_cache(cache, body) }
}

/// Write the stream's rows at `rows[0..count]` (positions over the whole stream, 0 is
/// the first row of the first batch) into `*out`, in that order, as one struct array of
/// the cache's schema (`bc_cache_schema`): what a `take` over the stream as one table
/// gives. A row may come more than once; `count` may be 0 (`rows` may then be NULL),
/// which gives an array of no rows.
///
/// The cache finds each row's batch through its row index (the rows of every batch,
/// summed), reads only the batches that hold the rows, and pulls the upstream only as far
/// as the largest row. Dictionary columns whose batches hold different dictionaries come
/// out with one dictionary covering them. A row past the end is `BC_INVALID_ARGUMENT` with
/// kind `BC_ERROR_KIND_OUT_OF_RANGE` and the row count in the message; a row in a batch
/// `max_readers` eviction dropped is `BC_EVICTED`; a closed cache `BC_CLOSED`.
///
/// Ownership: `rows` is only read, during the call. The caller releases `*out`, which
/// stays valid after the cache is closed or freed; it is written only on `BC_OK`.
///
/// # Safety
/// `cache` is NULL or a live handle; `rows` is NULL or points to `count` readable
/// `uint64_t`; `out` is NULL or writable, and is overwritten without release.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_take(
    cache: *mut BcCache,
    rows: *const u64,
    count: usize,
    out: *mut ArrowArray,
) -> BcStatus {
    let body = |cache: &BcCache| -> Result<()> {
        let out = out_arg(out, "out")?;
        let rows: &[u64] = if count == 0 {
            &[]
        } else {
            let rows = non_null(rows, "rows")?;
            // SAFETY: not NULL (checked just above), and `count` readable values, as the
            // caller promised, which it does not write during the call.
            unsafe { std::slice::from_raw_parts(rows, count) }
        };
        let taken = cache.take(rows)?;
        let array = FFI_ArrowArray::new(&StructArray::from(taken).into_data());
        // SAFETY: not NULL (checked by `out_arg` above) and writable, as the caller
        // promised, who also agreed that it is overwritten without release.
        unsafe { ptr::write(out, ArrowArray::from_ffi(array)) };
        Ok(())
    };
    // SAFETY: NULL or a live handle, as this export's caller promised.
    unsafe { on_cache(cache, body) }
}
