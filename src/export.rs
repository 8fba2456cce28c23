//! Export: a [`CacheReader`] as a C `ArrowArrayStream` whose arrays own their buffers.

use std::ffi::{c_char, c_int, CString};
use std::mem::MaybeUninit;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::Arc;

use arrow_array::{Array, StructArray};
use arrow_data::ffi::FFI_ArrowArray;
use arrow_schema::ffi::FFI_ArrowSchema;

use crate::abi::{ArrowArray, ArrowArrayStream, ArrowSchema};
use crate::boundary::{arg_mut, c_message, guard, out_arg, panic_message, BcStatus};
use crate::derived::export_cached;
use batchcorder_cdata::schema_copy::SchemaCopy;
use batchcorder_core::{CacheReader, Cast, OnCastFailure};
use batchcorder_core::{Error, Result};

/// What an exported stream's `private_data` points to.
struct Exported {
    reader: CacheReader,
    /// The schema handed out, exactly as its producer wrote it: the upstream's, or the
    /// requested one of a casting reader. `None` for a cache built in Rust.
    exact_schema: Option<Arc<SchemaCopy>>,
    /// The error of the latest callback, if it failed, with the message `get_last_error`
    /// returns; its status is what `bc_reader_failure` reports.
    failure: Option<(Error, CString)>,
}

type StreamRelease = unsafe extern "C" fn(*mut ArrowArrayStream);
/// The one address of each release callback, which tells our streams from others: a
/// function's own address may differ between codegen units, a static's value cannot.
static READER_RELEASE: StreamRelease = release;
static VIEW_RELEASE: StreamRelease = view_release;

/// Wrap `reader` as a C stream; the stream's `release` drops it.
pub(crate) fn export_reader(
    reader: CacheReader,
    exact_schema: Option<Arc<SchemaCopy>>,
) -> ArrowArrayStream {
    let private = Box::new(Exported {
        reader,
        exact_schema,
        failure: None,
    });
    ArrowArrayStream {
        get_schema: Some(get_schema),
        get_next: Some(get_next),
        get_last_error: Some(get_last_error),
        release: Some(READER_RELEASE),
        private_data: Box::into_raw(private).cast(),
    }
}

/// The reader behind `stream`, if it is a live stream made by this library.
///
/// # Safety
/// `stream` is NULL or a valid stream, and no other reference to its reader state lives.
unsafe fn exported<'a>(stream: *mut ArrowArrayStream) -> Option<&'a mut Exported> {
    // SAFETY: NULL or valid, as the caller promised.
    let stream = unsafe { stream.as_mut() }?;
    let ours = stream
        .release
        .is_some_and(|f| std::ptr::fn_addr_eq(f, READER_RELEASE));
    if ours && !stream.private_data.is_null() {
        // SAFETY: a live reader stream of ours owns its `Exported`, borrowed by no one else.
        Some(unsafe { &mut *stream.private_data.cast::<Exported>() })
    } else {
        None
    }
}

/// Run a stream callback on `state` (a reader's, or the one a view reads through): an
/// error or a caught panic becomes an errno plus a message.
fn callback(state: Option<&mut Exported>, body: impl FnOnce(&mut Exported) -> Result<()>) -> c_int {
    let Some(state) = state else {
        return libc::EINVAL;
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| body(&mut *state)));
    let err = match outcome {
        Ok(Ok(())) => {
            state.failure = None;
            return 0;
        }
        Ok(Err(err)) => err,
        Err(payload) => {
            state.reader.poison_cache();
            panic_message(payload.as_ref())
        }
    };
    let errno = err.errno();
    let message = c_message(&err.to_string());
    state.failure = Some((err, message));
    errno
}

/// Move the next batch of `state` into `out` (released at the end of the stream).
fn next_into(state: &mut Exported, out: *mut ArrowArray) -> Result<()> {
    let array = if state.reader.casts() {
        match state.reader.next_batch()? {
            Some(batch) => FFI_ArrowArray::new(&StructArray::from(batch).into_data()),
            None => FFI_ArrowArray::empty(),
        }
    } else {
        match state.reader.next_cached()? {
            Some(cached) => {
                // SAFETY: `out` is valid for writes (checked by the caller), and an
                // `ArrowArray` may hold any bytes before it is written.
                let out = unsafe { &mut *out.cast::<MaybeUninit<ArrowArray>>() };
                return export_cached(cached, out).map_err(|err| Error::Internal(err.to_string()));
            }
            None => FFI_ArrowArray::empty(),
        }
    };
    // SAFETY: `out` is valid for writes (checked by the caller); the layouts are equal.
    unsafe { ptr::write(out.cast::<FFI_ArrowArray>(), array) };
    Ok(())
}

fn schema_into(state: &Exported, out: *mut ArrowSchema) -> Result<()> {
    state.reader.ensure_open()?;
    if let Some(exact) = &state.exact_schema {
        // SAFETY: `out` is valid for writes (checked by the caller).
        unsafe { ptr::write(out, exact.export()) };
        return Ok(());
    }
    let schema = FFI_ArrowSchema::try_from(state.reader.output_schema().as_ref())
        .map_err(|err| Error::Internal(format!("cannot export the schema: {err}")))?;
    // SAFETY: `out` is valid for writes (checked by the caller).
    unsafe { ptr::write(out, ArrowSchema::from_ffi(schema)) };
    Ok(())
}

fn schema_callback(state: Option<&mut Exported>, out: *mut ArrowSchema) -> c_int {
    callback(state, |state| {
        out_arg(out, "out").and_then(|out| schema_into(state, out))
    })
}

fn next_callback(state: Option<&mut Exported>, out: *mut ArrowArray) -> c_int {
    callback(state, |state| {
        out_arg(out, "out").and_then(|out| next_into(state, out))
    })
}

fn last_error_of(state: Option<&mut Exported>) -> *const c_char {
    match state {
        Some(Exported {
            failure: Some((_, message)),
            ..
        }) => message.as_ptr(),
        _ => ptr::null(),
    }
}

// The stream callbacks: the C Stream Interface hands each a valid stream, called by one
// thread at a time.

unsafe extern "C" fn get_schema(stream: *mut ArrowArrayStream, out: *mut ArrowSchema) -> c_int {
    // SAFETY: a valid stream, not called concurrently.
    schema_callback(unsafe { exported(stream) }, out)
}

unsafe extern "C" fn get_next(stream: *mut ArrowArrayStream, out: *mut ArrowArray) -> c_int {
    // SAFETY: as above.
    next_callback(unsafe { exported(stream) }, out)
}

unsafe extern "C" fn get_last_error(stream: *mut ArrowArrayStream) -> *const c_char {
    // SAFETY: as above.
    last_error_of(unsafe { exported(stream) })
}

unsafe extern "C" fn release(stream: *mut ArrowArrayStream) {
    // SAFETY: a valid stream, or NULL from a careless caller.
    let Some(stream) = (unsafe { stream.as_mut() }) else {
        return;
    };
    if stream.private_data.is_null() {
        return;
    }
    // SAFETY: made by `Box::into_raw` in `export_reader`, freed once: the stream is
    // released below.
    let private = unsafe { Box::from_raw(stream.private_data.cast::<Exported>()) };
    *stream = ArrowArrayStream::RELEASED;
    // A panic in a reader's drop must not unwind into C; the reader is gone either way.
    let _ = catch_unwind(AssertUnwindSafe(move || drop(private)));
}

/// Read the next batch of a reader stream made by `bc_cache_reader`, like its `get_next`
/// but returning a `BcStatus` (with `bc_last_error()` and `bc_last_error_errno()` set).
///
/// On `BC_OK`, `*out` holds the next array, which the caller releases, or a released array
/// (`out->release == NULL`) at the end of the stream. On failure `*out` is untouched.
/// Not for streams from other producers: those give `BC_INVALID_ARGUMENT`.
///
/// # Safety
/// `reader` is NULL or a live stream; `out` is NULL or valid for writing one array.
#[no_mangle]
pub unsafe extern "C" fn bc_reader_next(
    reader: *mut ArrowArrayStream,
    out: *mut ArrowArray,
) -> BcStatus {
    // SAFETY: NULL or a live stream, as the caller promised.
    let state: *mut Exported = match unsafe { reader_arg(reader) } {
        Ok(state) => state,
        Err(err) => return crate::boundary::fail(&err),
    };
    guard(
        // SAFETY: runs only after the body unwound, so nothing else borrows the reader.
        || unsafe { (*state).reader.poison_cache() },
        // SAFETY: the reader's state, borrowed by nothing else while this runs.
        || next_into(unsafe { &mut *state }, out_arg(out, "out")?),
    )
}

/// What a reader's cast does with a value that does not convert: one of the
/// `BC_CAST_FAILURE_*` values.
pub type BcCastFailure = u32;
/// The read of the batch holding the value fails with `BC_INVALID_ARGUMENT` (`EINVAL`
/// through `get_next`), naming the field and the value; the reader stays at that batch.
pub const BC_CAST_FAILURE_ERROR: BcCastFailure = 0;
/// The value becomes null.
pub const BC_CAST_FAILURE_NULL: BcCastFailure = 1;

/// Cast every later batch of a reader stream made by `bc_cache_reader` to
/// `requested_schema`, failing on a value that does not convert: `bc_reader_cast_with`
/// with `BC_CAST_FAILURE_ERROR`.
///
/// # Safety
/// `reader` is NULL or a live stream; `requested_schema` is NULL or a valid schema.
#[no_mangle]
pub unsafe extern "C" fn bc_reader_cast(
    reader: *mut ArrowArrayStream,
    requested_schema: *const ArrowSchema,
) -> BcStatus {
    // SAFETY: the same arguments, under the same contract.
    unsafe { bc_reader_cast_with(reader, requested_schema, BC_CAST_FAILURE_ERROR) }
}

/// Cast every later batch of a reader stream made by `bc_cache_reader` to
/// `requested_schema` (same field count and names, castable types; otherwise
/// `BC_INVALID_ARGUMENT` naming the field, and the reader is unchanged), with
/// `on_failure` (a `BC_CAST_FAILURE_*` value) saying what a value that does not convert
/// does. The schema is only read. For bindings whose readers receive a requested schema
/// after creation, and for casts that turn such values into nulls.
///
/// # Safety
/// `reader` is NULL or a live stream; `requested_schema` is NULL or a valid schema.
#[no_mangle]
pub unsafe extern "C" fn bc_reader_cast_with(
    reader: *mut ArrowArrayStream,
    requested_schema: *const ArrowSchema,
    on_failure: BcCastFailure,
) -> BcStatus {
    guard(
        || {},
        || {
            // SAFETY: NULL or a live stream, as the caller promised.
            let state = unsafe { reader_arg(reader) }?;
            // SAFETY: NULL or a valid schema, as the caller promised.
            let schema = unsafe { crate::boundary::arg(requested_schema, "requested_schema") }?;
            let on_failure = match on_failure {
                BC_CAST_FAILURE_ERROR => OnCastFailure::Error,
                BC_CAST_FAILURE_NULL => OnCastFailure::Null,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "argument `on_failure` is {other}; pass BC_CAST_FAILURE_ERROR or \
                         BC_CAST_FAILURE_NULL"
                    )))
                }
            };
            // SAFETY: the caller's `requested_schema`, valid as it promised.
            let (target, exact) = unsafe { crate::cache::requested(schema) }?;
            state.reader.cast_to(Cast {
                schema: Arc::new(target),
                on_failure,
            })?;
            state.exact_schema = Some(Arc::new(exact));
            Ok(())
        },
    )
}

/// The position of a reader stream made by `bc_cache_reader` or `bc_cache_reader_with`:
/// for a reader in the stream's order, the stream index of the next batch it returns; for
/// a shuffled or sharded reader, the count of batches it has returned so far.
///
/// # Safety
/// `reader` is NULL or a live stream; `out` is NULL or valid for one write.
#[no_mangle]
pub unsafe extern "C" fn bc_reader_position(
    reader: *mut ArrowArrayStream,
    out: *mut u64,
) -> BcStatus {
    guard(
        || {},
        || {
            // SAFETY: NULL or a live stream, as the caller promised.
            let position = unsafe { reader_arg(reader) }?.reader.position();
            // SAFETY: not NULL (checked), so valid for one write.
            unsafe { out_arg(out, "out")?.write(position) };
            Ok(())
        },
    )
}

/// The outcome of the latest `get_schema` or `get_next` call on `reader` (made by
/// `bc_cache_reader`), or on a view of it, as a status: `BC_OK` if that call succeeded or
/// none was made. Any other status is the failure's own, with `bc_last_error()` and
/// `bc_last_error_errno()` set as if this call had failed. For bindings that read through
/// the Arrow callbacks, which carry only an errno, and report typed errors.
///
/// # Safety
/// `reader` is NULL or a live stream.
#[no_mangle]
pub unsafe extern "C" fn bc_reader_failure(reader: *mut ArrowArrayStream) -> BcStatus {
    guard(
        || {},
        // SAFETY: NULL or a live stream, as the caller promised.
        || match &unsafe { reader_arg(reader) }?.failure {
            Some((err, _)) => Err(err.clone()),
            None => Ok(()),
        },
    )
}

/// Make `*out` a view of `reader`, a live stream made by `bc_cache_reader`: a second
/// `ArrowArrayStream` whose `get_schema`, `get_next` and `get_last_error` go through
/// `reader`, so reads through either advance one position. For bindings whose Arrow
/// library takes a stream over when it imports one (pyarrow's
/// `RecordBatchReader._import_from_c`) but that keep using the reader itself
/// (`bc_reader_position`, `bc_reader_failure` for the status of a failed read).
///
/// The view does not own `reader`: releasing the view leaves `reader` as it is, and the
/// caller releases the view (or stops calling it) before `reader` is released. Either
/// struct may be moved (copied to another address, as the C Data Interface allows): the
/// view reads through the reader's private state, not through the struct's address.
/// Like `reader`, the view is never to be called concurrently with it. On failure `*out`
/// is untouched.
///
/// # Safety
/// `reader` is NULL or a live stream; `out` is NULL or valid for writing one stream.
#[no_mangle]
pub unsafe extern "C" fn bc_reader_view(
    reader: *mut ArrowArrayStream,
    out: *mut ArrowArrayStream,
) -> BcStatus {
    guard(
        || {},
        || {
            // SAFETY: NULL or a live stream, as the caller promised.
            let state: *mut Exported = unsafe { reader_arg(reader) }?;
            let out = out_arg(out, "out")?;
            let view = ArrowArrayStream {
                get_schema: Some(view_get_schema),
                get_next: Some(view_get_next),
                get_last_error: Some(view_get_last_error),
                release: Some(VIEW_RELEASE),
                private_data: state.cast(),
            };
            // SAFETY: `out` is valid for writes (checked above).
            unsafe { ptr::write(out, view) };
            Ok(())
        },
    )
}

/// The reader state a live view reads through.
///
/// # Safety
/// `view` is NULL or a valid stream, and no other reference to its reader state lives.
unsafe fn viewed<'a>(view: *mut ArrowArrayStream) -> Option<&'a mut Exported> {
    // SAFETY: NULL or valid, as the caller promised.
    let view = unsafe { view.as_ref() }?;
    let ours = view
        .release
        .is_some_and(|f| std::ptr::fn_addr_eq(f, VIEW_RELEASE));
    // SAFETY: a live view's private data is its reader's state, which outlives it.
    (ours && !view.private_data.is_null())
        .then(|| unsafe { &mut *view.private_data.cast::<Exported>() })
}

unsafe extern "C" fn view_get_schema(view: *mut ArrowArrayStream, out: *mut ArrowSchema) -> c_int {
    // SAFETY: a valid stream, not called concurrently.
    schema_callback(unsafe { viewed(view) }, out)
}

unsafe extern "C" fn view_get_next(view: *mut ArrowArrayStream, out: *mut ArrowArray) -> c_int {
    // SAFETY: as above.
    next_callback(unsafe { viewed(view) }, out)
}

unsafe extern "C" fn view_get_last_error(view: *mut ArrowArrayStream) -> *const c_char {
    // SAFETY: as above.
    last_error_of(unsafe { viewed(view) })
}

unsafe extern "C" fn view_release(view: *mut ArrowArrayStream) {
    // SAFETY: a valid stream, or NULL from a careless caller.
    if let Some(view) = unsafe { view.as_mut() } {
        *view = ArrowArrayStream::RELEASED;
    }
}

/// The reader state behind the `reader` argument of a `bc_reader_*` call.
///
/// # Safety
/// `reader` is NULL or a live stream, and no other reference to its reader state lives.
unsafe fn reader_arg<'a>(reader: *mut ArrowArrayStream) -> Result<&'a mut Exported> {
    // SAFETY: NULL or live, as the caller promised.
    let stream = unsafe { arg_mut(reader, "reader") }?;
    // SAFETY: as above.
    unsafe { exported(stream) }.ok_or_else(|| {
        Error::InvalidArgument(
            "argument `reader` is released or was not made by bc_cache_reader".into(),
        )
    })
}

/// A heap-allocated, released `ArrowArrayStream` for bindings that need a stable address
/// (a PyCapsule, an R external pointer). Free it with `bc_stream_free`. NULL only if
/// allocation failed.
#[no_mangle]
pub extern "C" fn bc_stream_new() -> *mut ArrowArrayStream {
    crate::boundary::guard_value(ptr::null_mut(), || {
        Box::into_raw(Box::new(ArrowArrayStream::RELEASED))
    })
}

/// Release `stream` if it is still live, then free the struct itself. NULL is ignored.
///
/// # Safety
/// `stream` is NULL or came from `bc_stream_new` and was not freed before.
#[no_mangle]
pub unsafe extern "C" fn bc_stream_free(stream: *mut ArrowArrayStream) {
    if stream.is_null() {
        return;
    }
    // SAFETY: made by `bc_stream_new` and not freed before, as the caller promised.
    let mut boxed = unsafe { Box::from_raw(stream) };
    if let Some(release) = boxed.release {
        // SAFETY: a live stream, released once.
        unsafe { release(&mut *boxed) };
    }
}
