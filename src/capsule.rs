//! PyCapsule ownership without Python: a capsule destructor that is a plain C function.
//!
//! A binding wraps a `bc_stream_new` stream in a capsule whose destructor is
//! `bc_capsule_release_stream`, then calls `bc_capsule_adopt_stream`. The destructor
//! finds the stream by the capsule's address, so it runs no interpreter code: it is safe
//! while an exception is pending and during interpreter shutdown.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

use crate::abi::ArrowArrayStream;
use crate::boundary::{arg, guard, BcStatus};
use crate::export::bc_stream_free;

fn adopted() -> &'static Mutex<HashMap<usize, usize>> {
    static ADOPTED: OnceLock<Mutex<HashMap<usize, usize>>> = OnceLock::new();
    ADOPTED.get_or_init(Default::default)
}

/// Record that `capsule` owns `stream` (from `bc_stream_new`): when the capsule's
/// destructor `bc_capsule_release_stream` runs, the stream is released if still live,
/// then freed.
///
/// # Safety
/// `capsule` is the address of a live capsule whose destructor is
/// `bc_capsule_release_stream`; `stream` came from `bc_stream_new` and is owned by it.
#[no_mangle]
pub unsafe extern "C" fn bc_capsule_adopt_stream(
    capsule: *mut c_void,
    stream: *mut ArrowArrayStream,
) -> BcStatus {
    guard(
        || {},
        || {
            // SAFETY: only checked for NULL; neither is read.
            unsafe { arg(capsule.cast_const(), "capsule") }?;
            // SAFETY: as above.
            unsafe { arg(stream.cast_const(), "stream") }?;
            let mut adopted = adopted().lock().unwrap_or_else(|e| e.into_inner());
            adopted.insert(capsule as usize, stream as usize);
            Ok(())
        },
    )
}

/// A `PyCapsule_Destructor`: releases and frees the stream adopted by `capsule`. A
/// capsule that adopted nothing is ignored.
///
/// # Safety
/// Called by the interpreter with the capsule being destroyed.
#[no_mangle]
pub unsafe extern "C" fn bc_capsule_release_stream(capsule: *mut c_void) {
    let stream = {
        let mut adopted = adopted().lock().unwrap_or_else(|e| e.into_inner());
        adopted.remove(&(capsule as usize))
    };
    if let Some(stream) = stream {
        // SAFETY: a `bc_stream_new` stream the capsule adopted, freed once: it left the map.
        let free = || unsafe { bc_stream_free(stream as *mut ArrowArrayStream) };
        let _ = std::panic::catch_unwind(free);
    }
}
