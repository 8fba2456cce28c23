//! Fast array export: every read of a cached batch copies an image of the `ArrowArray`
//! structs of one array tree kept for the batch, instead of converting the batch again.
//!
//! The kept tree is the upstream producer's own columns (under a root of ours) when the
//! batch came through the C stream import (so a replay costs no conversion at all), or an
//! arrow-rs export made on the batch's second read otherwise. Its image is laid out once,
//! contiguous, so a read touches a few cache lines, and costs one allocation (a block
//! holding the nodes and their child pointers) whatever the buffers. Children can be moved
//! out and released on their own, as the C Data Interface allows: every node holds a
//! reference to the block, and the block keeps the cached batch (so the kept tree and its
//! buffers) alive.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ffi::c_void;
use std::ptr;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::Arc;

use arrow_array::{Array, RecordBatch, StructArray};
use arrow_data::ffi::FFI_ArrowArray;
use arrow_schema::{ArrowError, SchemaRef};

use crate::abi::ArrowArray;
use crate::upstream::{flat_buffers, import_batch};
use batchcorder_core::storage::{prefetch, Allocations, CachedBatch, Derived};

/// An `ArrowArray` tree this library owns; released when dropped.
///
/// A root without a validity buffer or dictionary (every record batch a stream hands
/// over) is not kept: its children are moved out, as the C Data Interface allows, and
/// the producer's root is released at once, below a root of our own. What a producer
/// keeps for the root alone is then freed at ingestion instead of living as long as the
/// cached batch: pyarrow builds a struct type, its name map and a struct array for every
/// batch it exports (bench/notes.md has the figures).
pub(crate) struct OwnedArray {
    root: ArrowArray,
    /// The moved children; empty when the producer's root is kept whole.
    children: Vec<ArrowArray>,
    /// What `root.children` points to.
    _child_pointers: Vec<*mut ArrowArray>,
}

// SAFETY: the C Data Interface lets a consumer read an array and call its `release` from
// any thread (arrow-rs's `FFI_ArrowArray` is Send + Sync on the same grounds); nothing
// here writes to the tree after it is built.
unsafe impl Send for OwnedArray {}
unsafe impl Sync for OwnedArray {}

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
unsafe fn gives_columns_away(root: &ArrowArray) -> bool {
    let validity =
        (root.n_buffers > 0 && !root.buffers.is_null()).then(|| unsafe { *root.buffers });
    root.n_children > 0
        && root.dictionary.is_null()
        && validity.is_none_or(|v| v.is_null())
        && !root.children.is_null()
        && (0..root.n_children as usize).all(|i| unsafe { !(*root.children.add(i)).is_null() })
}

/// Move column `index` out of `root`, which [`gives_columns_away`], marking it released
/// there.
///
/// # Safety
/// As for [`gives_columns_away`]; each column is taken once.
unsafe fn take_column(root: &ArrowArray, index: usize) -> ArrowArray {
    unsafe {
        let child = *root.children.add(index);
        let moved = ptr::read(child);
        (*child).release = None;
        moved
    }
}

/// A root of our own over `columns` column structs at `children`: a struct array with no
/// validity bitmap, and no release of its own.
fn columns_root(
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
fn import_root<T>(root: ArrowArray, owner: Box<T>) -> FFI_ArrowArray {
    let proxy = ArrowArray {
        release: Some(release_owner::<T>),
        private_data: Box::into_raw(owner).cast(),
        ..root
    };
    // SAFETY: the layouts are equal (abi.rs).
    unsafe { std::mem::transmute::<ArrowArray, FFI_ArrowArray>(proxy) }
}

unsafe extern "C" fn release_owner<T>(array: *mut ArrowArray) {
    let Some(array) = (unsafe { array.as_mut() }) else {
        return;
    };
    let owner = array.private_data.cast::<T>();
    array.release = None;
    array.private_data = ptr::null_mut();
    // SAFETY: made by `Box::into_raw` in `import_root`, released once.
    drop(unsafe { Box::from_raw(owner) });
}

impl OwnedArray {
    /// Take ownership of an unreleased array.
    pub fn new(array: FFI_ArrowArray) -> Self {
        // SAFETY: the layouts are equal (abi.rs); `forget` hands the release to us.
        let mut root = unsafe { ptr::read((&array as *const FFI_ArrowArray).cast::<ArrowArray>()) };
        std::mem::forget(array);
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
        // SAFETY: each column is taken once.
        let mut children: Vec<ArrowArray> = (0..columns)
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
            unsafe { release(&mut root) };
        }
        Self {
            root: own_root,
            children,
            _child_pointers: child_pointers,
        }
    }

    /// A root struct over the same tree for arrow-rs to import: its release drops one
    /// reference to `tree` instead of releasing the tree, which stays intact for exports.
    pub fn shared_import_root(tree: &Arc<OwnedArray>) -> FFI_ArrowArray {
        import_root(ArrowArray { ..tree.root }, Box::new(tree.clone()))
    }
}

impl Drop for OwnedArray {
    fn drop(&mut self) {
        for array in self
            .children
            .iter_mut()
            .chain(std::iter::once(&mut self.root))
        {
            if let Some(release) = array.release {
                unsafe { release(array) };
            }
        }
    }
}

/// The array tree kept for one cached batch, with the image every export copies.
///
/// An image is the root node, then an export block's contents after its header (every
/// node below the root, then the child pointer arrays), with each pointer into the block
/// written as its offset from the block's start. One contiguous copy, so a replay touches
/// a few cache lines per batch instead of chasing the tree's own pointers.
#[repr(C)] // what a read touches first, so that the prefetch of the struct's start covers it
pub(crate) struct ExportRoot {
    image: Box<[u64]>,
    shape: BlockShape,
    _tree: Arc<OwnedArray>,
}

impl ExportRoot {
    /// Keep `tree`, an unreleased array tree of a batch imported already, for exports.
    pub fn new(tree: Arc<OwnedArray>) -> Self {
        let (mut descendants, mut child_slots) = (0, 0);
        // SAFETY: an unreleased tree is valid to read.
        unsafe { count(&tree.root, &mut descendants, &mut child_slots) };
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
            let root = builder.place(&tree.root);
            builder.write_node(0, root);
        }
        Self {
            image: builder.image,
            shape,
            _tree: tree,
        }
    }
}

impl Derived for ExportRoot {
    /// The image is what a read copies.
    fn prefetch(&self) {
        prefetch_words(&self.image);
    }
}

/// A batch whose columns are all leaves (no children, no dictionary), kept as the
/// producer's own column structs, moved into an image with their release callbacks: one
/// allocation, with its reference counts, keeps and exports the batch, and exports
/// overwrite each node's callback. It is the whole of a [`CachedBatch::deferred`],
/// imported into arrow-rs as a batch of `schema` when a `RecordBatch` is needed.
pub(crate) struct FlatExport {
    image: Arc<FlatImage>,
    schema: SchemaRef,
}

/// A flat batch's image: the root's length, null count and offset (the rest of the root
/// is the same for every flat batch), then an export block's contents, as for a tree.
#[repr(transparent)] // an `Arc<[u64]>` made in place is cast to `Arc<FlatImage>`
pub(crate) struct FlatImage {
    words: [u64],
}

// SAFETY: as for `OwnedArray`: the producer's structs are read and released from any
// thread, and nothing writes to the image before it is dropped.
unsafe impl Send for FlatImage {}
unsafe impl Sync for FlatImage {}

/// The root's length, null count and offset.
const ROOT_WORDS: usize = 3;

impl FlatExport {
    /// Keep `array`, a batch that [`check_shape`] accepted for the rows of `schema` and
    /// whose columns are all leaves, with its column structs moved into the image and its
    /// root released. Hands `array` back when its root cannot give its columns away (a
    /// validity bitmap, a dictionary, no children).
    ///
    /// [`check_shape`]: crate::upstream
    pub fn new(array: FFI_ArrowArray, schema: SchemaRef) -> Result<Self, FFI_ArrowArray> {
        // SAFETY: the layouts are equal (abi.rs); an unreleased array is valid to read.
        let root = unsafe { &*(&array as *const FFI_ArrowArray).cast::<ArrowArray>() };
        // SAFETY: an unreleased array is valid to read, and so are the children of one
        // that gives them away.
        let leaves = unsafe { gives_columns_away(root) }
            && (0..root.n_children as usize).all(|i| unsafe {
                let child = *root.children.add(i);
                (*child).n_children == 0 && (*child).dictionary.is_null()
            });
        if !leaves {
            return Err(array);
        }
        let columns = root.n_children as usize;
        let shape = BlockShape::new(columns, columns);
        let mut words = Arc::<[u64]>::new_uninit_slice(ROOT_WORDS + columns * (NODE_WORDS + 1));
        let image = Arc::get_mut(&mut words).expect("a new Arc is unique");
        image[0].write(root.length as u64);
        image[1].write(root.null_count as u64);
        image[2].write(root.offset as u64);
        let nodes = image[ROOT_WORDS..].as_mut_ptr().cast::<ArrowArray>();
        // SAFETY: the image has room for `columns` nodes and `columns` slots; each column
        // is taken once.
        unsafe {
            let slots = nodes.add(columns).cast::<u64>();
            for i in 0..columns {
                nodes.add(i).write(take_column(root, i));
                slots
                    .add(i)
                    .write((shape.nodes_offset() + i * size_of::<ArrowArray>()) as u64);
            }
        }
        drop(array); // the producer's root, its columns moved out

        // SAFETY: every word was written above; `FlatImage` is a transparent `[u64]`.
        let image =
            unsafe { Arc::from_raw(Arc::into_raw(words.assume_init()) as *const FlatImage) };
        Ok(Self { image, schema })
    }
}

impl Derived for FlatExport {
    /// The image is what a read copies.
    fn prefetch(&self) {
        prefetch_words(&self.image.words);
    }

    fn to_batch(&self) -> Option<Result<RecordBatch, ArrowError>> {
        Some(import_batch(
            FlatImage::shared_import_root(&self.image),
            &self.schema,
        ))
    }

    fn allocations(&self) -> Option<Allocations> {
        let mut children = self.image.column_pointers();
        let root = self.image.root_over(children.as_mut_ptr());
        // SAFETY: the producer's columns, checked when the batch was pulled and unreleased
        // while the image lives.
        let found = unsafe { flat_buffers(&root, &self.schema) }
            .ok()
            .flatten()?;
        Some(Allocations::of_buffers(found))
    }
}

impl FlatImage {
    fn columns(&self) -> usize {
        (self.words.len() - ROOT_WORDS) / (NODE_WORDS + 1)
    }

    fn shape(&self) -> BlockShape {
        let columns = self.columns();
        // Checked by `BlockShape::new` when the image was made.
        BlockShape {
            descendants: columns,
            child_slots: columns,
        }
    }

    /// What an export block holds after its header: the column nodes, then their slots.
    fn block_words(&self) -> &[u64] {
        &self.words[ROOT_WORDS..]
    }

    /// The root node over `children`, without a release.
    fn root_over(&self, children: *mut *mut ArrowArray) -> ArrowArray {
        let [length, null_count, offset] = [0, 1, 2].map(|i| self.words[i] as i64);
        columns_root(length, null_count, offset, self.columns(), children)
    }

    /// The root node of an export of `shape` (this image's), with the children as an
    /// offset into the block.
    fn root(&self, shape: BlockShape) -> ArrowArray {
        ArrowArray {
            release: Some(release_node),
            ..self.root_over(ptr::without_provenance_mut(shape.children_offset()))
        }
    }

    /// The column nodes' addresses, for a root that arrow-rs or `flat_buffers` reads.
    fn column_pointers(&self) -> Vec<*mut ArrowArray> {
        (0..self.columns()).map(|i| self.column(i)).collect()
    }

    /// Column `index`'s node, for arrow-rs's import to read.
    fn column(&self, index: usize) -> *mut ArrowArray {
        self.block_words()[index * NODE_WORDS..]
            .as_ptr()
            .cast::<ArrowArray>()
            .cast_mut()
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
            // SAFETY: a column moved in by `FlatExport::new`, released once, here.
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

const NODE_WORDS: usize = size_of::<ArrowArray>() / size_of::<u64>();
const _: () = assert!(size_of::<ArrowArray>() % size_of::<u64>() == 0);
const _: () = assert!(align_of::<ArrowArray>() <= align_of::<u64>());

fn prefetch_words(words: &[u64]) {
    for line in words.chunks(CACHE_LINE_WORDS) {
        prefetch(line.as_ptr());
    }
}

const CACHE_LINE_WORDS: usize = 64 / size_of::<u64>();

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

/// Lays a tree out in block order: nodes depth first, each node's child pointers together.
struct ImageBuilder {
    shape: BlockShape,
    image: Box<[u64]>,
    /// Node 0 is the root; the block holds the nodes from 1 on.
    next_node: usize,
    next_child: usize,
}

impl ImageBuilder {
    /// `source` as an image node, with its descendants placed after it.
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
                let child = unsafe { self.place_below(&**source.children.add(i)) };
                self.image[slots + i] = child as u64;
            }
            self.shape.children_offset() + first * size_of::<*mut ArrowArray>()
        };
        let dictionary = match unsafe { source.dictionary.as_ref() } {
            Some(dictionary) => unsafe { self.place_below(dictionary) },
            None => 0,
        };
        ArrowArray {
            children: ptr::without_provenance_mut(children),
            dictionary: ptr::without_provenance_mut(dictionary),
            release: Some(release_node),
            private_data: ptr::null_mut(),
            ..*source
        }
    }

    /// Place `source` as the next node below the root; returns its offset in a block.
    unsafe fn place_below(&mut self, source: &ArrowArray) -> usize {
        let index = self.next_node;
        self.next_node += 1;
        let node = unsafe { self.place(source) };
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
/// Two counts, the rest computed: every cached batch keeps one.
#[derive(Clone, Copy)]
struct BlockShape {
    descendants: usize,
    child_slots: usize,
}

impl BlockShape {
    /// Where the nodes start: right after the header, whatever the tree.
    const NODES_OFFSET: usize = size_of::<Block>().next_multiple_of(align_of::<ArrowArray>());

    fn new(descendants: usize, child_slots: usize) -> Self {
        // A tree that overflows a layout could not be in memory in the first place.
        const TREE_FITS: &str = "an array tree in memory has a layout";
        let nodes = Layout::array::<ArrowArray>(descendants).expect(TREE_FITS);
        let (layout, nodes_offset) = Layout::new::<Block>().extend(nodes).expect(TREE_FITS);
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

    fn nodes_offset(self) -> usize {
        Self::NODES_OFFSET
    }

    fn children_offset(self) -> usize {
        Self::NODES_OFFSET + self.descendants * size_of::<ArrowArray>()
    }

    fn layout(self) -> Layout {
        let size = self.children_offset() + self.child_slots * size_of::<*mut ArrowArray>();
        // SAFETY: `new` checked that this layout exists; node and pointer sizes are
        // multiples of the header's alignment, so no padding is needed.
        unsafe { Layout::from_size_align_unchecked(size, align_of::<Block>()) }
    }
}

const _: () = assert!(size_of::<ArrowArray>() % align_of::<Block>() == 0);
const _: () = assert!(size_of::<*mut ArrowArray>() % align_of::<Block>() == 0);
const _: () = assert!(align_of::<ArrowArray>() <= align_of::<Block>());

/// The header of one export's allocation ([`BlockShape`] gives the rest). The nodes are
/// plain structs, so freeing the block only drops this header.
struct Block {
    /// One for each node of the export not yet released, the root included.
    references: AtomicUsize,
    layout: Layout,
    /// Keeps the kept tree, and so every buffer the nodes point to, alive.
    _batch: Arc<CachedBatch>,
}

impl Block {
    /// Give back `count` references; the last one frees the block.
    ///
    /// # Safety
    /// The caller holds `count` references to `block`, and uses none of them after this.
    unsafe fn drop_references(block: *mut Block, count: usize) {
        // The same ordering as `Arc`: uses through every reference happen before the free.
        if unsafe { &(*block).references }.fetch_sub(count, Ordering::Release) != count {
            return;
        }
        fence(Ordering::Acquire);
        let layout = unsafe { (*block).layout };
        unsafe {
            ptr::drop_in_place(block);
            dealloc(block.cast(), layout);
        }
    }
}

/// Turn an image node's offsets into pointers into the block at `base`.
///
/// # Safety
/// `node` comes from an image of the block's shape.
unsafe fn rebase(node: &mut ArrowArray, base: *mut u8) {
    if !node.children.is_null() {
        node.children = unsafe { base.add(node.children.addr()) }.cast();
    }
    if !node.dictionary.is_null() {
        node.dictionary = unsafe { base.add(node.dictionary.addr()) }.cast();
    }
    // A flat image's nodes carry their producer's callback.
    node.release = Some(release_node);
    node.private_data = base.cast();
}

/// Export `cached` into `out`: a copy of the image kept with it (every batch that came
/// through the C stream import has one), or else a direct arrow-rs export (a batch read
/// back from disk, which is decoded anew for every read, or one from a Rust upstream).
///
/// # Safety
/// `out` is valid for writing one `ArrowArray`.
pub(crate) unsafe fn export_cached(
    cached: Arc<CachedBatch>,
    out: *mut ArrowArray,
) -> Result<(), ArrowError> {
    // The root node and what the block holds after its header, from either kind of image.
    let (shape, root, block_words) = if let Some(flat) = cached.derived_if_present::<FlatExport>() {
        let image = &flat.image;
        let shape = image.shape();
        (shape, image.root(shape), image.block_words().as_ptr_range())
    } else if let Some(tree) = cached.derived_if_present::<ExportRoot>() {
        // SAFETY: node 0 of a tree's image is its root, written by `ExportRoot::new`.
        let root = unsafe { ptr::read(tree.image.as_ptr().cast::<ArrowArray>()) };
        (tree.shape, root, tree.image[NODE_WORDS..].as_ptr_range())
    } else {
        let data = StructArray::from(cached.batch()?.clone()).into_data();
        unsafe { ptr::write(out.cast::<FFI_ArrowArray>(), FFI_ArrowArray::new(&data)) };
        return Ok(());
    };
    let layout = shape.layout();
    // SAFETY: the layout has the header's size at least, so it is not zero-sized.
    let base = unsafe { alloc(layout) };
    if base.is_null() {
        handle_alloc_error(layout);
    }
    let header = Block {
        references: AtomicUsize::new(shape.descendants + 1),
        layout,
        // Keeps the image, and what its nodes point to, alive until the block is freed.
        _batch: cached,
    };
    // SAFETY: the block was allocated for this shape, and `block_words` are exactly the
    // block's contents after the header; every offset in them and in `root` points
    // inside the block. Each node of the export holds one of the block's references.
    unsafe {
        base.cast::<Block>().write(header);
        let bytes = block_words.end.addr() - block_words.start.addr();
        let nodes = base.add(shape.nodes_offset());
        ptr::copy_nonoverlapping(block_words.start.cast::<u8>(), nodes, bytes);
        let nodes = nodes.cast::<ArrowArray>();
        for i in 0..shape.descendants {
            rebase(&mut *nodes.add(i), base);
        }
        let children = base.add(shape.children_offset()).cast::<*mut ArrowArray>();
        for i in 0..shape.child_slots {
            let slot = children.add(i);
            *slot = base.add((*slot).addr()).cast();
        }
        let mut exported = root;
        rebase(&mut exported, base);
        ptr::write(out, exported);
    }
    Ok(())
}

/// Release one node, and with it the children and dictionary not moved out.
unsafe extern "C" fn release_node(array: *mut ArrowArray) {
    let Some(array) = (unsafe { array.as_mut() }) else {
        return;
    };
    let block = array.private_data.cast::<Block>();
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
unsafe fn release_in_block(array: &mut ArrowArray, block: *mut Block) -> usize {
    let mut released = 1;
    let dictionary = [array.dictionary].into_iter().filter(|d| !d.is_null());
    let children = (0..array.n_children.max(0) as usize).map(|i| unsafe { *array.children.add(i) });
    for node in children.chain(dictionary) {
        let node = unsafe { &mut *node };
        match node.release {
            None => {} // moved out by the consumer
            Some(_) if node.private_data == block.cast() => {
                released += unsafe { release_in_block(node, block) };
            }
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
    use arrow_array::{ArrayRef, DictionaryArray, Int64Array, ListArray, RecordBatch, StringArray};
    use arrow_data::ffi::FFI_ArrowArray;
    use arrow_schema::{DataType, Field};
    use std::sync::atomic::AtomicUsize;

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
        cached_tree(Arc::new(OwnedArray::new(produced)), batch.schema())
    }

    /// `tree` imported through a second root as a batch of `schema`, kept for exports.
    fn cached_tree(tree: Arc<OwnedArray>, schema: arrow_schema::SchemaRef) -> Arc<CachedBatch> {
        let data_type = DataType::Struct(schema.fields().clone());
        let root = OwnedArray::shared_import_root(&tree);
        let data = unsafe { arrow_array::ffi::from_ffi_and_data_type(root, data_type) }.unwrap();
        let imported = RecordBatch::from(StructArray::from(data));
        Arc::new(CachedBatch::with_derived(
            imported,
            Some(Box::new(ExportRoot::new(tree))),
        ))
    }

    /// An export of a seeded batch that outlived its cache entry, with the batch, its first
    /// buffer and that buffer's strong count without the cache: the export alone keeps
    /// the producer's tree.
    fn sole_export() -> (RecordBatch, arrow_buffer::Buffer, usize, ArrowArray) {
        let original = batch();
        let buffer = original.column(0).to_data().buffers()[0].clone();
        let alone = buffer.strong_count();
        let cached = seeded(&original);
        let mut out = released();
        unsafe { export_cached(cached, &mut out) }.unwrap();
        (original, buffer, alone, out)
    }

    /// A producer root whose release is counted in `count`, then done as before.
    struct Counted {
        release: unsafe extern "C" fn(*mut ArrowArray),
        private_data: *mut c_void,
        count: &'static AtomicUsize,
    }

    unsafe extern "C" fn counted_release(array: *mut ArrowArray) {
        let counted = unsafe { Box::from_raw((*array).private_data.cast::<Counted>()) };
        counted.count.fetch_add(1, Ordering::SeqCst);
        unsafe {
            (*array).private_data = counted.private_data;
            (counted.release)(array);
        }
    }

    fn counting_root(data: &arrow_data::ArrayData, count: &'static AtomicUsize) -> FFI_ArrowArray {
        let mut raw: ArrowArray = unsafe { std::mem::transmute(FFI_ArrowArray::new(data)) };
        let counted = Counted {
            release: raw.release.unwrap(),
            private_data: raw.private_data,
            count,
        };
        raw.private_data = Box::into_raw(Box::new(counted)).cast();
        raw.release = Some(counted_release);
        unsafe { std::mem::transmute(raw) }
    }

    #[test]
    fn a_record_batch_root_is_released_at_once_and_its_columns_with_the_tree() {
        static ROOTS_RELEASED: AtomicUsize = AtomicUsize::new(0);
        let original = batch();
        let buffer = original.column(0).to_data().buffers()[0].clone();
        let alone = buffer.strong_count();
        let data = StructArray::from(original.clone()).into_data();
        let tree = Arc::new(OwnedArray::new(counting_root(&data, &ROOTS_RELEASED)));
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
        let cached = cached_tree(tree, original.schema());
        assert_eq!(cached.batch().unwrap(), &original);
        let mut out = released();
        unsafe { export_cached(cached.clone(), &mut out) }.unwrap();
        drop(cached);
        assert_eq!(import(out, &original), original);
        assert_eq!(
            buffer.strong_count(),
            alone,
            "the columns outlived the tree"
        );
    }

    #[test]
    fn a_root_with_an_offset_keeps_it_below_our_own_root() {
        let original = batch();
        // A producer may put a slice's offset on the root, over whole children.
        let whole = FFI_ArrowArray::new(&StructArray::from(original.clone()).into_data());
        let mut raw = unsafe { std::mem::transmute::<FFI_ArrowArray, ArrowArray>(whole) };
        (raw.offset, raw.length) = (1, 2);
        let produced = unsafe { std::mem::transmute::<ArrowArray, FFI_ArrowArray>(raw) };
        let tree = Arc::new(OwnedArray::new(produced));
        assert_eq!((tree.root.offset, tree.root.length), (1, 2));
        let cached = cached_tree(tree, original.schema());
        let expected = original.slice(1, 2);
        assert_eq!(cached.batch().unwrap(), &expected);
        let mut out = released();
        unsafe { export_cached(cached, &mut out) }.unwrap();
        assert_eq!(import(out, &original), expected);
    }

    #[test]
    fn a_root_with_a_validity_bitmap_is_kept_whole() {
        static ROOTS_RELEASED: AtomicUsize = AtomicUsize::new(0);
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let field = Arc::new(Field::new("id", DataType::Int64, false));
        let nulls = arrow_buffer::NullBuffer::from(vec![true, false, true]);
        let rows = StructArray::try_new(vec![field].into(), vec![ids], Some(nulls)).unwrap();
        let tree = Arc::new(OwnedArray::new(counting_root(
            &rows.to_data(),
            &ROOTS_RELEASED,
        )));
        assert_eq!(ROOTS_RELEASED.load(Ordering::SeqCst), 0);
        // Imported through the shared root, the bitmap is still there.
        let root = OwnedArray::shared_import_root(&tree);
        let data_type = rows.data_type().clone();
        let data = unsafe { arrow_array::ffi::from_ffi_and_data_type(root, data_type) }.unwrap();
        assert_eq!(StructArray::from(data), rows);
        drop(tree);
        assert_eq!(ROOTS_RELEASED.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn exports_round_trip_and_outlive_the_cache() {
        let original = batch();
        for cached in [
            Arc::new(CachedBatch::new(original.clone())),
            seeded(&original),
        ] {
            // Direct, template build and copy for a plain batch; copies for a seeded one.
            let mut exports = [released(), released(), released()];
            for out in &mut exports {
                unsafe { export_cached(cached.clone(), out) }.unwrap();
            }
            drop(cached);
            for out in exports {
                assert_eq!(import(out, &original), original);
            }
        }
    }

    #[test]
    fn the_producer_tree_is_released_once_everything_is_gone() {
        let (original, buffer, alone, out) = sole_export();
        assert!(
            buffer.strong_count() > alone,
            "an export keeps the producer's tree"
        );
        let reimported = import(out, &original);
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
        let nested = unsafe { &mut **root.children.add(2) };
        let mut moved = unsafe { ptr::replace(*nested.children, released()) };
        unsafe { (root.release.unwrap())(&mut root) };
        assert!(root.release.is_none());
        assert!(
            buffer.strong_count() > alone,
            "the moved node's block was freed while the node was alive"
        );
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
        for cached in [
            Arc::new(CachedBatch::new(original.clone())),
            seeded(&original),
        ] {
            let mut root = released();
            unsafe {
                export_cached(cached.clone(), &mut root).unwrap();
                (root.release.unwrap())(&mut root);
                export_cached(cached.clone(), &mut root).unwrap();
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

    #[test]
    fn a_flat_batch_exports_imports_and_releases_its_columns_once_everything_is_gone() {
        let original = flat_batch();
        let buffer = original.column(0).to_data().buffers()[0].clone();
        let alone = buffer.strong_count();
        let produced = FFI_ArrowArray::new(&StructArray::from(original.slice(1, 2)).into_data());
        let Ok(root) = FlatExport::new(produced, original.schema()) else {
            panic!("a batch of leaf columns is kept flat");
        };
        let cached = Arc::new(CachedBatch::deferred(2, Box::new(root)));
        assert!(
            buffer.strong_count() > alone,
            "the cache keeps the producer's columns"
        );

        let mut first = released();
        let mut second = released();
        unsafe {
            export_cached(cached.clone(), &mut first).unwrap();
            export_cached(cached.clone(), &mut second).unwrap();
        }
        assert_eq!(import(first, &original), original.slice(1, 2));
        assert_eq!(cached.batch().unwrap(), &original.slice(1, 2));
        // A column moved out of an export outlives its parent and the cache.
        let child = unsafe { *second.children.add(1) };
        let moved = unsafe { ptr::replace(child, released()) };
        unsafe { (second.release.unwrap())(&mut second) };
        let made = cached.batch().unwrap().clone();
        drop(cached);
        let ffi: FFI_ArrowArray = unsafe { std::mem::transmute(moved) };
        let data =
            unsafe { arrow_array::ffi::from_ffi_and_data_type(ffi, DataType::Utf8) }.unwrap();
        assert_eq!(
            arrow_array::make_array(data).as_string::<i32>().value(1),
            "cde"
        );
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

    #[test]
    fn a_root_with_a_validity_bitmap_is_not_kept_flat() {
        let original = flat_batch();
        let validity = arrow_buffer::NullBuffer::from(vec![true, true, false]);
        let rows = StructArray::new(
            original.schema().fields().clone(),
            original.columns().to_vec(),
            Some(validity),
        );
        let produced = FFI_ArrowArray::new(&rows.into_data());
        assert!(FlatExport::new(produced, original.schema()).is_err());
    }
}
