//! The Arrow C Data and C Stream Interface structs, as the header declares them.
//!
//! arrow-rs has the same structs with private fields; these public twins exist so that the
//! engine can read and write their members and cbindgen can write full definitions into
//! both headers. Both follow the C Data Interface's definitions member for member (arrow-rs
//! declares its own `#[repr(C)]` in the same order); sizes and alignments are asserted
//! equal below, and the conversions here are the only casts between the twins.

use std::ffi::{c_char, c_int, c_void};

use arrow_array::ffi_stream::FFI_ArrowArrayStream;
use arrow_data::ffi::FFI_ArrowArray;
use arrow_schema::ffi::FFI_ArrowSchema;

/// Arrow C Data Interface: the type of an array (`struct ArrowSchema`).
#[cfg(not(arrow_c_data_from_elsewhere))]
#[repr(C)]
pub struct ArrowSchema {
    pub format: *const c_char,
    pub name: *const c_char,
    pub metadata: *const c_char,
    pub flags: i64,
    pub n_children: i64,
    pub children: *mut *mut ArrowSchema,
    pub dictionary: *mut ArrowSchema,
    pub release: Option<unsafe extern "C" fn(schema: *mut ArrowSchema)>,
    pub private_data: *mut c_void,
}

/// Arrow C Data Interface: the data of an array (`struct ArrowArray`).
#[cfg(not(arrow_c_data_from_elsewhere))]
#[repr(C)]
pub struct ArrowArray {
    pub length: i64,
    pub null_count: i64,
    pub offset: i64,
    pub n_buffers: i64,
    pub n_children: i64,
    pub buffers: *mut *const c_void,
    pub children: *mut *mut ArrowArray,
    pub dictionary: *mut ArrowArray,
    pub release: Option<unsafe extern "C" fn(array: *mut ArrowArray)>,
    pub private_data: *mut c_void,
}

/// Arrow C Stream Interface: a pull-based stream of arrays (`struct ArrowArrayStream`).
#[cfg(not(arrow_c_stream_from_elsewhere))]
#[repr(C)]
pub struct ArrowArrayStream {
    pub get_schema:
        Option<unsafe extern "C" fn(stream: *mut ArrowArrayStream, out: *mut ArrowSchema) -> c_int>,
    pub get_next:
        Option<unsafe extern "C" fn(stream: *mut ArrowArrayStream, out: *mut ArrowArray) -> c_int>,
    pub get_last_error:
        Option<unsafe extern "C" fn(stream: *mut ArrowArrayStream) -> *const c_char>,
    pub release: Option<unsafe extern "C" fn(stream: *mut ArrowArrayStream)>,
    pub private_data: *mut c_void,
}

const _: () = {
    use std::mem::{align_of, size_of};
    assert!(size_of::<ArrowSchema>() == size_of::<FFI_ArrowSchema>());
    assert!(align_of::<ArrowSchema>() == align_of::<FFI_ArrowSchema>());
    assert!(size_of::<ArrowArray>() == size_of::<FFI_ArrowArray>());
    assert!(align_of::<ArrowArray>() == align_of::<FFI_ArrowArray>());
    assert!(size_of::<ArrowArrayStream>() == size_of::<FFI_ArrowArrayStream>());
    assert!(align_of::<ArrowArrayStream>() == align_of::<FFI_ArrowArrayStream>());
};

impl ArrowArrayStream {
    /// A stream with every member NULL: the released state.
    pub const RELEASED: Self = Self {
        get_schema: None,
        get_next: None,
        get_last_error: None,
        release: None,
        private_data: std::ptr::null_mut(),
    };
}

impl ArrowArray {
    /// An array with every member zero or NULL: the released state.
    pub const RELEASED: Self = Self {
        length: 0,
        null_count: 0,
        offset: 0,
        n_buffers: 0,
        n_children: 0,
        buffers: std::ptr::null_mut(),
        children: std::ptr::null_mut(),
        dictionary: std::ptr::null_mut(),
        release: None,
        private_data: std::ptr::null_mut(),
    };

    /// A node of an image with no children and no dictionary, released with its owner:
    /// `n_buffers` buffer addresses at `buffers`, read only, as the interface promises a
    /// consumer.
    pub const fn leaf(
        length: i64,
        null_count: i64,
        offset: i64,
        buffers: *const *const c_void,
        n_buffers: usize,
    ) -> Self {
        Self {
            length,
            null_count,
            offset,
            n_buffers: n_buffers as i64,
            n_children: 0,
            buffers: buffers.cast_mut(),
            children: std::ptr::null_mut(),
            dictionary: std::ptr::null_mut(),
            release: None,
            private_data: std::ptr::null_mut(),
        }
    }

    /// arrow-rs's array as this struct, to read its members.
    #[inline]
    pub fn of_ffi(array: &FFI_ArrowArray) -> &Self {
        // SAFETY: the same C struct (asserted above); a shared view allows no writes.
        unsafe { &*std::ptr::from_ref(array).cast::<Self>() }
    }

    /// Take arrow-rs's array over: releasing it is now the caller's task.
    #[inline]
    pub fn from_ffi(array: FFI_ArrowArray) -> Self {
        let array = std::mem::ManuallyDrop::new(array);
        // SAFETY: the same C struct; `ManuallyDrop` hands its release over.
        unsafe { std::ptr::read(std::ptr::from_ref(&*array).cast::<Self>()) }
    }

    /// Release arrow-rs's array where it is, as dropping it would, leaving it released.
    #[inline]
    pub fn release_ffi(array: &mut FFI_ArrowArray) {
        let raw = std::ptr::from_mut(array).cast::<Self>();
        // SAFETY: the same C struct; an unreleased array is released once, here, and
        // marked released whatever its callback did, so that dropping it does nothing.
        unsafe {
            if let Some(release) = (*raw).release {
                release(raw);
                (*raw).release = None;
            }
        }
    }

    /// This array for arrow-rs, which releases it when dropped.
    ///
    /// # Safety
    /// `self` is released, or an array whose members keep the C Data Interface's rules.
    #[inline]
    pub unsafe fn into_ffi(self) -> FFI_ArrowArray {
        // SAFETY: the same C struct; the caller vouches for its members.
        unsafe { std::mem::transmute::<Self, FFI_ArrowArray>(self) }
    }
}

impl ArrowSchema {
    /// A schema with every member zero or NULL: the released state.
    pub const RELEASED: Self = Self {
        format: std::ptr::null(),
        name: std::ptr::null(),
        metadata: std::ptr::null(),
        flags: 0,
        n_children: 0,
        children: std::ptr::null_mut(),
        dictionary: std::ptr::null_mut(),
        release: None,
        private_data: std::ptr::null_mut(),
    };

    /// Take arrow-rs's schema over: releasing it is now the caller's task.
    #[inline]
    pub fn from_ffi(schema: FFI_ArrowSchema) -> Self {
        let schema = std::mem::ManuallyDrop::new(schema);
        // SAFETY: the same C struct; `ManuallyDrop` hands its release over.
        unsafe { std::ptr::read(std::ptr::from_ref(&*schema).cast::<Self>()) }
    }

    /// arrow-rs's schema as this struct, to read its members.
    #[inline]
    pub fn of_ffi(schema: &FFI_ArrowSchema) -> &Self {
        // SAFETY: the same C struct (asserted above); a shared view allows no writes.
        unsafe { &*std::ptr::from_ref(schema).cast::<Self>() }
    }

    /// This schema for arrow-rs, which releases it when dropped.
    ///
    /// # Safety
    /// `self` is released, or a schema whose members keep the C Data Interface's rules.
    #[inline]
    pub unsafe fn into_ffi(self) -> FFI_ArrowSchema {
        // SAFETY: the same C struct; the caller vouches for its members.
        unsafe { std::mem::transmute::<Self, FFI_ArrowSchema>(self) }
    }
}
