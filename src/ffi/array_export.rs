//! Fast array export: each cached batch is exported by arrow-rs once, and every read
//! after that copies the small tree of `ArrowArray` structs instead of rebuilding it.
//!
//! One read costs three allocations (the shared block, its nodes, its child pointers)
//! and one reference count per node, whatever the buffers. Children can be moved out and
//! released on their own, as the C Data Interface allows: every node holds a reference
//! to the block, and the block keeps the cached batch (so its buffers) alive.

use std::cell::UnsafeCell;
use std::ffi::c_void;
use std::ptr;
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StructArray};
use arrow_data::ffi::FFI_ArrowArray;

use crate::ffi::abi::ArrowArray;
use crate::storage::CachedBatch;

/// A batch's export made once by arrow-rs, flattened in pre-order (root first).
pub(crate) struct ExportTemplate {
    /// Owns the buffer-pointer arrays that every export shares (read-only for consumers).
    _exported: FFI_ArrowArray,
    nodes: Vec<TemplateNode>,
    /// Child node indices of all nodes, concatenated.
    child_indices: Vec<usize>,
}

struct TemplateNode {
    length: i64,
    null_count: i64,
    offset: i64,
    n_buffers: i64,
    buffers: *const *const c_void,
    children_start: usize,
    n_children: usize,
    dictionary: Option<usize>,
}

// SAFETY: the template is immutable after construction; its pointers lead into buffers
// owned by `_exported`, which is Send + Sync.
unsafe impl Send for ExportTemplate {}
unsafe impl Sync for ExportTemplate {}

impl ExportTemplate {
    pub fn new(batch: &RecordBatch) -> Self {
        let exported = FFI_ArrowArray::new(&StructArray::from(batch.clone()).into_data());
        let (mut nodes, mut child_indices) = (Vec::new(), Vec::new());
        let root: *const ArrowArray = (&exported as *const FFI_ArrowArray).cast();
        // SAFETY: `root` is a valid export tree; only the struct itself moves below, and
        // everything the nodes point at lives in its heap-allocated private data.
        unsafe { flatten(root, &mut nodes, &mut child_indices) };
        Self { _exported: exported, nodes, child_indices }
    }
}

/// Append `array` and its descendants to `nodes` in pre-order; returns its index.
///
/// # Safety
/// `array` is a valid, unreleased export tree.
unsafe fn flatten(
    array: *const ArrowArray,
    nodes: &mut Vec<TemplateNode>,
    child_indices: &mut Vec<usize>,
) -> usize {
    let array = unsafe { &*array };
    let index = nodes.len();
    let n_children = array.n_children as usize;
    nodes.push(TemplateNode {
        length: array.length,
        null_count: array.null_count,
        offset: array.offset,
        n_buffers: array.n_buffers,
        buffers: array.buffers.cast_const(),
        children_start: 0,
        n_children,
        dictionary: None,
    });
    let children: Vec<usize> = (0..n_children)
        .map(|i| unsafe { flatten(*array.children.add(i), nodes, child_indices) })
        .collect();
    let dictionary = (!array.dictionary.is_null())
        .then(|| unsafe { flatten(array.dictionary, nodes, child_indices) });
    let node = &mut nodes[index];
    node.children_start = child_indices.len();
    node.dictionary = dictionary;
    child_indices.extend(children);
    index
}

/// The memory behind one export: nodes 1.. are the root's descendants (node 0 is unused;
/// the root lives in the consumer's struct).
struct Block {
    _batch: Arc<CachedBatch>,
    nodes: UnsafeCell<Box<[ArrowArray]>>,
    children: UnsafeCell<Box<[*mut ArrowArray]>>,
}

/// Export `cached` into `out`; from its second export on, through its template.
///
/// # Safety
/// `out` is valid for writing one `ArrowArray`.
pub(crate) unsafe fn export_cached(cached: &Arc<CachedBatch>, out: *mut ArrowArray) {
    // A batch read once (a single pass, or ingestion through a reader) never pays for
    // a template: only a second read builds one.
    let template = if cached.first_use() { None } else { cached.derived(ExportTemplate::new) };
    let Some(template) = template else {
        let data = StructArray::from(cached.batch().clone()).into_data();
        unsafe { ptr::write(out.cast::<FFI_ArrowArray>(), FFI_ArrowArray::new(&data)) };
        return;
    };
    let count = template.nodes.len();
    let block = Arc::new(Block {
        _batch: cached.clone(),
        nodes: UnsafeCell::new((0..count).map(|_| released()).collect()),
        children: UnsafeCell::new(vec![ptr::null_mut(); template.child_indices.len()].into()),
    });
    // SAFETY: nothing else can see the block yet.
    let nodes = unsafe { &mut *block.nodes.get() };
    let children = unsafe { &mut *block.children.get() };
    let node_ptr = nodes.as_mut_ptr();
    for (slot, &child) in children.iter_mut().zip(&template.child_indices) {
        *slot = unsafe { node_ptr.add(child) };
    }
    let children_ptr = children.as_mut_ptr();
    // Written through `node_ptr` only: the children and dictionary pointers are derived
    // from it, so no other borrow of the nodes may be used from here on.
    for (index, shape) in template.nodes.iter().enumerate() {
        let node = ArrowArray {
            length: shape.length,
            null_count: shape.null_count,
            offset: shape.offset,
            n_buffers: shape.n_buffers,
            n_children: shape.n_children as i64,
            buffers: shape.buffers.cast_mut(),
            children: if shape.n_children == 0 {
                ptr::null_mut()
            } else {
                unsafe { children_ptr.add(shape.children_start) }
            },
            dictionary: shape.dictionary.map_or(ptr::null_mut(), |d| unsafe { node_ptr.add(d) }),
            release: Some(release_node),
            private_data: Arc::into_raw(block.clone()).cast_mut().cast(),
        };
        unsafe { node_ptr.add(index).write(node) };
    }
    // The root moves into the consumer's struct; its slot in the block stays released.
    let root = unsafe { ptr::replace(node_ptr, released()) };
    unsafe { ptr::write(out, root) };
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
    // SAFETY: each live node holds exactly one reference, made by `export_cached`.
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

    #[test]
    fn exports_round_trip_and_outlive_the_cache() {
        let original = batch();
        let cached = Arc::new(CachedBatch::new(original.clone()));
        let mut first = released();
        let mut second = released();
        unsafe {
            export_cached(&cached, &mut first);
            export_cached(&cached, &mut second);
        }
        drop(cached);
        assert_eq!(import(first, &original), original);
        assert_eq!(import(second, &original), original);
    }

    #[test]
    fn a_moved_child_outlives_its_parent() {
        let original = batch();
        let cached = Arc::new(CachedBatch::new(original.clone()));
        let mut root = released();
        unsafe { export_cached(&cached, &mut root) };
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
