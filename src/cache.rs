//! `BcCache`: the C handle to a [`StreamCache`] and the `bc_cache_*` calls on it.

use std::ptr;
use std::sync::Arc;

use arrow_schema::ffi::FFI_ArrowSchema;
use arrow_schema::Schema;

use crate::abi::{ArrowArrayStream, ArrowSchema};
use crate::boundary::{arg, guard, guard_value, out_arg, BcStatus};
use crate::export::export_reader;
use crate::options::BcOptions;
use crate::upstream::CStreamUpstream;
use batchcorder_cdata::schema_copy::SchemaCopy;
use batchcorder_core::{CacheOptions, Stats, StreamCache, Validated};
use batchcorder_core::{Cast, ReaderOptions};
use batchcorder_core::{Error, Result};

/// A cache over one upstream stream.
///
/// Thread-safe: any `bc_cache_*` call may run on any thread, concurrently with others on
/// the same cache, except `bc_cache_free`, which must be the last call on the handle.
/// Readers it hands out may outlive it: `bc_cache_free` does not invalidate them,
/// `bc_cache_close` makes them fail cleanly.
pub struct BcCache {
    cache: StreamCache,
    /// The schema as the upstream's producer wrote it, which readers hand out; `None`
    /// for a cache built in Rust, whose readers export arrow-rs's schema.
    exact_schema: Option<Arc<SchemaCopy>>,
}

// `on_cache` shares one handle between concurrent calls on any thread.
const _: () = {
    const fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<BcCache>();
};

impl std::ops::Deref for BcCache {
    type Target = StreamCache;

    fn deref(&self) -> &StreamCache {
        &self.cache
    }
}

impl BcCache {
    /// Hand a cache built in Rust (over any `RecordBatchReader`) to C code, which frees it
    /// with `bc_cache_free`.
    pub fn into_raw(cache: StreamCache) -> *mut BcCache {
        Box::into_raw(Box::new(BcCache {
            cache,
            exact_schema: None,
        }))
    }
}

/// Run a call on `cache`, poisoning it if the call panics.
///
/// # Safety
/// `cache` must be NULL or a live handle from `bc_cache_new` or `bc_cache_open`, not freed
/// before this returns: what every `bc_cache_*` export's caller promises of its `cache`.
pub(crate) unsafe fn on_cache(
    cache: *const BcCache,
    body: impl FnOnce(&BcCache) -> Result<()>,
) -> BcStatus {
    // SAFETY: NULL or a live handle, as the caller promised: a `Box<BcCache>`'s pointer,
    // so aligned and initialized, not freed before this returns, and only shared while
    // it runs (`BcCache` is `Sync`; nothing takes `&mut` to it).
    let handle = match unsafe { arg(cache, "cache") } {
        Ok(handle) => handle,
        Err(err) => return crate::boundary::fail(&err),
    };
    guard(|| handle.cache.poison(), || body(handle))
}

/// Create a cache over `upstream`, reading nothing yet.
///
/// Ownership: takes `upstream` by move. On `BC_OK`, `upstream->release` is NULL and the
/// cache owns the stream; on failure the caller still owns it, untouched. `opts` may be
/// NULL (memory only, defaults) and is copied, not kept. The caller frees `*out` with
/// `bc_cache_free`.
///
/// The cache keeps the columns of each array the upstream hands over, moved out of their
/// root array as the C Data Interface allows ("Moving child arrays"), and releases the
/// root at once. So the upstream must let a moved child outlive its parent, as the
/// interface requires (DuckDB's exporter did not before late 2023).
///
/// Each array is checked against the stream's schema before it is kept (buffer and child
/// counts, dictionaries, lengths and offsets): a malformed one fails with `BC_UPSTREAM`,
/// a message saying what is wrong, and every batch before it stays readable.
///
/// # Safety
/// Each pointer is NULL or valid: `upstream` a live stream, `opts` a live builder,
/// `out` writable.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_new(
    upstream: *mut ArrowArrayStream,
    opts: *const BcOptions,
    out: *mut *mut BcCache,
) -> BcStatus {
    guard(
        || {},
        || {
            // SAFETY: NULL or a live stream, as the caller promised (header contract);
            // nothing else uses it during this call, and `stream` is not used after the
            // check below, before `schema_of` and `take` go through `upstream` again.
            let stream = unsafe { arg(upstream, "upstream") }?;
            let out = out_arg(out, "out")?;
            if stream.release.is_none() {
                return Err(Error::InvalidArgument(
                    "argument `upstream` is a released stream; pass a live ArrowArrayStream".into(),
                ));
            }
            // SAFETY: NULL or a live builder from `bc_options_new`, as the caller promised;
            // builders are not thread-safe (header), so no other call changes it meanwhile.
            let options = match unsafe { opts.as_ref() } {
                Some(opts) => opts.cache_options(),
                None => CacheOptions::default(),
            };
            let prepared = StreamCache::prepare(options)?;
            // SAFETY: not NULL (checked by `arg` above), live as the caller promised, and
            // unreleased (its `release` was checked above).
            let (schema, exact) = unsafe { CStreamUpstream::schema_of(upstream) }?;
            // Nothing below fails, so the caller keeps the stream on every error path.
            // SAFETY: the same live, unreleased stream that `schema` was just read from.
            let source = unsafe { CStreamUpstream::take(upstream, schema) };
            let cache = prepared.start_source(Box::new(source));
            let handle = Box::into_raw(Box::new(BcCache {
                cache,
                exact_schema: Some(Arc::new(exact)),
            }));
            // SAFETY: not NULL (checked by `out_arg` above) and writable, as the caller
            // promised; a `*mut BcCache` needs no release, so overwriting it is right.
            unsafe { out.write(handle) };
            Ok(())
        },
    )
}

/// Write a new independent reader into `*out` as an `ArrowArrayStream`.
///
/// `from_start=false` starts at the ingestion frontier. `requested_schema` may be NULL;
/// otherwise each batch is cast to it (same field count and names, castable types), and
/// an impossible request is `BC_INVALID_ARGUMENT` naming the field. A value that does not
/// convert fails the read of its batch (see `bc_reader_cast_with` for null instead). The schema is only
/// read, never released. The caller releases `*out`; it may outlive the cache handle.
///
/// # Safety
/// Each pointer is NULL or valid; `out` is writable and is overwritten without release.
/// `requested_schema` is only read, during the call: its strings, children and
/// dictionary must be valid then, and its `release` may be NULL.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_reader(
    cache: *mut BcCache,
    from_start: bool,
    requested_schema: *const ArrowSchema,
    out: *mut ArrowArrayStream,
) -> BcStatus {
    let options = || {
        Ok(ReaderOptions {
            from_start,
            ..ReaderOptions::default()
        })
    };
    // SAFETY: the same arguments, under the same contract.
    unsafe { new_reader(cache, options, requested_schema, out) }
}

/// `bc_cache_reader` and `bc_cache_reader_with`: a reader as `options` say (read inside
/// the panic guard), cast to `requested_schema` if it is not NULL, written into `*out`.
///
/// # Safety
/// As `bc_cache_reader`'s.
pub(crate) unsafe fn new_reader(
    cache: *mut BcCache,
    options: impl FnOnce() -> Result<ReaderOptions>,
    requested_schema: *const ArrowSchema,
    out: *mut ArrowArrayStream,
) -> BcStatus {
    let body = |cache: &BcCache| -> Result<()> {
        let options = options()?;
        let out = out_arg(out, "out")?;
        // SAFETY: NULL or a valid schema, as the caller promised, only read during this
        // call and not written meanwhile (a `const` argument the caller keeps).
        let (target, exact) = match unsafe { requested_schema.as_ref() } {
            None => (None, cache.exact_schema.clone()),
            Some(schema) => {
                // SAFETY: the caller's `requested_schema`, valid as it promised.
                let (target, exact) = unsafe { requested(schema) }?;
                (Some(Cast::to(Arc::new(target))), Some(Arc::new(exact)))
            }
        };
        let reader = cache.reader_with(ReaderOptions {
            cast: target,
            ..options
        })?;
        // SAFETY: not NULL (checked by `out_arg` above) and writable, as the caller
        // promised, who also agreed that it is overwritten without release.
        unsafe { ptr::write(out, export_reader(reader, exact)) };
        Ok(())
    };
    // SAFETY: NULL or a live handle, as this export's caller promised.
    unsafe { on_cache(cache, body) }
}

/// Check, without creating a reader, that `requested_schema` is one that
/// `bc_cache_reader` can cast this cache's batches to. The schema is only read.
///
/// # Safety
/// Each pointer is NULL or valid. `requested_schema` is only read, during the call: its
/// strings, children and dictionary must be valid then, and its `release` may be NULL.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_check_schema(
    cache: *const BcCache,
    requested_schema: *const ArrowSchema,
) -> BcStatus {
    let body = |cache: &BcCache| -> Result<()> {
        // SAFETY: NULL or a valid schema, as the caller promised, only read during this
        // call and not written meanwhile.
        let schema = unsafe { arg(requested_schema, "requested_schema") }?;
        // SAFETY: the caller's `requested_schema`, valid as it promised.
        let (target, _) = unsafe { requested(schema) }?;
        batchcorder_core::validate_cast(&cache.schema(), &target)
    };
    // SAFETY: NULL or a live handle, as this export's caller promised.
    unsafe { on_cache(cache, body) }
}

/// A requested schema as arrow-rs casts to it, and exactly as the caller wrote it, which
/// the reader hands out.
///
/// # Safety
/// `schema` is one an export's caller promised is valid: its strings, children and
/// dictionary valid for reads during the call; its `release` may be NULL.
pub(crate) unsafe fn requested(schema: &ArrowSchema) -> Result<(Schema, SchemaCopy)> {
    let invalid = |problem: String| {
        Error::InvalidArgument(format!(
            "argument `requested_schema` is not a valid schema: {problem}"
        ))
    };
    // SAFETY: every caller passes a schema its own caller promised is valid for reads
    // during the call (strings NUL-terminated; `children` holding `n_children` pointers
    // and `dictionary`, each NULL or a valid schema likewise). `SchemaCopy::of` reads
    // those members and never `release`, so a read-only schema whose `release` is NULL
    // (as tests/c passes) is read soundly too.
    let exact = unsafe { SchemaCopy::of(schema) }.map_err(invalid)?;
    let target = exact.to_arrow().map_err(|err| invalid(err.to_string()))?;
    Ok((target, exact))
}

/// Write the stream's schema into `*out`; the caller releases it.
///
/// # Safety
/// Each pointer is NULL or valid; `out` is writable and is overwritten without release.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_schema(cache: *const BcCache, out: *mut ArrowSchema) -> BcStatus {
    let body = |cache: &BcCache| -> Result<()> {
        let out = out_arg(out, "out")?;
        let schema = match &cache.exact_schema {
            Some(exact) => exact.export(),
            None => FFI_ArrowSchema::try_from(cache.schema().as_ref())
                .map(ArrowSchema::from_ffi)
                .map_err(|err| Error::Internal(format!("cannot export the schema: {err}")))?,
        };
        // SAFETY: not NULL (checked by `out_arg` above) and writable, as the caller
        // promised, who also agreed that it is overwritten without release.
        unsafe { ptr::write(out, schema) };
        Ok(())
    };
    // SAFETY: NULL or a live handle, as this export's caller promised.
    unsafe { on_cache(cache, body) }
}

/// Pull the whole upstream into the cache. Idempotent. `out_batches` may be NULL;
/// otherwise it receives the total batch count.
///
/// # Safety
/// Each pointer is NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_ingest_all(
    cache: *mut BcCache,
    out_batches: *mut u64,
) -> BcStatus {
    let body = |cache: &BcCache| -> Result<()> {
        let total = cache.ingest_all()?;
        if !out_batches.is_null() {
            // SAFETY: not NULL (checked just above) and writable, as the caller promised.
            // Written, never borrowed: it may hold anything before, uninitialized too.
            unsafe { out_batches.write(total) };
        }
        Ok(())
    };
    // SAFETY: NULL or a live handle, as this export's caller promised.
    unsafe { on_cache(cache, body) }
}

/// Pull one more batch from the upstream into the cache. `*out_pulled` (may be NULL)
/// is true if a batch was pulled, false once the upstream is exhausted. For progress
/// reporting; `bc_cache_ingest_all` is the same in a loop.
///
/// # Safety
/// Each pointer is NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_ingest_next(
    cache: *mut BcCache,
    out_pulled: *mut bool,
) -> BcStatus {
    let body = |cache: &BcCache| -> Result<()> {
        let pulled = cache.ingest_next()?;
        if !out_pulled.is_null() {
            // SAFETY: not NULL (checked just above) and writable, as the caller promised.
            // Written, never borrowed: it may hold anything before, even a byte that is
            // not a valid `bool`.
            unsafe { out_pulled.write(pulled) };
        }
        Ok(())
    };
    // SAFETY: NULL or a live handle, as this export's caller promised.
    unsafe { on_cache(cache, body) }
}

/// Batches pulled from the upstream so far (0 for NULL). Never waits on ingestion.
///
/// # Safety
/// `cache` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_ingested_count(cache: *const BcCache) -> u64 {
    guard_value(0, || {
        // SAFETY: NULL or a live handle, as the caller promised (header contract); only
        // shared while borrowed here.
        unsafe { cache.as_ref() }.map_or(0, |c| c.cache.ingested_count())
    })
}

/// True once the upstream reported its end (false for NULL).
///
/// # Safety
/// `cache` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_upstream_exhausted(cache: *const BcCache) -> bool {
    guard_value(false, || {
        // SAFETY: NULL or a live handle, as the caller promised (header contract); only
        // shared while borrowed here.
        unsafe { cache.as_ref() }.is_some_and(|c| c.cache.upstream_exhausted())
    })
}

/// Counters describing a cache, as `bc_cache_stats` writes them.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BcStats {
    /// Batches pulled from the upstream.
    pub batches_ingested: u64,
    /// Rows in those batches.
    pub rows_ingested: u64,
    /// Bytes of batch buffers held in memory, each allocation counted once.
    pub memory_bytes: u64,
    /// Bytes of batch data held on disk.
    pub disk_bytes: u64,
    /// Batches dropped because every reader had passed them (`max_readers`).
    pub batches_evicted: u64,
    /// Disk segments deleted because every reader had passed them.
    pub segments_deleted: u64,
    /// Readers alive now.
    pub readers_live: u64,
    /// Readers created since the cache was made.
    pub readers_created: u64,
    /// Whether the upstream reported its end.
    pub upstream_exhausted: bool,
    /// Nanoseconds spent inside the upstream's `next`.
    pub upstream_wait_ns: u64,
    /// For a cache opened from a save, how its batches are checked on their first read
    /// in this process: one of the `BC_VALIDATION_*` values.
    pub validation: BcValidation,
}

/// How an opened save's batches are checked on their first read: one of the
/// `BC_VALIDATION_*` values.
pub type BcValidation = u32;
/// Not a cache opened from a save.
pub const BC_VALIDATION_NONE: BcValidation = 0;
/// Against their checksums, then validated in full (UTF-8 included).
pub const BC_VALIDATION_CHECKSUMS: BcValidation = 1;
/// Validated in full, UTF-8 included; no checksums.
pub const BC_VALIDATION_FULL: BcValidation = 2;
/// Validated in full but for UTF-8, which the save's `validated.json` vouches for: a
/// process validated the data file as it is now.
pub const BC_VALIDATION_NOTED: BcValidation = 3;

impl From<Stats> for BcStats {
    fn from(stats: Stats) -> Self {
        let Stats {
            batches_ingested,
            rows_ingested,
            memory_bytes,
            disk_bytes,
            batches_evicted,
            segments_deleted,
            readers_live,
            readers_created,
            upstream_exhausted,
            upstream_wait_ns,
            validated,
        } = stats;
        Self {
            batches_ingested,
            rows_ingested,
            memory_bytes,
            disk_bytes,
            batches_evicted,
            segments_deleted,
            readers_live,
            readers_created,
            upstream_exhausted,
            upstream_wait_ns,
            validation: match validated {
                None => BC_VALIDATION_NONE,
                Some(Validated::Checksums) => BC_VALIDATION_CHECKSUMS,
                Some(Validated::Full) => BC_VALIDATION_FULL,
                Some(Validated::Noted) => BC_VALIDATION_NOTED,
            },
        }
    }
}

/// Counters of the cache, written into `*out`.
///
/// # Safety
/// Each pointer is NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_stats(cache: *const BcCache, out: *mut BcStats) -> BcStatus {
    let body = |cache: &BcCache| -> Result<()> {
        let stats = cache.stats()?;
        let out = out_arg(out, "out")?;
        // SAFETY: not NULL (checked by `out_arg` above) and writable, as the caller
        // promised; `BcStats` is plain data, so overwriting it leaks nothing.
        unsafe { out.write(stats.into()) };
        Ok(())
    };
    // SAFETY: NULL or a live handle, as this export's caller promised.
    unsafe { on_cache(cache, body) }
}

/// Drop the cached batches and the upstream, and delete any files. Idempotent, and
/// `BC_OK` on a cache poisoned by an internal error too. Readers then fail with a clear
/// error; arrays they already returned stay valid.
///
/// # Safety
/// `cache` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_close(cache: *mut BcCache) -> BcStatus {
    // SAFETY: NULL or a live handle, as this export's caller promised.
    unsafe { on_cache(cache, |cache| cache.close()) }
}

/// Free the handle. NULL is ignored. Readers already handed out stay valid and keep the
/// storage alive until they are released.
///
/// # Safety
/// `cache` is NULL or came from `bc_cache_new` or `bc_cache_open` and was not freed
/// before; no other call on it runs at the same time or later.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_free(cache: *mut BcCache) {
    guard_value((), || {
        if !cache.is_null() {
            // SAFETY: not NULL (checked just above); the caller promised a handle from
            // `bc_cache_new` or `bc_cache_open`, both `Box::into_raw` of a `BcCache`, not
            // freed before and used by no other call now or later, so it is ours to drop.
            drop(unsafe { Box::from_raw(cache) });
        }
    })
}
