//! `BcOptions`: the C builder for [`CacheOptions`].

use crate::cache::CacheOptions;
use crate::error::Error;
use crate::ffi::{arg_mut, guard, guard_value, BcStatus};

/// Options for `bc_cache_new`, built with the `bc_options_set_*` calls.
///
/// Not thread-safe: build it on one thread. `bc_cache_new` copies it, so it may be freed
/// as soon as that returns.
pub struct BcOptions {
    pub(crate) options: CacheOptions,
}

/// A new options builder with every option at its default (memory only, no reader cap).
/// The caller frees it with `bc_options_free`. Returns NULL only if allocation failed.
#[no_mangle]
pub extern "C" fn bc_options_new() -> *mut BcOptions {
    guard_value(std::ptr::null_mut(), || {
        Box::into_raw(Box::new(BcOptions { options: CacheOptions::default() }))
    })
}

/// Free an options builder. NULL is ignored.
///
/// # Safety
/// `opts` is NULL or came from `bc_options_new` and was not freed before.
#[no_mangle]
pub unsafe extern "C" fn bc_options_free(opts: *mut BcOptions) {
    guard_value((), || {
        if !opts.is_null() {
            drop(unsafe { Box::from_raw(opts) });
        }
    })
}

/// Budget in bytes for batches kept in memory (at least 1). Unset, it is three quarters
/// of physical memory. Going over it fails the ingest with `BC_CAPACITY`.
///
/// # Safety
/// `opts` is NULL or a live builder.
#[no_mangle]
pub unsafe extern "C" fn bc_options_set_memory_capacity(
    opts: *mut BcOptions,
    bytes: u64,
) -> BcStatus {
    guard(|| {}, || {
        let opts = unsafe { arg_mut(opts, "opts") }?;
        if bytes == 0 {
            return Err(Error::InvalidArgument(
                "memory_capacity must be at least 1 byte".into(),
            ));
        }
        opts.options.memory_capacity = Some(bytes);
        Ok(())
    })
}

/// Cap the readers ever created from the cache at `max_readers` (at least 1). Once all
/// exist, batches that every one of them has passed are evicted, so a stream can be
/// replayed in bounded memory.
///
/// # Safety
/// `opts` is NULL or a live builder.
#[no_mangle]
pub unsafe extern "C" fn bc_options_set_max_readers(
    opts: *mut BcOptions,
    max_readers: u64,
) -> BcStatus {
    guard(|| {}, || {
        let opts = unsafe { arg_mut(opts, "opts") }?;
        if max_readers == 0 {
            return Err(Error::InvalidArgument("max_readers must be at least 1".into()));
        }
        opts.options.max_readers = Some(max_readers);
        Ok(())
    })
}
