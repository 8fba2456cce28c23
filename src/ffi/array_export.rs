//! Fast array export: every read of a cached batch copies the small tree of `ArrowArray`
//! structs of one array tree kept for the batch, instead of converting the batch again.
//!
//! The kept tree is the upstream producer's own array when the batch came through the C
//! stream import (so a replay costs no conversion at all), or an arrow-rs export made on
//! the batch's second read otherwise. One read costs three allocations (the shared block,
//! its nodes, its child pointers) and one reference count per node, whatever the buffers.
//! Children can be moved out and released on their own, as the C Data Interface allows:
//! every node holds a reference to the block, and the block keeps the cached batch (so
//! the kept tree and its buffers) alive.

use std::cell::UnsafeCell;
use std::ptr;
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StructArray};
use arrow_data::ffi::FFI_ArrowArray;

use crate::ffi::abi::ArrowArray;
use crate::storage::CachedBatch;

/// An `ArrowArray` tree this library owns; released when dropped.
pub(crate) struct OwnedArray(ArrowArray);

// SAFETY: the C Data Interface lets a consumer read an array and call its `release` from
// any thread (arrow-rs's `FFI_ArrowArray` is Send + Sync on the same grounds); nothing
// here writes to the tree.
unsafe impl Send for OwnedArray {}
unsafe impl Sync for OwnedArray {}

impl OwnedArray {
    /// Take ownership of an unreleased array.
    pub fn new(array: FFI_ArrowArray) -> Self {
        // SAFETY: the layouts are equal (abi.rs); `forget` hands the release to us.
        let raw = unsafe { ptr::read((&array as *const FFI_ArrowArray).cast::<ArrowArray>()) };
        std::mem::forget(array);
        Self(raw)
    }

    /// A root struct over the same tree for arrow-rs to import: its release drops one
    /// reference to `tree` instead of releasing the tree, which stays intact for exports.
    pub fn shared_import_root(tree: &Arc<OwnedArray>) -> FFI_ArrowArray {
        let root = &tree.0;
        let proxy = ArrowArray {
            release: Some(release_shared_root),
            private_data: Arc::into_raw(tree.clone()).cast_mut().cast(),
            ..*root
        };
        // SAFETY: the layouts are equal (abi.rs).
        unsafe { std::mem::transmute::<ArrowArray, FFI_ArrowArray>(proxy) }
    }
}

impl Drop for OwnedArray {
    fn drop(&mut self) {
        if let Some(release) = self.0.release {
            unsafe { release(&mut self.0) };
        }
    }
}

unsafe extern "C" fn release_shared_root(array: *mut ArrowArray) {
    let Some(array) = (unsafe { array.as_mut() }) else { return };
    let tree = array.private_data.cast::<OwnedArray>().cast_const();
    array.release = None;
    array.private_data = ptr::null_mut();
    // SAFETY: made by `Arc::into_raw` in `shared_import_root`, released once.
    drop(unsafe { Arc::from_raw(tree) });
}

/// The array tree every export of one cached batch copies.
pub(crate) struct ExportRoot {
    tree: Arc<OwnedArray>,
    /// Nodes below the root (children and dictionaries, recursively).
    descendants: usize,
    /// Child pointers of all nodes, added up.
    child_slots: usize,
}

impl ExportRoot {
    /// Keep `tree`, an unreleased array tree, for exports.
    pub fn new(tree: Arc<OwnedArray>) -> Self {
        let (mut descendants, mut child_slots) = (0, 0);
        // SAFETY: an unreleased tree is valid to read.
        unsafe { count(&tree.0, &mut descendants, &mut child_slots) };
        Self { tree, descendants, child_slots }
    }

    /// Export `batch` once with arrow-rs and keep the result.
    fn from_batch(batch: &RecordBatch) -> Self {
        let exported = FFI_ArrowArray::new(&StructArray::from(batch.clone()).into_data());
        Self::new(Arc::new(OwnedArray::new(exported)))
    }
}

/// Count the nodes below `array` and the child pointers of its whole tree.
///
/// # Safety
/// `array` is a valid, unreleased array tree.
unsafe fn count(array: &ArrowArray, descendants: &mut usize, child_slots: &mut usize) {
    let n_children = array.n_children.max(0) as usize;
    *child_slots += n_children;
    for i in 0..n_children {
        *descendants += 1;
        unsafe { count(&**array.children.add(i), descendants, child_slots) };
    }
    if let Some(dictionary) = unsafe { array.dictionary.as_ref() } {
        *descendants += 1;
        unsafe { count(dictionary, descendants, child_slots) };
    }
}

/// The memory behind one export: every node below the root (the root lives in the
/// consumer's struct) and the child pointer arrays.
struct Block {
    _batch: Arc<CachedBatch>,
    nodes: UnsafeCell<Box<[ArrowArray]>>,
    children: UnsafeCell<Box<[*mut ArrowArray]>>,
}

/// Where the next node and the next child pointers of a block go.
struct Cursor {
    block: *const Block,
    nodes: *mut ArrowArray,
    next_node: usize,
    children: *mut *mut ArrowArray,
    next_child: usize,
}

impl Cursor {
    /// A copy of `source` whose descendants are copied into the block.
    ///
    /// # Safety
    /// `source` is a valid tree no larger than the block was sized for; `self.block` is
    /// an `Arc` that one more reference may be taken from.
    unsafe fn copy(&mut self, source: &ArrowArray) -> ArrowArray {
        let n_children = source.n_children.max(0) as usize;
        let children = if n_children == 0 {
            ptr::null_mut()
        } else {
            let first = unsafe { self.children.add(self.next_child) };
            self.next_child += n_children;
            for i in 0..n_children {
                let child = unsafe { self.copy_below(&**source.children.add(i)) };
                unsafe { first.add(i).write(child) };
            }
            first
        };
        let dictionary = match unsafe { source.dictionary.as_ref() } {
            Some(dictionary) => unsafe { self.copy_below(dictionary) },
            None => ptr::null_mut(),
        };
        unsafe { Arc::increment_strong_count(self.block) };
        ArrowArray {
            children,
            dictionary,
            release: Some(release_node),
            private_data: self.block.cast_mut().cast(),
            ..*source
        }
    }

    /// Copy `source` into the next node of the block; returns where it went.
    unsafe fn copy_below(&mut self, source: &ArrowArray) -> *mut ArrowArray {
        let slot = unsafe { self.nodes.add(self.next_node) };
        self.next_node += 1;
        let node = unsafe { self.copy(source) };
        unsafe { slot.write(node) };
        slot
    }
}

/// Export `cached` into `out`: a copy of its kept tree, or (a batch with none, read for
/// the first time) a direct arrow-rs export, so that a batch read once builds nothing.
///
/// # Safety
/// `out` is valid for writing one `ArrowArray`.
pub(crate) unsafe fn export_cached(cached: &Arc<CachedBatch>, out: *mut ArrowArray) {
    let root = match cached.derived_if_present::<ExportRoot>() {
        Some(root) => Some(root),
        None if cached.first_use() => None,
        None => cached.derived(ExportRoot::from_batch),
    };
    let Some(root) = root else {
        let data = StructArray::from(cached.batch().clone()).into_data();
        unsafe { ptr::write(out.cast::<FFI_ArrowArray>(), FFI_ArrowArray::new(&data)) };
        return;
    };
    let block = Arc::new(Block {
        _batch: cached.clone(),
        nodes: UnsafeCell::new((0..root.descendants).map(|_| released()).collect()),
        children: UnsafeCell::new(vec![ptr::null_mut(); root.child_slots].into()),
    });
    // Every write below goes through these two pointers (and pointers derived from them),
    // so no borrow of the block's contents is used after them.
    let mut cursor = Cursor {
        block: Arc::as_ptr(&block),
        nodes: unsafe { (*block.nodes.get()).as_mut_ptr() },
        next_node: 0,
        children: unsafe { (*block.children.get()).as_mut_ptr() },
        next_child: 0,
    };
    // SAFETY: the block was sized for this tree, and `block` holds a reference until the
    // end of this function, after which the nodes' references keep it alive.
    let exported = unsafe { cursor.copy(&root.tree.0) };
    unsafe { ptr::write(out, exported) };
}

fn released() -> ArrowArray {
    ArrowArray {
        length: 0,
        null_count: 0,
        offset: 0,
        n_buffers: 0,
        n_children: 0,
        buffers: ptr::null_mut(),
        children: ptr::null_mut(),
        dictionary: ptr::null_mut(),
        release: None,
        private_data: ptr::null_mut(),
    }
}

/// Release one node: first the children and dictionary not moved out, then its block
/// reference.
unsafe extern "C" fn release_node(array: *mut ArrowArray) {
    let Some(array) = (unsafe { array.as_mut() }) else { return };
    for i in 0..array.n_children.max(0) as usize {
        let child = unsafe { *array.children.add(i) };
        if let Some(release) = unsafe { (*child).release } {
            unsafe { release(child) };
        }
    }
    if !array.dictionary.is_null() {
        if let Some(release) = unsafe { (*array.dictionary).release } {
            unsafe { release(array.dictionary) };
        }
    }
    let block = array.private_data.cast::<Block>().cast_const();
    array.release = None;
    array.private_data = ptr::null_mut();
    // SAFETY: each live node holds exactly one reference, taken in `Cursor::copy`.
    drop(unsafe { Arc::from_raw(block) });
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::Int64Type;
    use arrow_array::{DictionaryArray, Int64Array, StringArray};
    use arrow_data::ffi::FFI_ArrowArray;
    use arrow_schema::DataType;

    fn batch() -> RecordBatch {
        let ids = Arc::new(Int64Array::from(vec![Some(1), None, Some(3)]));
        let keys = arrow_array::Int32Array::from(vec![0, 1, 0]);
        let dict = DictionaryArray::try_new(keys, Arc::new(StringArray::from(vec!["a", "b"])))
            .unwrap();
        RecordBatch::try_from_iter([("id", ids as _), ("tag", Arc::new(dict) as _)]).unwrap()
    }

    fn import(array: ArrowArray, batch: &RecordBatch) -> RecordBatch {
        let ffi: FFI_ArrowArray = unsafe { std::mem::transmute(array) };
        let data_type = DataType::Struct(batch.schema().fields().clone());
        let data = unsafe { arrow_array::ffi::from_ffi_and_data_type(ffi, data_type) }.unwrap();
        RecordBatch::from(StructArray::from(data))
    }

    /// A cached batch as the C stream import makes it: imported through a second root,
    /// with the producer's tree kept for exports.
    fn seeded(batch: &RecordBatch) -> Arc<CachedBatch> {
        let produced = FFI_ArrowArray::new(&StructArray::from(batch.clone()).into_data());
        let tree = Arc::new(OwnedArray::new(produced));
        let data_type = DataType::Struct(batch.schema().fields().clone());
        let root = OwnedArray::shared_import_root(&tree);
        let data = unsafe { arrow_array::ffi::from_ffi_and_data_type(root, data_type) }.unwrap();
        let imported = RecordBatch::from(StructArray::from(data));
        Arc::new(CachedBatch::with_derived(imported, Some(Box::new(ExportRoot::new(tree)))))
    }

    fn first_buffer(batch: &RecordBatch) -> arrow_buffer::Buffer {
        batch.column(0).to_data().buffers()[0].clone()
    }

    #[test]
    fn exports_round_trip_and_outlive_the_cache() {
        let original = batch();
        for cached in [Arc::new(CachedBatch::new(original.clone())), seeded(&original)] {
            // Direct, template build and copy for a plain batch; copies for a seeded one.
            let mut exports = [released(), released(), released()];
            for out in &mut exports {
                unsafe { export_cached(&cached, out) };
            }
            drop(cached);
            for out in exports {
                assert_eq!(import(out, &original), original);
            }
        }
    }

    #[test]
    fn the_producer_tree_is_released_once_everything_is_gone() {
        let original = batch();
        let buffer = first_buffer(&original);
        let alone = buffer.strong_count();
        let cached = seeded(&original);
        let mut out = released();
        unsafe { export_cached(&cached, &mut out) };
        drop(cached);
        assert!(buffer.strong_count() > alone, "an export keeps the producer's tree");
        let reimported = import(out, &original);
        assert_eq!(reimported, original);
        drop(reimported);
        assert_eq!(buffer.strong_count(), alone, "the producer's tree was not released");
    }

    #[test]
    fn a_moved_child_outlives_its_parent() {
        let original = batch();
        for cached in [Arc::new(CachedBatch::new(original.clone())), seeded(&original)] {
            let mut root = released();
            unsafe {
                export_cached(&cached, &mut root);
                (root.release.unwrap())(&mut root);
                export_cached(&cached, &mut root);
            }
            // Move child 0 out, as a consumer may, then release the parent first.
            let child_ptr = unsafe { *root.children };
            let moved = unsafe { ptr::replace(child_ptr, released()) };
            unsafe { (root.release.unwrap())(&mut root) };
            drop(cached);
            let ffi: FFI_ArrowArray = unsafe { std::mem::transmute(moved) };
            let data =
                unsafe { arrow_array::ffi::from_ffi_and_data_type(ffi, DataType::Int64) }.unwrap();
            let ids = arrow_array::make_array(data);
            assert_eq!(ids.as_primitive::<Int64Type>().value(2), 3);
            assert!(ids.is_null(1));
        }
    }
}
