//! The export image: the `ArrowArray` structs of a kept tree, laid out once, contiguous,
//! and copied by every export into one allocation, instead of converting the batch again.
//!
//! An image is the root node, then an export block's contents after its header (every
//! node below the root, then the child pointer arrays), with each pointer into the block
//! written as its offset from the block's start. So an export touches a few cache lines
//! and costs one allocation whatever the buffers. Children can be moved out and released
//! on their own, as the C Data Interface allows: every node holds a reference to the
//! block, and the block holds the image's owner, which keeps the tree and its buffers.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::mem::MaybeUninit;
use std::ptr;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::Arc;

use arrow_data::ffi::FFI_ArrowArray;

use crate::abi::ArrowArray;
use crate::kept::{columns_root, gives_columns_away, import_root, take_column, KeptTree};

/// A kept tree with the image every export copies.
#[repr(C)] // what a read touches first, so that a prefetch of the struct's start covers it
pub struct TreeImage {
    image: Box<[u64]>,
    shape: BlockShape,
    _tree: Arc<KeptTree>,
}

impl TreeImage {
    /// Lay out the image of `tree`, an unreleased tree.
    pub fn new(tree: Arc<KeptTree>) -> Self {
        let (mut descendants, mut child_slots) = (0, 0);
        // SAFETY: an unreleased tree is valid to read.
        unsafe { count(tree.root(), &mut descendants, &mut child_slots) };
        let shape = BlockShape::new(descendants, child_slots);
        let words = (descendants + 1) * NODE_WORDS + child_slots;
        let mut builder = ImageBuilder {
            shape,
            image: vec![0; words].into_boxed_slice(),
            next_node: 1,
            next_child: 0,
        };
        // SAFETY: as above; `count` sized the shape and the image for this tree.
        unsafe {
            let root = builder.place(tree.root());
            builder.write_node(0, root);
        }
        Self {
            image: builder.image,
            shape,
            _tree: tree,
        }
    }

    /// What an export reads, for a caller that prefetches it.
    #[inline]
    pub fn words(&self) -> &[u64] {
        &self.image
    }
}

/// A batch's columns, all leaves (no children, no dictionary), moved out of the
/// producer's root into an image with their release callbacks: the image keeps them,
/// and exports overwrite each node's callback with their own.
///
/// The words are the root's length, null count and offset (the rest of the root is the
/// same for every flat batch), then an export block's contents, as for a tree.
#[repr(transparent)] // an `Arc<[u64]>` made in place is cast to `Arc<FlatImage>`
pub struct FlatImage {
    words: [u64],
}

// SAFETY: as for `KeptTree`: the producer's structs are read and released from any
// thread, and nothing writes to the image before it is dropped.
unsafe impl Send for FlatImage {}
// SAFETY: as above.
unsafe impl Sync for FlatImage {}

/// The root's length, null count and offset.
const ROOT_WORDS: usize = 3;

impl FlatImage {
    /// Move the columns of `array` into a new image and release its root, where it is.
    /// `None`, and `array` untouched, when its root cannot give its columns away (a
    /// validity bitmap, a dictionary, no children) or a column is not a leaf.
    pub fn take_columns(array: &mut FFI_ArrowArray) -> Option<Arc<Self>> {
        let root = ArrowArray::of_ffi(array);
        // SAFETY: an unreleased array is valid to read.
        let leaves = unsafe { gives_columns_away(root) }
            && (0..root.n_children as usize).all(|i| {
                // SAFETY: the children of a root that gives them away are valid.
                let child = unsafe { &**root.children.add(i) };
                child.n_children == 0 && child.dictionary.is_null()
            });
        if !leaves {
            return None;
        }
        let columns = root.n_children as usize;
        // SAFETY: each column is taken once.
        let image = Self::build(
            root.length,
            root.null_count,
            root.offset,
            columns,
            |i| unsafe { take_column(root, i) },
        );
        ArrowArray::release_ffi(array); // the producer's root, its columns moved out
        Some(image)
    }

    /// An image of `columns`, leaves without a release (no children, no dictionary) whose
    /// buffers the caller keeps alive as long as the image, under a root of `length` rows.
    pub fn of_leaves(
        length: i64,
        mut columns: impl ExactSizeIterator<Item = ArrowArray>,
    ) -> Arc<Self> {
        Self::build(length, 0, 0, columns.len(), |_| {
            let column = columns.next().expect("an exact count");
            debug_assert!(column.n_children == 0 && column.dictionary.is_null());
            debug_assert!(column.release.is_none());
            column
        })
    }

    /// The image of a root with these fields over the `columns` nodes `column` gives.
    fn build(
        length: i64,
        null_count: i64,
        offset: i64,
        columns: usize,
        mut column: impl FnMut(usize) -> ArrowArray,
    ) -> Arc<Self> {
        let shape = BlockShape::new(columns, columns);
        let mut words = Arc::<[u64]>::new_uninit_slice(ROOT_WORDS + columns * (NODE_WORDS + 1));
        let image = Arc::get_mut(&mut words).expect("a new Arc is unique");
        image[0].write(length as u64);
        image[1].write(null_count as u64);
        image[2].write(offset as u64);
        let nodes = image[ROOT_WORDS..].as_mut_ptr().cast::<ArrowArray>();
        // SAFETY: the image has room for `columns` nodes and `columns` slots, aligned
        // (asserted below).
        unsafe {
            let slots = nodes.add(columns).cast::<u64>();
            for i in 0..columns {
                nodes.add(i).write(column(i));
                slots
                    .add(i)
                    .write((shape.nodes_offset() + i * size_of::<ArrowArray>()) as u64);
            }
        }
        // SAFETY: every word was written above; `FlatImage` is a transparent `[u64]`.
        unsafe { Arc::from_raw(Arc::into_raw(words.assume_init()) as *const FlatImage) }
    }

    /// What an export reads, for a caller that prefetches it.
    #[inline]
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// How many columns the batch has.
    #[inline]
    pub fn columns(&self) -> usize {
        (self.words.len() - ROOT_WORDS) / (NODE_WORDS + 1)
    }

    #[inline]
    fn shape(&self) -> BlockShape {
        let columns = self.columns();
        // Checked by `BlockShape::new` when the image was made.
        BlockShape {
            descendants: columns,
            child_slots: columns,
        }
    }

    /// What an export block holds after its header: the column nodes, then their slots.
    #[inline]
    fn block_words(&self) -> &[u64] {
        &self.words[ROOT_WORDS..]
    }

    /// The root node over `children`, without a release.
    #[inline]
    fn root_over(&self, children: *mut *mut ArrowArray) -> ArrowArray {
        let root = &self.words[..ROOT_WORDS];
        let (length, null_count, offset) = (root[0] as i64, root[1] as i64, root[2] as i64);
        columns_root(length, null_count, offset, self.columns(), children)
    }

    /// The column nodes' addresses, for a root over them.
    fn column_pointers(&self) -> Vec<*mut ArrowArray> {
        (0..self.columns())
            .map(|index| {
                self.block_words()[index * NODE_WORDS..]
                    .as_ptr()
                    .cast::<ArrowArray>()
                    .cast_mut()
            })
            .collect()
    }

    /// `read` a root over the columns, without a release: only to read the tree.
    pub fn read_root<R>(&self, read: impl FnOnce(&ArrowArray) -> R) -> R {
        let mut children = self.column_pointers();
        read(&self.root_over(children.as_mut_ptr()))
    }

    /// A root over the columns for arrow-rs to import: its release drops one reference
    /// to `flat`, which stays intact for exports.
    pub fn shared_import_root(flat: &Arc<FlatImage>) -> FFI_ArrowArray {
        let owner = Box::new(FlatImport {
            children: flat.column_pointers().into_boxed_slice(),
            _flat: flat.clone(),
        });
        let root = flat.root_over(owner.children.as_ptr().cast_mut());
        import_root(root, owner)
    }
}

impl Drop for FlatImage {
    fn drop(&mut self) {
        let nodes = self.words[ROOT_WORDS..].as_mut_ptr().cast::<ArrowArray>();
        for index in 0..self.columns() {
            // SAFETY: a column moved in by `take_columns`, released once, here.
            unsafe {
                let column = nodes.add(index);
                if let Some(release) = (*column).release {
                    release(column);
                }
            }
        }
    }
}

/// What an import root made by [`FlatImage::shared_import_root`] keeps alive.
struct FlatImport {
    children: Box<[*mut ArrowArray]>,
    _flat: Arc<FlatImage>,
}

/// A batch of leaf columns that an export writes straight into its block, without an
/// image in between: for a batch exported about once (read back from disk), where laying
/// an image out would cost as much as the export.
pub trait Leaves {
    /// Rows in the batch.
    fn length(&self) -> i64;
    /// How many columns it has.
    fn columns(&self) -> usize;
    /// Column `index`: a leaf (no children, no dictionary) without a release, whose
    /// buffers and `buffers` list live as long as `self`.
    fn column(&self, index: usize) -> ArrowArray;
}

/// An image to export.
#[derive(Clone, Copy)]
pub enum Image<'a> {
    Tree(&'a TreeImage),
    Flat(&'a FlatImage),
    Leaves(&'a dyn Leaves),
}

/// What an export block holds after its header, as an image lists it.
enum Contents<'a> {
    /// Words to copy.
    Words(std::ops::Range<*const u64>),
    Leaves(&'a dyn Leaves),
}

/// Export into `out` a copy of the image `find` finds in `owner`: a new `ArrowArray` tree
/// in one allocation, which keeps `owner` until its last node is released. Hands `owner`
/// back, and leaves `out` as it was, when it holds no image.
///
/// `find` hands out a reference borrowed from `owner`: the image lives as long as `owner`,
/// which the export keeps, unmoved and shared, so no one can drop the image meanwhile.
pub fn export<O: Send + Sync + 'static>(
    owner: Arc<O>,
    find: impl FnOnce(&O) -> Option<Image<'_>>,
    out: &mut MaybeUninit<ArrowArray>,
) -> Result<(), Arc<O>> {
    const {
        assert!(size_of::<Block<O>>() == size_of::<Block<()>>());
        assert!(align_of::<Block<O>>() == align_of::<Block<()>>());
    }
    // The root node and what the block holds after its header, from any kind of image.
    let (shape, root, contents) = match find(&owner) {
        Some(Image::Flat(image)) => {
            let shape = image.shape();
            let root = image.root_over(ptr::without_provenance_mut(shape.children_offset()));
            (
                shape,
                root,
                Contents::Words(image.block_words().as_ptr_range()),
            )
        }
        Some(Image::Tree(tree)) => {
            // SAFETY: node 0 of a tree's image is its root, written by `TreeImage::new`.
            let root = unsafe { ptr::read(tree.image.as_ptr().cast::<ArrowArray>()) };
            let words = tree.image[NODE_WORDS..].as_ptr_range();
            (tree.shape, root, Contents::Words(words))
        }
        Some(Image::Leaves(leaves)) => {
            let columns = leaves.columns();
            let shape = BlockShape::new(columns, columns);
            let children = ptr::without_provenance_mut(shape.children_offset());
            let root = columns_root(leaves.length(), 0, 0, columns, children);
            (shape, root, Contents::Leaves(leaves))
        }
        None => return Err(owner),
    };
    let layout = shape.layout();
    // SAFETY: the layout has the header's size at least, so it is not zero-sized.
    let base = unsafe { alloc(layout) };
    if base.is_null() {
        handle_alloc_error(layout);
    }
    // SAFETY: the block was allocated for this shape, and `contents` are exactly the
    // block's contents after the header, in an image `owner` keeps, or the leaves that
    // fill it; every offset in them and in `root` points inside the block. Each node of
    // the export holds one of the block's references.
    unsafe {
        let nodes = base.add(shape.nodes_offset());
        match contents {
            Contents::Words(words) => {
                let bytes = words.end.addr() - words.start.addr();
                ptr::copy_nonoverlapping(words.start.cast::<u8>(), nodes, bytes);
            }
            Contents::Leaves(leaves) => {
                let slots = base.add(shape.children_offset()).cast::<usize>();
                for i in 0..shape.descendants {
                    let column = leaves.column(i);
                    debug_assert!(column.n_children == 0 && column.dictionary.is_null());
                    nodes.cast::<ArrowArray>().add(i).write(column);
                    slots
                        .add(i)
                        .write(shape.nodes_offset() + i * size_of::<ArrowArray>());
                }
            }
        }
        let nodes = nodes.cast::<ArrowArray>();
        for i in 0..shape.descendants {
            rebase::<O>(&mut *nodes.add(i), base);
        }
        let children = base.add(shape.children_offset()).cast::<*mut ArrowArray>();
        for i in 0..shape.child_slots {
            let slot = children.add(i);
            *slot = base.add((*slot).addr()).cast();
        }
        // Last: the header takes `owner`, which `contents` borrowed until here.
        base.cast::<Block<O>>().write(Block {
            references: AtomicUsize::new(shape.descendants + 1),
            layout,
            // Keeps the image, and what its nodes point to, alive until the block is freed.
            _owner: owner,
        });
        let exported = out.write(root);
        rebase::<O>(exported, base);
    }
    Ok(())
}

const NODE_WORDS: usize = size_of::<ArrowArray>() / size_of::<u64>();
const _: () = assert!(size_of::<ArrowArray>() % size_of::<u64>() == 0);
const _: () = assert!(align_of::<ArrowArray>() <= align_of::<u64>());

/// Count the nodes below `array` and the child pointers of its whole tree.
///
/// # Safety
/// `array` is a valid, unreleased array tree.
unsafe fn count(array: &ArrowArray, descendants: &mut usize, child_slots: &mut usize) {
    let n_children = array.n_children.max(0) as usize;
    *child_slots += n_children;
    for i in 0..n_children {
        *descendants += 1;
        // SAFETY: a valid tree's child.
        unsafe { count(&**array.children.add(i), descendants, child_slots) };
    }
    // SAFETY: a valid tree's dictionary is NULL or valid.
    if let Some(dictionary) = unsafe { array.dictionary.as_ref() } {
        *descendants += 1;
        // SAFETY: as above.
        unsafe { count(dictionary, descendants, child_slots) };
    }
}

/// Lays a tree out in block order: nodes depth first, each node's child pointers together.
struct ImageBuilder {
    shape: BlockShape,
    image: Box<[u64]>,
    /// Node 0 is the root; the block holds the nodes from 1 on.
    next_node: usize,
    next_child: usize,
}

impl ImageBuilder {
    /// `source` as an image node, with its descendants placed after it. Its release stays
    /// unset until an export rebases it.
    ///
    /// # Safety
    /// `source` is a valid tree that fits the shape.
    unsafe fn place(&mut self, source: &ArrowArray) -> ArrowArray {
        let n_children = source.n_children.max(0) as usize;
        let children = if n_children == 0 {
            0
        } else {
            let first = self.next_child;
            self.next_child += n_children;
            let slots = (self.shape.descendants + 1) * NODE_WORDS + first;
            for i in 0..n_children {
                // SAFETY: a valid tree's child, which fits the shape.
                let child = unsafe { self.place_below(&**source.children.add(i)) };
                self.image[slots + i] = child as u64;
            }
            self.shape.children_offset() + first * size_of::<*mut ArrowArray>()
        };
        // SAFETY: a valid tree's dictionary is NULL or valid.
        let dictionary = match unsafe { source.dictionary.as_ref() } {
            // SAFETY: as above.
            Some(dictionary) => unsafe { self.place_below(dictionary) },
            None => 0,
        };
        ArrowArray {
            children: ptr::without_provenance_mut(children),
            dictionary: ptr::without_provenance_mut(dictionary),
            release: None,
            private_data: ptr::null_mut(),
            ..*source
        }
    }

    /// Place `source` as the next node below the root; returns its offset in a block.
    ///
    /// # Safety
    /// As for [`place`](Self::place).
    unsafe fn place_below(&mut self, source: &ArrowArray) -> usize {
        let index = self.next_node;
        self.next_node += 1;
        // SAFETY: as the caller promised.
        let node = unsafe { self.place(source) };
        // SAFETY: `count` gave every node below the root an index.
        unsafe { self.write_node(index, node) };
        self.shape.nodes_offset() + (index - 1) * size_of::<ArrowArray>()
    }

    /// # Safety
    /// `index` is a node of the shape.
    unsafe fn write_node(&mut self, index: usize, node: ArrowArray) {
        let words = &mut self.image[index * NODE_WORDS..(index + 1) * NODE_WORDS];
        // SAFETY: `ArrowArray` is plain data of whole words (asserted above).
        unsafe { words.as_mut_ptr().cast::<ArrowArray>().write(node) };
    }
}

/// The layout of one export's allocation: a [`Block`] header, then every node below the
/// root (the root lives in the consumer's struct), then the child pointer arrays.
/// Two counts, the rest computed: every kept batch keeps one.
#[derive(Clone, Copy)]
struct BlockShape {
    descendants: usize,
    child_slots: usize,
}

/// Every block's header has this size, whatever its owner's type (asserted in `export`).
type AnyBlock = Block<()>;

impl BlockShape {
    /// Where the nodes start: right after the header, whatever the tree.
    const NODES_OFFSET: usize = size_of::<AnyBlock>().next_multiple_of(align_of::<ArrowArray>());

    fn new(descendants: usize, child_slots: usize) -> Self {
        // A tree that overflows a layout could not be in memory in the first place.
        const TREE_FITS: &str = "an array tree in memory has a layout";
        let nodes = Layout::array::<ArrowArray>(descendants).expect(TREE_FITS);
        let (layout, nodes_offset) = Layout::new::<AnyBlock>().extend(nodes).expect(TREE_FITS);
        let children = Layout::array::<*mut ArrowArray>(child_slots).expect(TREE_FITS);
        let (layout, children_offset) = layout.extend(children).expect(TREE_FITS);
        let shape = Self {
            descendants,
            child_slots,
        };
        // The accessors compute the same without checks.
        debug_assert_eq!(nodes_offset, Self::NODES_OFFSET);
        debug_assert_eq!(children_offset, shape.children_offset());
        debug_assert_eq!(layout.pad_to_align(), shape.layout());
        shape
    }

    #[inline]
    fn nodes_offset(self) -> usize {
        Self::NODES_OFFSET
    }

    #[inline]
    fn children_offset(self) -> usize {
        Self::NODES_OFFSET + self.descendants * size_of::<ArrowArray>()
    }

    #[inline]
    fn layout(self) -> Layout {
        let size = self.children_offset() + self.child_slots * size_of::<*mut ArrowArray>();
        // SAFETY: `new` checked that this layout exists; node and pointer sizes are
        // multiples of the header's alignment, so no padding is needed.
        unsafe { Layout::from_size_align_unchecked(size, align_of::<AnyBlock>()) }
    }
}

const _: () = assert!(size_of::<ArrowArray>() % align_of::<AnyBlock>() == 0);
const _: () = assert!(size_of::<*mut ArrowArray>() % align_of::<AnyBlock>() == 0);
const _: () = assert!(align_of::<ArrowArray>() <= align_of::<AnyBlock>());

/// The header of one export's allocation ([`BlockShape`] gives the rest). The nodes are
/// plain structs, so freeing the block only drops this header.
struct Block<O> {
    /// One for each node of the export not yet released, the root included.
    references: AtomicUsize,
    layout: Layout,
    /// Keeps the image, and so every buffer the nodes point to, alive.
    _owner: Arc<O>,
}

impl<O> Block<O> {
    /// Give back `count` references; the last one frees the block.
    ///
    /// # Safety
    /// The caller holds `count` references to `block`, and uses none of them after this.
    unsafe fn drop_references(block: *mut Self, count: usize) {
        // The same ordering as `Arc`: uses through every reference happen before the free.
        // SAFETY: the block lives while the caller holds references.
        if unsafe { &(*block).references }.fetch_sub(count, Ordering::Release) != count {
            return;
        }
        fence(Ordering::Acquire);
        // SAFETY: the last references are gone: the header is dropped and the block freed
        // once, with the layout it was allocated with.
        unsafe {
            let layout = (*block).layout;
            ptr::drop_in_place(block);
            dealloc(block.cast(), layout);
        }
    }
}

/// Turn an image node's offsets into pointers into the block at `base`, and make it a
/// node of the block.
///
/// # Safety
/// `node` comes from an image of the block's shape.
unsafe fn rebase<O>(node: &mut ArrowArray, base: *mut u8) {
    if !node.children.is_null() {
        // SAFETY: an offset inside the block.
        node.children = unsafe { base.add(node.children.addr()) }.cast();
    }
    if !node.dictionary.is_null() {
        // SAFETY: as above.
        node.dictionary = unsafe { base.add(node.dictionary.addr()) }.cast();
    }
    // A flat image's nodes carry their producer's callback, a tree image's none.
    node.release = Some(release_node::<O>);
    node.private_data = base.cast();
}

/// Release one node, and with it the children and dictionary not moved out.
unsafe extern "C" fn release_node<O>(array: *mut ArrowArray) {
    // SAFETY: a release callback gets a valid array, or NULL from a careless caller.
    let Some(array) = (unsafe { array.as_mut() }) else {
        return;
    };
    let block = array.private_data.cast::<Block<O>>();
    // SAFETY: every node of the block holds one reference, given back here at once.
    unsafe {
        let released = release_in_block(array, block);
        Block::drop_references(block, released);
    }
}

/// Mark `array` and the descendants still in it released; returns how many nodes of
/// `block` that was, so their references go back in one atomic operation.
///
/// # Safety
/// `array` is an unreleased node of `block`.
unsafe fn release_in_block<O>(array: &mut ArrowArray, block: *mut Block<O>) -> usize {
    let mut released = 1;
    let dictionary = [array.dictionary].into_iter().filter(|d| !d.is_null());
    // SAFETY: a node's child list holds `n_children` pointers.
    let children = (0..array.n_children.max(0) as usize).map(|i| unsafe { *array.children.add(i) });
    for node in children.chain(dictionary) {
        // SAFETY: a child or dictionary of an unreleased node is valid.
        let node = unsafe { &mut *node };
        match node.release {
            None => {} // moved out by the consumer
            Some(_) if node.private_data == block.cast() => {
                // SAFETY: an unreleased node of the same block.
                released += unsafe { release_in_block(node, block) };
            }
            // SAFETY: a node the consumer put there, released as its parent is.
            Some(release) => unsafe { release(node) },
        }
    }
    array.release = None;
    array.private_data = ptr::null_mut();
    released
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type};
    use arrow_array::{
        Array, ArrayRef, DictionaryArray, Int64Array, ListArray, RecordBatch, StringArray,
        StructArray,
    };
    use arrow_schema::{DataType, Field};

    fn batch() -> RecordBatch {
        let ids = Arc::new(Int64Array::from(vec![Some(1), None, Some(3)]));
        let keys = arrow_array::Int32Array::from(vec![0, 1, 0]);
        let dict =
            DictionaryArray::try_new(keys, Arc::new(StringArray::from(vec!["a", "b"]))).unwrap();
        // Nodes two levels down, and a dictionary below a child: every kind of offset.
        let lists = ListArray::from_iter_primitive::<Int32Type, _, _>([
            Some(vec![Some(1), None]),
            None,
            Some(vec![]),
        ]);
        let nested = StructArray::from(vec![(
            Arc::new(Field::new("values", lists.data_type().clone(), true)),
            Arc::new(lists) as ArrayRef,
        )]);
        RecordBatch::try_from_iter([
            ("id", ids as ArrayRef),
            ("tag", Arc::new(dict) as _),
            ("nested", Arc::new(nested) as _),
        ])
        .unwrap()
    }

    fn import(array: ArrowArray, data_type: DataType) -> ArrayData {
        // SAFETY: an export of ours, of this type.
        unsafe { arrow_array::ffi::from_ffi_and_data_type(array.into_ffi(), data_type) }.unwrap()
    }

    fn import_batch(array: ArrowArray, batch: &RecordBatch) -> RecordBatch {
        let data_type = DataType::Struct(batch.schema().fields().clone());
        RecordBatch::from(StructArray::from(import(array, data_type)))
    }

    use arrow_data::ArrayData;

    /// The image of `batch` as the import keeps it: the producer's tree under our root.
    fn kept(batch: &RecordBatch) -> Arc<TreeImage> {
        let produced = FFI_ArrowArray::new(&StructArray::from(batch.clone()).into_data());
        Arc::new(TreeImage::new(Arc::new(KeptTree::new(produced))))
    }

    fn export_tree(owner: &Arc<TreeImage>) -> ArrowArray {
        let mut out = MaybeUninit::uninit();
        let found = export(owner.clone(), |image| Some(Image::Tree(image)), &mut out);
        assert!(found.is_ok(), "an image was found");
        // SAFETY: `export` wrote it.
        unsafe { out.assume_init() }
    }

    /// An export of a kept batch that outlived its image's owner, with the batch, its
    /// first buffer and that buffer's strong count without the image: the export alone
    /// keeps the producer's tree.
    fn sole_export() -> (RecordBatch, arrow_buffer::Buffer, usize, ArrowArray) {
        let original = batch();
        let buffer = original.column(0).to_data().buffers()[0].clone();
        let alone = buffer.strong_count();
        let out = export_tree(&kept(&original));
        (original, buffer, alone, out)
    }

    #[test]
    fn exports_round_trip_and_outlive_the_image() {
        let original = batch();
        let image = kept(&original);
        let exports = [
            export_tree(&image),
            export_tree(&image),
            export_tree(&image),
        ];
        drop(image);
        for out in exports {
            assert_eq!(import_batch(out, &original), original);
        }
    }

    #[test]
    fn an_owner_without_an_image_is_handed_back() {
        let owner = Arc::new(());
        let back = export(owner.clone(), |_| None, &mut MaybeUninit::uninit()).unwrap_err();
        assert!(Arc::ptr_eq(&back, &owner));
    }

    #[test]
    fn the_producer_tree_is_released_once_everything_is_gone() {
        let (original, buffer, alone, out) = sole_export();
        assert!(
            buffer.strong_count() > alone,
            "an export keeps the producer's tree"
        );
        let reimported = import_batch(out, &original);
        assert_eq!(reimported, original);
        drop(reimported);
        assert_eq!(
            buffer.strong_count(),
            alone,
            "the producer's tree was not released"
        );
    }

    #[test]
    fn a_moved_grandchild_keeps_the_block_until_it_is_released() {
        let (_original, buffer, alone, mut root) = sole_export();
        // The list below column "nested", moved out; then its grandparent is released.
        // SAFETY: an unreleased export of ours; the moved node is replaced by a released one.
        let mut moved = unsafe {
            let nested = &mut **root.children.add(2);
            ptr::replace(*nested.children, ArrowArray::RELEASED)
        };
        // SAFETY: an unreleased export, released once.
        unsafe { (root.release.unwrap())(&mut root) };
        assert!(root.release.is_none());
        assert!(
            buffer.strong_count() > alone,
            "the moved node's block was freed while the node was alive"
        );
        // SAFETY: the moved node, unreleased, released once.
        unsafe { (moved.release.unwrap())(&mut moved) };
        assert!(moved.release.is_none());
        assert_eq!(
            buffer.strong_count(),
            alone,
            "the block outlived its last node"
        );
    }

    #[test]
    fn a_moved_child_outlives_its_parent() {
        let original = batch();
        let image = kept(&original);
        let mut root = export_tree(&image);
        // SAFETY: an unreleased export, released once.
        unsafe { (root.release.unwrap())(&mut root) };
        let mut root = export_tree(&image);
        // Move child 0 out, as a consumer may, then release the parent first.
        // SAFETY: an unreleased export of ours; the moved node is replaced by a released one.
        let moved = unsafe { ptr::replace(*root.children, ArrowArray::RELEASED) };
        // SAFETY: an unreleased export, released once.
        unsafe { (root.release.unwrap())(&mut root) };
        drop(image);
        let ids = arrow_array::make_array(import(moved, DataType::Int64));
        assert_eq!(ids.as_primitive::<Int64Type>().value(2), 3);
        assert!(ids.is_null(1));
    }

    #[test]
    fn a_root_with_an_offset_keeps_it_below_our_own_root() {
        let original = batch();
        // A producer may put a slice's offset on the root, over whole children.
        let whole = FFI_ArrowArray::new(&StructArray::from(original.clone()).into_data());
        let mut raw = ArrowArray::from_ffi(whole);
        (raw.offset, raw.length) = (1, 2);
        // SAFETY: arrow-rs's export, sliced within its children's rows.
        let tree = Arc::new(KeptTree::new(unsafe { raw.into_ffi() }));
        assert_eq!((tree.root().offset, tree.root().length), (1, 2));
        let expected = original.slice(1, 2);
        let root = KeptTree::shared_import_root(&tree);
        let image = Arc::new(TreeImage::new(tree));
        let data_type = DataType::Struct(original.schema().fields().clone());
        // SAFETY: a root over arrow-rs's export, of its type.
        let data = unsafe { arrow_array::ffi::from_ffi_and_data_type(root, data_type) }.unwrap();
        assert_eq!(RecordBatch::from(StructArray::from(data)), expected);
        assert_eq!(import_batch(export_tree(&image), &original), expected);
    }

    /// A batch of leaf columns only: nullable integers, strings and booleans.
    fn flat_batch() -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                "id",
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])) as ArrayRef,
            ),
            ("s", Arc::new(StringArray::from(vec!["ab", "", "cde"])) as _),
            (
                "b",
                Arc::new(arrow_array::BooleanArray::from(vec![true, false, true])) as _,
            ),
        ])
        .unwrap()
    }

    /// An owner of a flat image, as a cached batch is.
    struct Flat(Arc<FlatImage>);

    fn export_flat(owner: &Arc<Flat>) -> ArrowArray {
        let mut out = MaybeUninit::uninit();
        let found = export(owner.clone(), |flat| Some(Image::Flat(&flat.0)), &mut out);
        assert!(found.is_ok(), "an image was found");
        // SAFETY: `export` wrote it.
        unsafe { out.assume_init() }
    }

    #[test]
    fn a_flat_image_exports_imports_and_releases_its_columns_once_everything_is_gone() {
        let original = flat_batch();
        let buffer = original.column(0).to_data().buffers()[0].clone();
        let alone = buffer.strong_count();
        let slice = StructArray::from(original.slice(1, 2)).into_data();
        let mut produced = FFI_ArrowArray::new(&slice);
        drop(slice);
        let image = FlatImage::take_columns(&mut produced).expect("leaf columns are kept flat");
        assert!(produced.is_released(), "the producer's root was released");
        assert_eq!(image.columns(), 3);
        let owner = Arc::new(Flat(image));
        assert!(
            buffer.strong_count() > alone,
            "the image keeps the producer's columns"
        );
        let first = export_flat(&owner);
        let mut second = export_flat(&owner);
        assert_eq!(import_batch(first, &original), original.slice(1, 2));
        let data_type = DataType::Struct(original.schema().fields().clone());
        let root = FlatImage::shared_import_root(&owner.0);
        // SAFETY: a root over the image's columns, of their type.
        let data = unsafe { arrow_array::ffi::from_ffi_and_data_type(root, data_type) }.unwrap();
        let made = RecordBatch::from(StructArray::from(data));
        assert_eq!(made, original.slice(1, 2));
        // A column moved out of an export outlives its parent and the image.
        // SAFETY: an unreleased export of ours; the moved node is replaced by a released one.
        let moved = unsafe { ptr::replace(*second.children.add(1), ArrowArray::RELEASED) };
        // SAFETY: an unreleased export, released once.
        unsafe { (second.release.unwrap())(&mut second) };
        drop(owner);
        let strings = arrow_array::make_array(import(moved, DataType::Utf8));
        assert_eq!(strings.as_string::<i32>().value(1), "cde");
        drop(strings);
        assert!(
            buffer.strong_count() > alone,
            "the made batch keeps the columns"
        );
        drop(made);
        assert_eq!(
            buffer.strong_count(),
            alone,
            "the producer's columns were not released"
        );
    }

    /// An owner of leaf columns, as a batch read back from disk is: the buffers of a
    /// batch's flat columns, listed as C lists them.
    struct OwnLeaves {
        batch: RecordBatch,
        buffers: Vec<Vec<*const std::ffi::c_void>>,
    }

    // SAFETY: the addresses are of the immutable buffers of the batch it holds.
    unsafe impl Send for OwnLeaves {}
    // SAFETY: as above.
    unsafe impl Sync for OwnLeaves {}

    impl Leaves for OwnLeaves {
        fn length(&self) -> i64 {
            self.batch.num_rows() as i64
        }

        fn columns(&self) -> usize {
            self.buffers.len()
        }

        fn column(&self, index: usize) -> ArrowArray {
            let column = self.batch.column(index);
            let buffers = &self.buffers[index];
            ArrowArray::leaf(
                column.len() as i64,
                column.null_count() as i64,
                0,
                buffers.as_ptr(),
                buffers.len(),
            )
        }
    }

    #[test]
    fn leaves_are_exported_straight_into_a_block_that_keeps_their_owner() {
        let original = flat_batch();
        let buffers = original
            .columns()
            .iter()
            .map(|column| {
                let data = column.to_data();
                let validity = data.nulls().map_or(ptr::null(), |n| n.buffer().as_ptr());
                let own = data.buffers().iter().map(|b| b.as_ptr());
                std::iter::once(validity)
                    .chain(own)
                    .map(|p| p.cast())
                    .collect()
            })
            .collect();
        let buffer = original.column(1).to_data().buffers()[1].clone();
        let owner = Arc::new(OwnLeaves {
            batch: original.clone(),
            buffers,
        });
        let export_leaves = || {
            let mut out = MaybeUninit::uninit();
            let found = export(owner.clone(), |own| Some(Image::Leaves(own)), &mut out);
            assert!(found.is_ok(), "leaves were found");
            // SAFETY: `export` wrote it.
            unsafe { out.assume_init() }
        };
        let first = export_leaves();
        let mut second = export_leaves();
        assert_eq!(import_batch(first, &original), original);
        // A column moved out of an export outlives its parent and the owner.
        // SAFETY: an unreleased export of ours; the moved node is replaced by a released one.
        let moved = unsafe { ptr::replace(*second.children.add(1), ArrowArray::RELEASED) };
        // SAFETY: an unreleased export, released once.
        unsafe { (second.release.unwrap())(&mut second) };
        drop(owner);
        drop(original);
        assert_eq!(buffer.strong_count(), 2, "the moved column keeps the owner");
        let strings = arrow_array::make_array(import(moved, DataType::Utf8));
        assert_eq!(strings.as_string::<i32>().value(2), "cde");
        drop(strings);
        assert_eq!(
            buffer.strong_count(),
            1,
            "the owner outlived the last export"
        );
    }

    #[test]
    fn a_root_with_a_validity_bitmap_is_not_kept_flat() {
        let original = flat_batch();
        let validity = arrow_buffer::NullBuffer::from(vec![true, true, false]);
        let rows = StructArray::new(
            original.schema().fields().clone(),
            original.columns().to_vec(),
            Some(validity),
        );
        let mut produced = FFI_ArrowArray::new(&rows.into_data());
        assert!(FlatImage::take_columns(&mut produced).is_none());
        assert!(!produced.is_released());
    }
}
