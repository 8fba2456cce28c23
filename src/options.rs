//! `BcOptions`: the C builder for [`CacheOptions`].

use std::ffi::c_char;

use crate::boundary::{arg, arg_mut, guard, guard_value, utf8_arg, BcStatus};
use batchcorder_core::options::{check_max_readers, check_prefetch, check_segment_bytes};
use batchcorder_core::Error;
use batchcorder_core::{CacheOptions, Compression, DiskOptions, OpenOptions, Verify, WritePolicy};

/// When the disk tier writes a batch: one of the `BC_WRITE_*` values.
pub type BcWritePolicy = u32;
/// Write every batch to disk as it is ingested (the default).
pub const BC_WRITE_ON_INSERTION: BcWritePolicy = 0;
/// Write a batch only when it leaves the memory budget.
pub const BC_WRITE_ON_EVICTION: BcWritePolicy = 1;

/// IPC buffer compression on disk: one of the `BC_COMPRESSION_*` values.
pub type BcCompression = u32;
/// Uncompressed, read back zero-copy (the default).
pub const BC_COMPRESSION_NONE: BcCompression = 0;
/// LZ4 frame compression; reads decompress into new buffers.
pub const BC_COMPRESSION_LZ4: BcCompression = 1;
/// Zstandard compression; reads decompress into new buffers.
pub const BC_COMPRESSION_ZSTD: BcCompression = 2;

/// Options for `bc_cache_new` and `bc_cache_open`, built with the `bc_options_set_*`
/// calls.
///
/// Not thread-safe: build it on one thread. `bc_cache_new` and `bc_cache_open` copy it,
/// so it may be freed as soon as they return.
pub struct BcOptions {
    options: CacheOptions,
    /// The disk tier's options, which may be set before `bc_options_set_disk` enables it.
    disk: DiskOptions,
    disk_enabled: bool,
}

impl BcOptions {
    /// The options `bc_cache_new` uses.
    pub(crate) fn cache_options(&self) -> CacheOptions {
        CacheOptions {
            disk: self.disk_enabled.then(|| self.disk.clone()),
            ..self.options.clone()
        }
    }

    /// The options `bc_cache_open` uses. An opened cache is finished and reads its own
    /// files, so of the options that change a cache only `max_readers` applies: another
    /// one set is refused, naming it, rather than ignored.
    pub(crate) fn open_options(&self, verify: Verify) -> batchcorder_core::Result<OpenOptions> {
        let CacheOptions {
            memory_capacity,
            max_readers,
            disk: _,
            prefetch,
            persist,
        } = &self.options;
        let refused = [
            (memory_capacity.is_some(), "bc_options_set_memory_capacity"),
            (self.disk_enabled, "bc_options_set_disk"),
            (prefetch.is_some(), "bc_options_set_prefetch"),
            (persist.is_some(), "bc_options_set_persist"),
        ];
        if let Some((_, setter)) = refused.iter().find(|(set, _)| *set) {
            return Err(Error::InvalidArgument(format!(
                "argument `opts` sets an option bc_cache_open cannot use ({setter}): an \
                 opened cache is finished and reads its own files; set only max_readers"
            )));
        }
        Ok(OpenOptions {
            verify,
            max_readers: *max_readers,
        })
    }
}

/// A new options builder with every option at its default (memory only, no reader cap).
/// The caller frees it with `bc_options_free`. Returns NULL only if allocation failed.
#[no_mangle]
pub extern "C" fn bc_options_new() -> *mut BcOptions {
    guard_value(std::ptr::null_mut(), || {
        Box::into_raw(Box::new(BcOptions {
            options: CacheOptions::default(),
            disk: DiskOptions::new("", 0),
            disk_enabled: false,
        }))
    })
}

/// Change a live builder (`BcOptions`, `BcReaderOptions`) behind the panic guard: NULL
/// `opts` fails naming the argument, and `change` either succeeds or leaves the builder
/// as it was.
///
/// # Safety
/// `opts` is NULL or a live builder from its `_new` call that no other call uses
/// meanwhile (builders are not thread-safe: built on one thread).
pub(crate) unsafe fn update<T>(
    opts: *mut T,
    change: impl FnOnce(&mut T) -> batchcorder_core::Result<()>,
) -> BcStatus {
    guard(
        || {},
        || {
            // SAFETY: NULL or a live builder (a `Box<BcOptions>`'s pointer, so aligned and
            // initialized) that nothing else uses during this call, as the caller promised;
            // `change` gets the only borrow and cannot reach the builder another way.
            let opts = unsafe { arg_mut(opts, "opts") }?;
            change(opts)
        },
    )
}

/// Check every option and the rules between them (memory_capacity 0 needs the disk
/// tier) as `bc_cache_new` will, without creating anything: `BC_INVALID_ARGUMENT` names
/// the option that is wrong. For bindings whose source is consumed once handed over, so
/// that a refused option leaves it unread.
///
/// # Safety
/// `opts` is NULL or a live builder.
#[no_mangle]
pub unsafe extern "C" fn bc_options_validate(opts: *const BcOptions) -> BcStatus {
    guard(
        || {},
        || {
            // SAFETY: NULL or a live builder, as the caller promised; builders are not
            // thread-safe (header), so no other call writes it while it is borrowed here.
            let opts = unsafe { arg(opts, "opts") }?;
            opts.cache_options().validate()
        },
    )
}

/// Free an options builder. NULL is ignored.
///
/// # Safety
/// `opts` is NULL or came from `bc_options_new` and was not freed before.
#[no_mangle]
pub unsafe extern "C" fn bc_options_free(opts: *mut BcOptions) {
    guard_value((), || {
        if !opts.is_null() {
            // SAFETY: not NULL (checked just above); the caller promised it came from
            // `bc_options_new`, a `Box::into_raw` of a `BcOptions`, and was not freed
            // before, so it is ours to drop; no other call uses it (not thread-safe).
            drop(unsafe { Box::from_raw(opts) });
        }
    })
}

/// Budget in bytes for batches kept in memory. Unset, it is three quarters of physical
/// memory. Memory only: going over it fails the ingest with `BC_CAPACITY`, and 0 is
/// refused by `bc_cache_new`. With the disk tier it bounds the hot layer, and 0 reads every
/// batch from disk.
///
/// # Safety
/// `opts` is NULL or a live builder.
#[no_mangle]
pub unsafe extern "C" fn bc_options_set_memory_capacity(
    opts: *mut BcOptions,
    bytes: u64,
) -> BcStatus {
    let change = |opts: &mut BcOptions| {
        opts.options.memory_capacity = Some(bytes);
        Ok(())
    };
    // SAFETY: NULL or a live builder, as the caller promised, used by no other call
    // meanwhile (builders are not thread-safe).
    unsafe { update(opts, change) }
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
    let change = |opts: &mut BcOptions| {
        check_max_readers(max_readers)?;
        opts.options.max_readers = Some(max_readers);
        Ok(())
    };
    // SAFETY: NULL or a live builder, as the caller promised, used by no other call
    // meanwhile (builders are not thread-safe).
    unsafe { update(opts, change) }
}

/// Enable the disk tier: batches are written as Arrow IPC into a fresh private
/// subdirectory of `dir_utf8` (created if missing), at most `capacity_bytes` in all.
/// `bc_cache_new` creates the directory and fails with `BC_IO` if it cannot; closing or
/// freeing the cache deletes it.
///
/// # Safety
/// `opts` is NULL or a live builder; `dir_utf8` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bc_options_set_disk(
    opts: *mut BcOptions,
    dir_utf8: *const c_char,
    capacity_bytes: u64,
) -> BcStatus {
    let change = |opts: &mut BcOptions| {
        // SAFETY: NULL or a NUL-terminated string, as the caller promised; only read
        // during this call (copied into the builder's own path before it returns).
        let dir = unsafe { utf8_arg(dir_utf8, "dir_utf8") }?;
        let disk = DiskOptions {
            path: dir.into(),
            capacity: capacity_bytes,
            ..opts.disk.clone()
        };
        disk.validate()?;
        opts.disk = disk;
        opts.disk_enabled = true;
        Ok(())
    };
    // SAFETY: NULL or a live builder, as the caller promised, used by no other call
    // meanwhile (builders are not thread-safe).
    unsafe { update(opts, change) }
}

/// When the disk tier writes a batch: `BC_WRITE_ON_INSERTION` (every batch, as it is
/// ingested; the default) or `BC_WRITE_ON_EVICTION` (only when it leaves the memory
/// budget, so a stream that fits in memory never touches disk). Accepted, and without
/// effect, in memory-only mode.
///
/// # Safety
/// `opts` is NULL or a live builder.
#[no_mangle]
pub unsafe extern "C" fn bc_options_set_write_policy(
    opts: *mut BcOptions,
    policy: BcWritePolicy,
) -> BcStatus {
    let change = |opts: &mut BcOptions| {
        let policy = match policy {
            BC_WRITE_ON_INSERTION => WritePolicy::OnInsertion,
            BC_WRITE_ON_EVICTION => WritePolicy::OnEviction,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "write_policy {other} is not BC_WRITE_ON_INSERTION or BC_WRITE_ON_EVICTION"
                )))
            }
        };
        opts.disk.write_policy = policy;
        Ok(())
    };
    // SAFETY: NULL or a live builder, as the caller promised, used by no other call
    // meanwhile (builders are not thread-safe).
    unsafe { update(opts, change) }
}

/// IPC buffer compression for the disk tier: `BC_COMPRESSION_NONE` (the default; reads
/// are zero-copy), `BC_COMPRESSION_LZ4` or `BC_COMPRESSION_ZSTD` (smaller files; reads
/// decompress, so they copy).
///
/// # Safety
/// `opts` is NULL or a live builder.
#[no_mangle]
pub unsafe extern "C" fn bc_options_set_compression(
    opts: *mut BcOptions,
    compression: BcCompression,
) -> BcStatus {
    let change = |opts: &mut BcOptions| {
        opts.disk.compression = match compression {
            BC_COMPRESSION_NONE => Compression::None,
            BC_COMPRESSION_LZ4 => Compression::Lz4,
            BC_COMPRESSION_ZSTD => Compression::Zstd,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "compression {other} is not BC_COMPRESSION_NONE, _LZ4 or _ZSTD"
                )))
            }
        };
        Ok(())
    };
    // SAFETY: NULL or a live builder, as the caller promised, used by no other call
    // meanwhile (builders are not thread-safe).
    unsafe { update(opts, change) }
}

/// Save the stream to the directory `path_utf8` as it is ingested, as `bc_cache_persist`
/// would at the end: the save appears there, whole, once the upstream reports its end
/// (`bc_cache_share` then names it). An upstream failure or `bc_cache_close` before that
/// leaves nothing at the path. The path must not exist yet (an empty directory is taken)
/// and its parent must: `bc_cache_new` checks that before it takes the upstream. A
/// failed write stops ingestion at that batch with the error, as a disk-tier failure does.
///
/// # Safety
/// `opts` is NULL or a live builder; `path_utf8` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn bc_options_set_persist(
    opts: *mut BcOptions,
    path_utf8: *const c_char,
) -> BcStatus {
    let change = |opts: &mut BcOptions| {
        // SAFETY: NULL or a NUL-terminated string, as the caller promised; only read
        // during this call (copied into the builder's own path before it returns).
        let path = unsafe { utf8_arg(path_utf8, "path_utf8") }?;
        if path.is_empty() {
            return Err(Error::InvalidArgument(
                "argument `path_utf8` is empty; pass the directory to save to".into(),
            ));
        }
        opts.options.persist = Some(path.into());
        Ok(())
    };
    // SAFETY: NULL or a live builder, as the caller promised, used by no other call
    // meanwhile (builders are not thread-safe).
    unsafe { update(opts, change) }
}

/// Read ahead: a background thread (named `batchcorder-prefetch`) ingests up to
/// `batches` (at least 1) ahead of the fastest reader, while the next batch fits the memory
/// budget (the disk budget with the disk tier), so that a slow upstream and a slow
/// consumer overlap. That thread then calls the upstream's `get_next`, holding no lock a
/// cached read needs (a reader that outruns it calls `get_next` itself, one call at a
/// time); a pyarrow upstream over a Python generator takes the GIL there. It ends at the
/// end of the stream, an upstream error (kept at its batch), `bc_cache_close`, or when
/// the cache and all its readers are gone.
///
/// # Safety
/// `opts` is NULL or a live builder.
#[no_mangle]
pub unsafe extern "C" fn bc_options_set_prefetch(opts: *mut BcOptions, batches: u64) -> BcStatus {
    let change = |opts: &mut BcOptions| {
        check_prefetch(batches)?;
        opts.options.prefetch = Some(batches);
        Ok(())
    };
    // SAFETY: NULL or a live builder, as the caller promised, used by no other call
    // meanwhile (builders are not thread-safe).
    unsafe { update(opts, change) }
}

/// Target size in bytes of one disk segment file (at least 4096; default 64 MiB). A
/// batch larger than this gets a segment of its own. With `max_readers`, a segment is
/// deleted once every reader has passed all of its batches, so smaller segments give
/// disk space back sooner.
///
/// # Safety
/// `opts` is NULL or a live builder.
#[no_mangle]
pub unsafe extern "C" fn bc_options_set_segment_bytes(
    opts: *mut BcOptions,
    bytes: u64,
) -> BcStatus {
    let change = |opts: &mut BcOptions| {
        check_segment_bytes(bytes)?;
        opts.disk.segment_bytes = bytes;
        Ok(())
    };
    // SAFETY: NULL or a live builder, as the caller promised, used by no other call
    // meanwhile (builders are not thread-safe).
    unsafe { update(opts, change) }
}
