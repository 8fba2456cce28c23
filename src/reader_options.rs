//! `BcReaderOptions`: the C builder for a reader's start, order and shard,
//! `bc_cache_reader_with`, which makes a reader from it, and
//! `bc_cache_check_reader_options`, which checks it without making one.

use crate::abi::{ArrowArrayStream, ArrowSchema};
use crate::boundary::{guard_value, BcStatus};
use crate::cache::{new_reader, on_cache, BcCache};
use crate::options::update;
use batchcorder_core::order::check_window;
use batchcorder_core::{Error, ReadOrder, ReaderOptions, Result, Shard, Shuffle};

/// Options for `bc_cache_reader_with`, built with the `bc_reader_options_set_*` calls:
/// where the reader starts, a seeded shuffle, and a shard of the stream.
///
/// Not thread-safe: build it on one thread. `bc_cache_reader_with` copies it, so it may
/// be freed or reused as soon as that returns.
pub struct BcReaderOptions {
    from_start: bool,
    seed: Option<u64>,
    window: Option<u64>,
    rows: bool,
    shard: Option<Shard>,
}

impl BcReaderOptions {
    /// The reader these options describe, or the rule between them that is broken.
    fn reader_options(&self) -> Result<ReaderOptions> {
        let needs_seed = [
            (
                self.window.is_some(),
                "shuffle_window",
                "bc_reader_options_set_shuffle_window",
            ),
            (
                self.rows,
                "shuffle_rows",
                "bc_reader_options_set_shuffle_rows",
            ),
        ];
        if self.seed.is_none() {
            if let Some((_, name, setter)) = needs_seed.iter().find(|(set, ..)| *set) {
                return Err(Error::InvalidArgument(format!(
                    "argument `opts`: {name} ({setter}) needs a shuffle; pass a seed \
                     (shuffle=seed in Python, bc_reader_options_set_shuffle in C), or leave \
                     {name} unset"
                )));
            }
        }
        let order = ReadOrder {
            shuffle: self.seed.map(|seed| Shuffle {
                seed,
                window: self.window,
                rows: self.rows,
            }),
            shard: self.shard,
        };
        order.validate(self.from_start)?;
        Ok(ReaderOptions {
            from_start: self.from_start,
            order,
            cast: None,
        })
    }
}

/// A new reader options builder: from the start, in the stream's order, the whole
/// stream. The caller frees it with `bc_reader_options_free`. NULL only if allocation
/// failed.
#[no_mangle]
pub extern "C" fn bc_reader_options_new() -> *mut BcReaderOptions {
    guard_value(std::ptr::null_mut(), || {
        Box::into_raw(Box::new(BcReaderOptions {
            from_start: true,
            seed: None,
            window: None,
            rows: false,
            shard: None,
        }))
    })
}

/// Free a reader options builder. NULL is ignored.
///
/// # Safety
/// `opts` is NULL or came from `bc_reader_options_new` and was not freed before.
#[no_mangle]
pub unsafe extern "C" fn bc_reader_options_free(opts: *mut BcReaderOptions) {
    guard_value((), || {
        if !opts.is_null() {
            // SAFETY: not NULL; made by `bc_reader_options_new` (`Box::into_raw`) and not
            // freed before, as the caller promised.
            drop(unsafe { Box::from_raw(opts) });
        }
    })
}

/// Start at batch 0 (`true`, the default) or at the ingestion frontier (`false`, which
/// cannot be shuffled).
///
/// # Safety
/// `opts` is NULL or a live builder.
#[no_mangle]
pub unsafe extern "C" fn bc_reader_options_set_from_start(
    opts: *mut BcReaderOptions,
    from_start: bool,
) -> BcStatus {
    // SAFETY: NULL or a live builder, used by no other call meanwhile.
    unsafe {
        update(opts, |opts: &mut BcReaderOptions| {
            opts.from_start = from_start;
            Ok(())
        })
    }
}

/// Return the batches in a random order seeded by `seed`: the same seed gives the same
/// order in any process, for a given library version (ChaCha8; docs/training.md). Without
/// a window the order is a permutation of the whole stream, which is read to its end
/// before the first batch is returned.
///
/// # Safety
/// `opts` is NULL or a live builder.
#[no_mangle]
pub unsafe extern "C" fn bc_reader_options_set_shuffle(
    opts: *mut BcReaderOptions,
    seed: u64,
) -> BcStatus {
    // SAFETY: NULL or a live builder, used by no other call meanwhile.
    unsafe {
        update(opts, |opts: &mut BcReaderOptions| {
            opts.seed = Some(seed);
            Ok(())
        })
    }
}

/// Shuffle through a window of `window` batches (at least 1) instead of the whole
/// stream, as tf.data's shuffle buffer does: fill `window` positions, return a random
/// one, refill. Works on a live stream and under `max_readers`, where the cache keeps the
/// batches from the oldest one in the window to the frontier. Needs a shuffle seed.
///
/// # Safety
/// `opts` is NULL or a live builder.
#[no_mangle]
pub unsafe extern "C" fn bc_reader_options_set_shuffle_window(
    opts: *mut BcReaderOptions,
    window: u64,
) -> BcStatus {
    // SAFETY: NULL or a live builder, used by no other call meanwhile.
    unsafe {
        update(opts, |opts: &mut BcReaderOptions| {
            check_window(window)
                .map_err(|err| Error::InvalidArgument(format!("argument `window`: {err}")))?;
            opts.window = Some(window);
            Ok(())
        })
    }
}

/// Also permute the rows inside each batch, seeded by the shuffle seed and the batch's
/// stream position (each batch is then a copy). Needs a shuffle seed.
///
/// # Safety
/// `opts` is NULL or a live builder.
#[no_mangle]
pub unsafe extern "C" fn bc_reader_options_set_shuffle_rows(
    opts: *mut BcReaderOptions,
    shuffle_rows: bool,
) -> BcStatus {
    // SAFETY: NULL or a live builder, used by no other call meanwhile.
    unsafe {
        update(opts, |opts: &mut BcReaderOptions| {
            opts.rows = shuffle_rows;
            Ok(())
        })
    }
}

/// Read shard `index` of `count` (`index < count`): the elements `index`, `index +
/// count`, ... of the reader's order (the stream's, or the shuffled one, which is the
/// same in every shard of one seed). The shards' union is the stream, with no batch
/// twice. `count` 0 or `index` out of range is `BC_INVALID_ARGUMENT` naming it.
///
/// # Safety
/// `opts` is NULL or a live builder.
#[no_mangle]
pub unsafe extern "C" fn bc_reader_options_set_shard(
    opts: *mut BcReaderOptions,
    index: u64,
    count: u64,
) -> BcStatus {
    // SAFETY: NULL or a live builder, used by no other call meanwhile.
    unsafe {
        update(opts, |opts: &mut BcReaderOptions| {
            let shard = Shard::new(index, count).map_err(|err| {
                let argument = if count == 0 { "count" } else { "index" };
                Error::InvalidArgument(format!("argument `{argument}`: {err}"))
            })?;
            opts.shard = Some(shard);
            Ok(())
        })
    }
}

/// Write a new reader made as `opts` says into `*out`, as `bc_cache_reader` does
/// (`requested_schema` and ownership alike). `opts` may be NULL: a reader from the start,
/// in order. Options that contradict each other (a shuffle from the frontier, a window or
/// row shuffle without a seed, a window too large for a memory budget that evicts) are
/// `BC_INVALID_ARGUMENT` naming the option. `bc_reader_position` of a shuffled or
/// sharded reader is the count of batches it has returned. It counts toward
/// `max_readers` like any reader.
///
/// # Safety
/// As `bc_cache_reader`'s; `opts` is NULL or a live builder.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_reader_with(
    cache: *mut BcCache,
    opts: *const BcReaderOptions,
    requested_schema: *const ArrowSchema,
    out: *mut ArrowArrayStream,
) -> BcStatus {
    // SAFETY: NULL or a live builder, as the caller promised, not written meanwhile.
    let options = || unsafe { reader_options(opts) };
    // SAFETY: the caller's arguments, under `bc_cache_reader`'s contract.
    unsafe { new_reader(cache, options, requested_schema, out) }
}

/// Check, without making a reader, that `bc_cache_reader_with(cache, opts, NULL, ...)`
/// would take `opts`: the same rules, refused with the same status and message
/// (`BC_INVALID_ARGUMENT` naming the option; `BC_CLOSED` on a closed cache). It creates
/// no reader and does not count toward `max_readers`, so what depends on the readers of
/// the moment (`max_readers` reached, batches already evicted) is not checked. `opts`
/// may be NULL: a plain reader, `BC_OK` on an open cache.
///
/// # Safety
/// `cache` is NULL or a live handle; `opts` is NULL or a live builder.
#[no_mangle]
pub unsafe extern "C" fn bc_cache_check_reader_options(
    cache: *mut BcCache,
    opts: *const BcReaderOptions,
) -> BcStatus {
    let body = |cache: &BcCache| -> Result<()> {
        // SAFETY: NULL or a live builder, as the caller promised, not written meanwhile.
        let options = unsafe { reader_options(opts) }?;
        cache.check_reader_options(&options)
    };
    // SAFETY: NULL or a live handle, as this export's caller promised.
    unsafe { on_cache(cache, body) }
}

/// The reader `opts` describes; NULL is a plain reader from the start.
///
/// # Safety
/// `opts` is NULL or a live builder, not written during the call.
unsafe fn reader_options(opts: *const BcReaderOptions) -> Result<ReaderOptions> {
    // SAFETY: NULL or a live builder, as the caller promised.
    match unsafe { opts.as_ref() } {
        None => Ok(ReaderOptions::from_start()),
        Some(opts) => opts.reader_options(),
    }
}
