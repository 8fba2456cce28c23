//! The producer's array tree that we keep: owned until its last user lets go, and read
//! by arrow-rs through roots of our own that leave it intact.
//!
//! A root without a validity buffer or dictionary (every record batch a stream hands
//! over) is not kept: its children are moved out, as the C Data Interface allows
//! ("Moving child arrays"), and the producer's root is released at once, below a root of
//! our own. What a producer keeps for the root alone is then freed at ingestion instead
//! of living as long as the batch: pyarrow builds a struct type, its name map and a struct
//! array for every batch it exports (bench/notes.md).

use std::ffi::c_void;
use std::ptr;
use std::sync::Arc;

use arrow_data::ffi::FFI_ArrowArray;

use crate::abi::ArrowArray;

/// An `ArrowArray` tree this library owns; released when dropped.
pub struct KeptTree {
    root: ArrowArray,
    /// The moved children; empty when the producer's root is kept whole.
    children: Vec<ArrowArray>,
    /// What `root.children` points to.
    _child_pointers: Vec<*mut ArrowArray>,
}

// SAFETY: the C Data Interface lets a consumer read an array and call its `release` from
// any thread (arrow-rs's `FFI_ArrowArray` is Send + Sync on the same grounds); nothing
// here writes to the tree after it is built.
unsafe impl Send for KeptTree {}
// SAFETY: as above.
unsafe impl Sync for KeptTree {}

impl KeptTree {
    /// Take ownership of an unreleased array.
    pub fn new(array: FFI_ArrowArray) -> Self {
        let mut root = ArrowArray::from_ffi(array);
        // Anything else, malformed trees included, is kept whole for arrow-rs to judge.
        // SAFETY: an unreleased array is valid to read.
        if !unsafe { gives_columns_away(&root) } {
            return Self {
                root,
                children: Vec::new(),
                _child_pointers: Vec::new(),
            };
        }
        let columns = root.n_children as usize;
        let mut children: Vec<ArrowArray> = (0..columns)
            // SAFETY: the root gives its columns away; each is taken once.
            .map(|i| unsafe { take_column(&root, i) })
            .collect();
        let mut child_pointers: Vec<*mut ArrowArray> =
            children.iter_mut().map(ptr::from_mut).collect();
        // No release: `Drop` releases the children.
        let own_root = columns_root(
            root.length,
            root.null_count,
            root.offset,
            columns,
            child_pointers.as_mut_ptr(),
        );
        if let Some(release) = root.release {
            // SAFETY: the producer's root, unreleased, its columns moved out.
            unsafe { release(&mut root) };
        }
        Self {
            root: own_root,
            children,
            _child_pointers: child_pointers,
        }
    }

    /// The root of the tree, ours or the producer's.
    #[inline]
    pub fn root(&self) -> &ArrowArray {
        &self.root
    }

    /// A root struct over the same tree for arrow-rs to import: its release drops one
    /// reference to `tree` instead of releasing the tree, which stays intact for exports.
    pub fn shared_import_root(tree: &Arc<KeptTree>) -> FFI_ArrowArray {
        import_root(ArrowArray { ..tree.root }, Box::new(tree.clone()))
    }
}

impl Drop for KeptTree {
    fn drop(&mut self) {
        for array in self
            .children
            .iter_mut()
            .chain(std::iter::once(&mut self.root))
        {
            if let Some(release) = array.release {
                // SAFETY: an unreleased node of ours, released once, here.
                unsafe { release(array) };
            }
        }
    }
}

/// The buffers of a root of our own: no validity bitmap.
struct NoValidity([*const c_void; 1]);
// SAFETY: one NULL pointer, never written.
unsafe impl Sync for NoValidity {}
static NO_VALIDITY: NoValidity = NoValidity([ptr::null()]);

/// Whether `root` can give its column structs away, as the C Data Interface allows a
/// consumer to: it has children, all present, and no validity bitmap or dictionary.
///
/// # Safety
/// `root` is an unreleased array.
#[inline]
pub(crate) unsafe fn gives_columns_away(root: &ArrowArray) -> bool {
    let validity = (root.n_buffers > 0 && !root.buffers.is_null())
        // SAFETY: a buffer list of at least one pointer.
        .then(|| unsafe { *root.buffers });
    root.n_children > 0
        && root.dictionary.is_null()
        && validity.is_none_or(|v| v.is_null())
        && !root.children.is_null()
        // SAFETY: a child list of `n_children` pointers.
        && (0..root.n_children as usize).all(|i| unsafe { !(*root.children.add(i)).is_null() })
}

/// Move column `index` out of `root`, which [`gives_columns_away`], marking it released
/// there.
///
/// # Safety
/// As for [`gives_columns_away`]; each column is taken once.
#[inline]
pub(crate) unsafe fn take_column(root: &ArrowArray, index: usize) -> ArrowArray {
    // SAFETY: the child is a valid, unreleased array; marking it released leaves its
    // parent's release with nothing to do for it.
    unsafe {
        let child = *root.children.add(index);
        let moved = ptr::read(child);
        (*child).release = None;
        moved
    }
}

/// A root of our own over `columns` column structs at `children`: a struct array with no
/// validity bitmap, and no release of its own.
#[inline]
pub(crate) fn columns_root(
    length: i64,
    null_count: i64,
    offset: i64,
    columns: usize,
    children: *mut *mut ArrowArray,
) -> ArrowArray {
    ArrowArray {
        length,
        null_count,
        offset,
        n_buffers: 1,
        n_children: columns as i64,
        buffers: NO_VALIDITY.0.as_ptr().cast_mut(),
        children,
        dictionary: ptr::null_mut(),
        release: None,
        private_data: ptr::null_mut(),
    }
}

/// `root` for arrow-rs to import, whose release drops `owner` instead of releasing the
/// nodes: what they point to stays intact for exports.
pub(crate) fn import_root<T>(root: ArrowArray, owner: Box<T>) -> FFI_ArrowArray {
    let proxy = ArrowArray {
        release: Some(release_owner::<T>),
        private_data: Box::into_raw(owner).cast(),
        ..root
    };
    // SAFETY: a root over valid nodes, whose release frees what it owns.
    unsafe { proxy.into_ffi() }
}

unsafe extern "C" fn release_owner<T>(array: *mut ArrowArray) {
    // SAFETY: a release callback gets a valid array, or NULL from a careless caller.
    let Some(array) = (unsafe { array.as_mut() }) else {
        return;
    };
    let owner = array.private_data.cast::<T>();
    array.release = None;
    array.private_data = ptr::null_mut();
    // SAFETY: made by `Box::into_raw` in `import_root`, released once.
    drop(unsafe { Box::from_raw(owner) });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StructArray};
    use arrow_schema::{DataType, Field};

    /// A producer root whose release is counted in `count`, then done as before.
    struct Counted {
        release: unsafe extern "C" fn(*mut ArrowArray),
        private_data: *mut c_void,
        count: &'static AtomicUsize,
    }

    unsafe extern "C" fn counted_release(array: *mut ArrowArray) {
        // SAFETY: made by `counting_root`, released once, as the callback's contract says.
        unsafe {
            let counted = Box::from_raw((*array).private_data.cast::<Counted>());
            counted.count.fetch_add(1, Ordering::SeqCst);
            (*array).private_data = counted.private_data;
            (counted.release)(array);
        }
    }

    /// arrow-rs's export of `data`, whose root's release is counted in `count`.
    pub(crate) fn counting_root(
        data: &arrow_data::ArrayData,
        count: &'static AtomicUsize,
    ) -> FFI_ArrowArray {
        let mut raw = ArrowArray::from_ffi(FFI_ArrowArray::new(data));
        let counted = Counted {
            release: raw.release.unwrap(),
            private_data: raw.private_data,
            count,
        };
        raw.private_data = Box::into_raw(Box::new(counted)).cast();
        raw.release = Some(counted_release);
        // SAFETY: arrow-rs's export, whose release still runs, once, through ours.
        unsafe { raw.into_ffi() }
    }

    fn batch() -> RecordBatch {
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(3)]));
        RecordBatch::try_from_iter([("id", ids)]).unwrap()
    }

    #[test]
    fn a_record_batch_root_is_released_at_once_and_its_columns_with_the_tree() {
        static ROOTS_RELEASED: AtomicUsize = AtomicUsize::new(0);
        let original = batch();
        let buffer = original.column(0).to_data().buffers()[0].clone();
        let alone = buffer.strong_count();
        let data = StructArray::from(original.clone()).into_data();
        let tree = KeptTree::new(counting_root(&data, &ROOTS_RELEASED));
        drop(data);
        assert_eq!(
            ROOTS_RELEASED.load(Ordering::SeqCst),
            1,
            "the root was kept"
        );
        assert!(
            buffer.strong_count() > alone,
            "the columns were released with the root"
        );
        drop(tree);
        assert_eq!(
            buffer.strong_count(),
            alone,
            "the columns outlived the tree"
        );
    }

    #[test]
    fn a_root_with_a_validity_bitmap_is_kept_whole() {
        static ROOTS_RELEASED: AtomicUsize = AtomicUsize::new(0);
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let field = Arc::new(Field::new("id", DataType::Int64, false));
        let nulls = arrow_buffer::NullBuffer::from(vec![true, false, true]);
        let rows = StructArray::try_new(vec![field].into(), vec![ids], Some(nulls)).unwrap();
        let tree = Arc::new(KeptTree::new(counting_root(
            &rows.to_data(),
            &ROOTS_RELEASED,
        )));
        assert_eq!(ROOTS_RELEASED.load(Ordering::SeqCst), 0);
        // Imported through the shared root, the bitmap is still there.
        let root = KeptTree::shared_import_root(&tree);
        let data_type = rows.data_type().clone();
        // SAFETY: a root over arrow-rs's export of `rows`, of its type.
        let data = unsafe { arrow_array::ffi::from_ffi_and_data_type(root, data_type) }.unwrap();
        assert_eq!(StructArray::from(data), rows);
        drop(tree);
        assert_eq!(ROOTS_RELEASED.load(Ordering::SeqCst), 1);
    }
}
