//! `bc_cache_persist` and `bc_cache_open`: a whole stream saved to a directory, and
//! opened read-only from any process.

use std::ffi::{c_char, CString};
use std::path::Path;

use crate::boundary::{guard, guard_value, out_arg, utf8_arg, write_optional_out, BcStatus};
use crate::cache::{on_cache, BcCache};
use crate::options::BcOptions;
use arrow_schema::ffi::FFI_ArrowSchema;
use batchcorder_core::{Error, OpenOptions, Persisted, StreamCache, Verify};

/// When `bc_cache_open` checks a batch against its checksum: one of the `BC_VERIFY_*`
/// values.
pub type BcVerify = u32;
/// Only if the data file was modified after its save (its modification time differs
/// from the manifest's): an edit or a damaging copy is caught, an untouched save is read
/// at full speed. The default.
pub const BC_VERIFY_IF_MODIFIED: BcVerify = 0;
/// Every batch, on its first read in the process.
pub const BC_VERIFY_ALWAYS: BcVerify = 1;
/// Never; batches are only validated (no crash and no invalid batch, but an edited value
/// is not caught).
pub const BC_VERIFY_NEVER: BcVerify = 2;

/// What a persisted cache's manifest records, as `bc_cache_persist` and `bc_cache_open`
/// report it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BcPersisted {
    /// The save's id: 32 lowercase hex digits and a NUL. New for every save; a reference
    /// to a persisted cache (a pickled one, say) names it, so that a cache saved again to
    /// the same path is not taken for the old one.
    pub id: [c_char; 33],
    /// Batches in the cache.
    pub batches: u64,
    /// Rows in those batches.
    pub rows: u64,
}

impl From<&Persisted> for BcPersisted {
    fn from(saved: &Persisted) -> Self {
        let mut id = [0 as c_char; 33];
        for (slot, byte) in id.iter_mut().zip(saved.id.bytes().take(32)) {
            *slot = byte as c_char;
        }
        Self {
            id,
            batches: saved.batches,
            rows: saved.rows,
        }
    }
}

/// Read the rest of the upstream and save the whole stream to `path_utf8`, a directory
/// that must not exist yet (an empty one is replaced), whose parent exists.
///
/// The save is a standard Arrow IPC file (`data.arrow`) with a manifest and checksums,
/// written in a staging folder beside the target, synced, and renamed into place: a crash
/// leaves nothing at `path_utf8`. `BC_INVALID_ARGUMENT` if the path is taken, if another
/// save took it first, if `max_readers` already evicted batches, or if a batch replaces a
/// dictionary (the IPC file format cannot hold that); `BC_IO` for the file system's
/// errors. `out` may be NULL; on `BC_OK` it receives the manifest's record. The cache
/// stays usable either way. No lock is held while the upstream runs.
///
/// # Safety
/// Each pointer is NULL or valid: `path_utf8` a NUL-terminated string, `out` writable.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_persist(
    cache: *mut BcCache,
    path_utf8: *const c_char,
    out: *mut BcPersisted,
) -> BcStatus {
    let body = |cache: &BcCache| -> batchcorder_core::Result<()> {
        // SAFETY: NULL or a NUL-terminated string, as the caller promised.
        let path = unsafe { utf8_arg(path_utf8, "path_utf8") }?;
        let saved = cache.persist(Path::new(path))?;
        // SAFETY: NULL or aligned and writable, as the caller promised.
        unsafe { write_optional_out(out, (&saved).into()) };
        Ok(())
    };
    // SAFETY: NULL or a live handle, as this export's caller promised.
    unsafe { on_cache(cache, body) }
}

/// Open the cache persisted at `path_utf8`, read-only, as a finished cache: readers replay
/// it through memory maps of its data file, so processes that open it share the page
/// cache. Any number of processes may open it at once.
///
/// The manifest, the checksums file, the data file's size, schema and footer are checked
/// first: a damaged, truncated, edited or foreign directory is `BC_CORRUPT` naming what is
/// wrong (a schema C cannot hold, such as a name with a NUL byte, too), a newer format
/// version `BC_INVALID_ARGUMENT`, a missing path `BC_IO` (ENOENT).
/// `verify` (`BC_VERIFY_*`) says when a batch is checked against its checksum on its
/// first read in this process (`BC_CORRUPT` on a mismatch). Checked or not, every batch is
/// validated in full on that first read (offsets, lengths, UTF-8, dictionary keys), so a
/// damaged file is `BC_CORRUPT` at that batch, never a crash or an invalid batch. The
/// UTF-8 pass is skipped (except with `BC_VERIFY_ALWAYS`) when the save's
/// `validated.json` records that a process validated the data file as it is now: its
/// change time, which every write moves, unchanged.
///
/// `opts` may be NULL: no reader cap. Otherwise it is read, not kept, and of its options
/// only `bc_options_set_max_readers` applies; the disk tier's settings have no effect,
/// as in memory-only mode, and any other option set is `BC_INVALID_ARGUMENT` naming its
/// setter. `out_info` may be NULL. On `BC_OK` the caller frees `*out` with
/// `bc_cache_free`; closing or freeing it deletes nothing.
///
/// # Safety
/// Each pointer is NULL or valid: `path_utf8` a NUL-terminated string, `opts` a live
/// builder, `out` and `out_info` writable.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_open(
    path_utf8: *const c_char,
    verify: BcVerify,
    opts: *const BcOptions,
    out_info: *mut BcPersisted,
    out: *mut *mut BcCache,
) -> BcStatus {
    guard(
        || {},
        || {
            // SAFETY: NULL or a NUL-terminated string, as the caller promised.
            let path = unsafe { utf8_arg(path_utf8, "path_utf8") }?;
            let out = out_arg(out, "out")?;
            let verify = match verify {
                BC_VERIFY_IF_MODIFIED => Verify::IfModified,
                BC_VERIFY_ALWAYS => Verify::Always,
                BC_VERIFY_NEVER => Verify::Never,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "argument `verify` is {other}; pass BC_VERIFY_IF_MODIFIED, \
                         BC_VERIFY_ALWAYS or BC_VERIFY_NEVER"
                    )))
                }
            };
            // SAFETY: NULL or a live builder, as the caller promised.
            let options = match unsafe { opts.as_ref() } {
                Some(opts) => opts.open_options(verify)?,
                None => OpenOptions {
                    verify,
                    ..OpenOptions::default()
                },
            };
            let (cache, opened): (StreamCache, Persisted) =
                StreamCache::open(Path::new(path), &options)?;
            exportable(&cache, path)?;
            // SAFETY: NULL or aligned and writable, as the caller promised.
            unsafe { write_optional_out(out_info, (&opened).into()) };
            // SAFETY: not NULL (checked), so writable.
            unsafe { out.write(BcCache::into_raw(cache)) };
            Ok(())
        },
    )
}

/// Refuse a save whose schema C cannot be handed (a name holding a NUL byte), which
/// every schema export of the cache would fail on; none written through C has one.
fn exportable(cache: &StreamCache, path: &str) -> batchcorder_core::Result<()> {
    match FFI_ArrowSchema::try_from(cache.schema().as_ref()) {
        Ok(_) => Ok(()),
        Err(err) => Err(Error::Corrupt(format!(
            "the schema saved in {path} cannot pass through the Arrow C Data Interface \
             ({err}): the save was edited, or written by a Rust program with names C \
             cannot hold; persist the stream again"
        ))),
    }
}

/// A persisted copy of `cache` that another process can open with `bc_cache_open`: the
/// directory it was opened from or last persisted to; for a disk-tier cache never
/// persisted, a save made once (reading the rest of the upstream) inside its private
/// folder, deleted when the cache is closed. `BC_INVALID_ARGUMENT` for a memory-only cache
/// never persisted. `out_path` receives the directory as a NUL-terminated UTF-8 string
/// the caller frees with `bc_string_free`; `out_info` may be NULL.
///
/// # Safety
/// Each pointer is NULL or valid; `out_path` and `out_info` are writable.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_share(
    cache: *mut BcCache,
    out_path: *mut *mut c_char,
    out_info: *mut BcPersisted,
) -> BcStatus {
    let body = |cache: &BcCache| -> batchcorder_core::Result<()> {
        let out_path = out_arg(out_path, "out_path")?;
        let shared = cache.share()?;
        let path = shared.path.to_str().ok_or_else(|| {
            Error::InvalidArgument(format!(
                "the persisted copy's path {} is not UTF-8",
                shared.path.display()
            ))
        })?;
        let path = CString::new(path)
            .map_err(|_| Error::InvalidArgument("the persisted copy's path holds a NUL".into()))?;
        // SAFETY: NULL or aligned and writable, as the caller promised.
        unsafe { write_optional_out(out_info, (&shared).into()) };
        // SAFETY: not NULL (checked), so writable.
        unsafe { out_path.write(path.into_raw()) };
        Ok(())
    };
    // SAFETY: NULL or a live handle, as this export's caller promised.
    unsafe { on_cache(cache, body) }
}

/// Free a string the library handed out (`bc_cache_share`'s path). NULL is ignored.
///
/// # Safety
/// `text` is NULL or came from this library and was not freed before.
#[no_mangle]
pub unsafe extern "C" fn bc_string_free(text: *mut c_char) {
    guard_value((), || {
        if !text.is_null() {
            // SAFETY: a string of ours not freed before, as the caller promised.
            drop(unsafe { CString::from_raw(text) });
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, RecordBatch, RecordBatchIterator};
    use batchcorder_core::CacheOptions;

    use super::*;
    use crate::boundary::bc_last_error;

    /// A save with a field name C cannot hold (a NUL byte, which a Rust program or an
    /// edit can put there) is refused at open as corrupt: it opened, then every schema
    /// export failed as an internal error.
    #[test]
    fn a_save_whose_schema_c_cannot_hold_is_refused_at_open() {
        let batch =
            RecordBatch::try_from_iter([("a\0b", Arc::new(Int64Array::from(vec![1])) as ArrayRef)])
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("saved");
        let upstream = RecordBatchIterator::new([Ok(batch.clone())], batch.schema());
        let cache = StreamCache::new(Box::new(upstream), CacheOptions::default()).unwrap();
        cache.persist(&path).unwrap();
        let path = CString::new(path.to_str().unwrap()).unwrap();
        let mut opened = std::ptr::null_mut();
        // SAFETY: a NUL-terminated path, NULL options and info, a writable out.
        let status = unsafe {
            bc_cache_open(
                path.as_ptr(),
                BC_VERIFY_ALWAYS,
                std::ptr::null(),
                std::ptr::null_mut(),
                &mut opened,
            )
        };
        // SAFETY: the message of this thread's last call.
        let message = unsafe { std::ffi::CStr::from_ptr(bc_last_error()) }.to_string_lossy();
        assert_eq!(status, BcStatus::BC_CORRUPT, "{message}");
        assert!(opened.is_null());
        assert!(
            message.contains("Arrow C Data Interface") && message.contains("Null byte"),
            "{message}"
        );
    }
}
