//! The boundary every `bc_*` export goes through: status codes, the thread-local error
//! message, NULL checks that name the argument, and the panic guard.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use batchcorder_core::Error;

/// The result of every fallible `bc_*` call. `BC_OK` is 0; read `bc_last_error()` for the
/// message of anything else.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BcStatus {
    /// Success.
    BC_OK = 0,
    /// A NULL pointer, a released stream, a bad option value, or the reader cap reached
    /// (`bc_last_error_kind()` tells the cap apart: `BC_ERROR_KIND_READER_CAP`).
    BC_INVALID_ARGUMENT = 1,
    /// A memory or disk budget cannot hold data that must be kept.
    BC_CAPACITY = 2,
    /// The disk tier failed (full disk, permissions, vanished file).
    BC_IO = 3,
    /// The upstream producer failed; its message is kept and `bc_last_error_errno()` has
    /// its errno.
    BC_UPSTREAM = 4,
    /// `bc_cache_batch` or `bc_cache_take` asked for a batch that `max_readers` eviction
    /// dropped once every reader had passed it. A reader never meets it: eviction keeps
    /// every batch a live reader has not passed.
    BC_EVICTED = 5,
    /// The cache was closed.
    BC_CLOSED = 6,
    /// A bug: a Rust panic caught at the boundary. The cache involved is poisoned.
    BC_INTERNAL = 7,
    /// A persisted cache's files are damaged, edited, truncated, or not a persisted
    /// cache at all (checked against its manifest and checksums).
    BC_CORRUPT = 8,
}

impl From<&Error> for BcStatus {
    fn from(err: &Error) -> Self {
        match err {
            Error::InvalidArgument(_) | Error::ReaderCap { .. } | Error::OutOfRange(_) => {
                BcStatus::BC_INVALID_ARGUMENT
            }
            Error::Evicted { .. } => BcStatus::BC_EVICTED,
            Error::Capacity(_) => BcStatus::BC_CAPACITY,
            Error::Io { .. } => BcStatus::BC_IO,
            Error::Upstream { .. } => BcStatus::BC_UPSTREAM,
            Error::Closed => BcStatus::BC_CLOSED,
            Error::Internal(_) => BcStatus::BC_INTERNAL,
            Error::Corrupt(_) => BcStatus::BC_CORRUPT,
        }
    }
}

/// What a failure is, finer than its `BcStatus`, as `bc_last_error_kind()` reports it.
/// Each kind belongs to one status; a binding decides from it, never from the message.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BcErrorKind {
    /// The status says all there is; also the kind when no call failed.
    BC_ERROR_KIND_NONE = 0,
    /// With `BC_INVALID_ARGUMENT`: every one of the cache's `max_readers` readers was
    /// created already, so no new reader can be made (a server answers "unavailable").
    BC_ERROR_KIND_READER_CAP = 1,
    /// With `BC_INVALID_ARGUMENT`: a batch index (`bc_cache_batch`) or a row
    /// (`bc_cache_take`) past the end of the stream; the message has the count.
    BC_ERROR_KIND_OUT_OF_RANGE = 2,
}

impl From<&Error> for BcErrorKind {
    fn from(err: &Error) -> Self {
        match err {
            Error::ReaderCap { .. } => BcErrorKind::BC_ERROR_KIND_READER_CAP,
            Error::OutOfRange(_) => BcErrorKind::BC_ERROR_KIND_OUT_OF_RANGE,
            _ => BcErrorKind::BC_ERROR_KIND_NONE,
        }
    }
}

struct LastError {
    message: CString,
    errno: c_int,
    kind: BcErrorKind,
}

thread_local! {
    static LAST_ERROR: RefCell<LastError> = RefCell::new(LastError {
        message: CString::default(),
        errno: 0,
        kind: BcErrorKind::BC_ERROR_KIND_NONE,
    });
}

/// Turn an error into its C message: interior NULs cannot cross, so they become spaces.
pub(crate) fn c_message(text: &str) -> CString {
    CString::new(text.replace('\0', " ")).unwrap_or_default()
}

/// Record `err` as this thread's last error and return its status.
pub(crate) fn fail(err: &Error) -> BcStatus {
    LAST_ERROR.with(|last| {
        *last.borrow_mut() = LastError {
            message: c_message(&err.to_string()),
            errno: err.errno(),
            kind: err.into(),
        };
    });
    BcStatus::from(err)
}

/// The message of a caught panic.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> Error {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    Error::Internal(format!("a panic was caught at the C boundary: {text}"))
}

/// Run the body of a fallible export: errors become a status and a message, and a panic
/// becomes `BC_INTERNAL` after `on_panic` ran (which poisons the cache involved).
pub(crate) fn guard(
    on_panic: impl FnOnce(),
    body: impl FnOnce() -> batchcorder_core::Result<()>,
) -> BcStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => BcStatus::BC_OK,
        Ok(Err(err)) => fail(&err),
        Err(payload) => {
            on_panic();
            fail(&panic_message(payload.as_ref()))
        }
    }
}

/// Run an infallible export, returning `fallback` if it panics.
pub(crate) fn guard_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

/// Check a pointer argument without borrowing it: fail naming it when it is NULL.
pub(crate) fn non_null<T>(ptr: *const T, name: &str) -> batchcorder_core::Result<*const T> {
    if ptr.is_null() {
        return Err(Error::InvalidArgument(format!(
            "argument `{name}` is NULL; pass a valid pointer"
        )));
    }
    Ok(ptr)
}

/// Borrow `ptr`, or fail with a message naming the argument.
///
/// # Safety
/// A non-NULL `ptr` must be aligned and point to an initialized `T` that stays live and
/// is not written (other than through a `T`'s own interior mutability) for `'a`.
pub(crate) unsafe fn arg<'a, T>(ptr: *const T, name: &str) -> batchcorder_core::Result<&'a T> {
    let ptr = non_null(ptr, name)?;
    // SAFETY: not NULL (checked by `non_null` above); aligned, initialized, live and not
    // written for `'a`, as the caller promised.
    Ok(unsafe { &*ptr })
}

/// Borrow a NUL-terminated UTF-8 string argument, or fail naming it.
///
/// # Safety
/// A non-NULL `ptr` must point to a NUL-terminated string that stays live and unchanged
/// for `'a`.
pub(crate) unsafe fn utf8_arg<'a>(
    ptr: *const c_char,
    name: &str,
) -> batchcorder_core::Result<&'a str> {
    // The raw pointer itself, not one derived from a `&c_char`: a reference would allow
    // reads of its first byte only, and `CStr::from_ptr` reads up to the NUL.
    let ptr = non_null(ptr, name)?;
    // SAFETY: not NULL (checked by `non_null` above); NUL-terminated, live and unchanged
    // for `'a`, as the caller promised.
    let text = unsafe { std::ffi::CStr::from_ptr(ptr) };
    text.to_str()
        .map_err(|_| Error::InvalidArgument(format!("argument `{name}` is not valid UTF-8")))
}

/// Check an output argument, which a call writes only on success and which may hold
/// anything before (so it is never read or borrowed): fail naming it when it is NULL.
pub(crate) fn out_arg<T>(out: *mut T, name: &str) -> batchcorder_core::Result<*mut T> {
    if out.is_null() {
        return Err(Error::InvalidArgument(format!(
            "argument `{name}` is NULL; pass where to write the result"
        )));
    }
    Ok(out)
}

/// Write `value` to an optional output argument, which may hold anything before (so it
/// is overwritten, never read or borrowed); nothing when `out` is NULL.
///
/// # Safety
/// A non-NULL `out` must be aligned and writable for a `T`.
pub(crate) unsafe fn write_optional_out<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: not NULL (checked above); aligned and writable, as the caller promised.
        unsafe { out.write(value) };
    }
}

/// Borrow `ptr` mutably, or fail with a message naming the argument.
///
/// # Safety
/// A non-NULL `ptr` must be aligned and point to an initialized `T` that stays live for
/// `'a` and that nothing else reads, writes or borrows meanwhile.
pub(crate) unsafe fn arg_mut<'a, T>(
    ptr: *mut T,
    name: &str,
) -> batchcorder_core::Result<&'a mut T> {
    let ptr = non_null(ptr, name)?.cast_mut();
    // SAFETY: not NULL (checked by `non_null` above); aligned, initialized, live for `'a`
    // and used by nothing else meanwhile, as the caller promised.
    Ok(unsafe { &mut *ptr })
}

/// The library version, "MAJOR.MINOR.PATCH". The string is static.
#[no_mangle]
pub extern "C" fn bc_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last failed `bc_*` call on this thread, or "" if none failed.
///
/// Owned by the library; valid until the next `bc_*` call on this thread. Never NULL.
#[no_mangle]
pub extern "C" fn bc_last_error() -> *const c_char {
    guard_value(c"".as_ptr(), || {
        LAST_ERROR.with(|last| last.borrow().message.as_ptr())
    })
}

/// The errno class of the last failed `bc_*` call on this thread: the upstream's own
/// errno after `BC_UPSTREAM`, otherwise `EINVAL`, `ENOMEM` or `EIO`; 0 if none failed.
#[no_mangle]
pub extern "C" fn bc_last_error_errno() -> c_int {
    guard_value(libc::EIO, || LAST_ERROR.with(|last| last.borrow().errno))
}

/// The kind of the last failed `bc_*` call on this thread, finer than its status
/// (`BC_ERROR_KIND_READER_CAP` or `BC_ERROR_KIND_OUT_OF_RANGE` with
/// `BC_INVALID_ARGUMENT`), or `BC_ERROR_KIND_NONE` if
/// the status says all there is or none failed.
///
/// Per OS thread and valid until the next `bc_*` call on it, like `bc_last_error()`;
/// a value, so there is nothing to free.
#[no_mangle]
pub extern "C" fn bc_last_error_kind() -> BcErrorKind {
    guard_value(BcErrorKind::BC_ERROR_KIND_NONE, || {
        LAST_ERROR.with(|last| last.borrow().kind)
    })
}
