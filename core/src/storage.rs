//! The memory tier: cached batches by stream position, with exact byte accounting.

use std::any::Any;
use std::collections::{BTreeMap, VecDeque};
use std::ptr;
use std::sync::{Arc, OnceLock};

use arrow_array::RecordBatch;
use arrow_data::ArrayData;
use arrow_schema::ArrowError;

/// A value that a layer over the core keeps with each cached batch
/// ([`CachedBatch::derived`]): the C ABI keeps the batch's exported array tree, so that
/// every replay copies it instead of converting the batch again.
pub trait Derived: Any + Send + Sync {
    /// Hint the CPU to load what a read of the batch will touch. The memory tier calls it
    /// a little ahead of a reader going in order, so that replays do not wait on memory.
    fn prefetch(&self) {}

    /// The batch this value holds in another form, for a [`CachedBatch::deferred`]: made
    /// when something first needs a `RecordBatch` (a cast, the disk tier, a Rust reader).
    fn to_batch(&self) -> Option<Result<RecordBatch, ArrowError>> {
        None
    }

    /// The allocations under the batch, for a [`CachedBatch::deferred`]: what
    /// [`Allocations::of_batch`] would find in the batch it makes.
    fn allocations(&self) -> Option<Allocations> {
        None
    }
}

/// One cached batch, shared by the store and every reader that has read it.
pub struct CachedBatch {
    rows: usize,
    /// Its allocations' bytes, each once, as the memory tier counted them when it took
    /// the batch: what leaves the tier's upper bound when the batch does.
    summed_bytes: u64,
    /// Set from the start, or, for a deferred batch, on first use. Boxed: a deferred
    /// batch, the common kind, would otherwise carry an empty `RecordBatch`'s bytes.
    batch: OnceLock<Box<RecordBatch>>,
    /// What an export layer reuses on every read: derived from the batch once, or handed
    /// over by the upstream with it (`Pulled::batch`).
    derived: OnceLock<Box<dyn Derived>>,
}

impl std::fmt::Debug for CachedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedBatch")
            .field("rows", &self.rows)
            .finish()
    }
}

impl CachedBatch {
    /// A batch with nothing derived from it yet.
    pub fn new(batch: RecordBatch) -> Self {
        Self {
            rows: batch.num_rows(),
            summed_bytes: 0,
            batch: OnceLock::from(Box::new(batch)),
            derived: OnceLock::new(),
        }
    }

    /// A batch whose derived value is already at hand.
    pub fn with_derived(batch: RecordBatch, derived: Option<Box<dyn Derived>>) -> Self {
        let cached = Self::new(batch);
        if let Some(value) = derived {
            let _ = cached.derived.set(value);
        }
        cached
    }

    /// A batch of `rows` rows held only as `derived`, whose [`Derived::to_batch`] makes
    /// the `RecordBatch` when one is first needed: replays that only re-export the
    /// derived form never pay for it.
    pub fn deferred(rows: usize, derived: Box<dyn Derived>) -> Self {
        Self {
            rows,
            summed_bytes: 0,
            batch: OnceLock::new(),
            derived: OnceLock::from(derived),
        }
    }

    /// Rows in the batch, known without making a deferred batch.
    pub fn num_rows(&self) -> usize {
        self.rows
    }

    /// The batch as it came from the upstream; a deferred batch is made on this call.
    pub fn batch(&self) -> Result<&RecordBatch, ArrowError> {
        if let Some(batch) = self.batch.get() {
            return Ok(batch);
        }
        let made = self
            .derived
            .get()
            .and_then(|derived| derived.to_batch())
            .unwrap_or_else(|| {
                Err(ArrowError::ComputeError(
                    "a cached batch holds neither a RecordBatch nor a form that makes one".into(),
                ))
            })?;
        // Two threads may both make it; the first one kept is the one every caller sees.
        Ok(self.batch.get_or_init(|| Box::new(made)))
    }

    /// The batch if it is made already: always, unless it is deferred and unused so far.
    pub fn batch_if_made(&self) -> Option<&RecordBatch> {
        self.batch.get().map(|batch| &**batch)
    }

    /// A value derived from the batch, built on first use and kept as long as the batch.
    /// One type per cache: `None` if another type was stored first, or if the batch
    /// cannot be made to build it from.
    pub fn derived<T: Derived>(&self, build: impl FnOnce(&RecordBatch) -> T) -> Option<&T> {
        if self.derived.get().is_none() {
            let value = build(self.batch().ok()?);
            let _ = self.derived.set(Box::new(value));
        }
        let derived: &dyn Any = &**self.derived.get()?;
        derived.downcast_ref()
    }

    /// The derived value if it exists already (built before, or supplied by the upstream).
    pub fn derived_if_present<T: Derived>(&self) -> Option<&T> {
        let derived: &dyn Any = &**self.derived.get()?;
        derived.downcast_ref()
    }

    /// The allocations under the batch, found again on every call: the memory tier keeps
    /// none per batch. A deferred batch's come from its derived form, without making it.
    pub fn allocations(&self) -> Allocations {
        if let Some(found) = self.derived.get().and_then(|derived| derived.allocations()) {
            return found;
        }
        match self.batch() {
            Ok(batch) => Allocations::of_batch(batch),
            // A batch that cannot be made holds no buffers of its own.
            Err(_) => Allocations(Box::default()),
        }
    }
}

/// Start loading the cache line at `address`; only a hint, so any address will do. For
/// [`Derived::prefetch`] implementations.
pub fn prefetch<T: ?Sized>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and reads nothing the program sees.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(address.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

/// Allocations by start address. A B-tree rather than a hash map: it grows by small
/// nodes, where a hash table's doublings are large allocations that make glibc's malloc
/// consolidate every freed small chunk of the process (bench/notes.md).
type AddressMap<V> = BTreeMap<usize, V>;

/// An allocation that at least one stored batch points into.
#[derive(Debug, Clone, Copy)]
struct Allocation {
    bytes: u64,
    users: u32,
}

/// Batches in stream order, starting at `first`; earlier ones were evicted.
///
/// Memory use counts each underlying allocation once, however many batches slice it,
/// so a table read in slices costs its real size, not its size times the slice count.
/// That count is kept lazily: while the batches' summed sizes fit the budget, new batches
/// are only added up, and the map of shared allocations is built when an exact figure
/// is needed (a read of [`bytes`](Self::bytes), a batch that may not fit).
#[derive(Debug)]
pub(crate) struct MemoryTier {
    first: u64,
    slots: VecDeque<Arc<CachedBatch>>,
    /// How many slots from the front `allocations` and `bytes` count.
    accounted: usize,
    allocations: AddressMap<Allocation>,
    /// Exact bytes of the accounted slots.
    bytes: u64,
    /// Bytes of the other slots, each allocation counted once per batch: an upper bound.
    pending: u64,
    capacity: u64,
    /// Evicted batches, for the caller to drop after it unlocks: the last reference to a
    /// batch may release a producer's array, which may need Python's GIL.
    released: Vec<Arc<CachedBatch>>,
    /// Rows of every batch stored since position 0, evicted ones too.
    rows: RowIndex,
}

/// A batch did not fit in the memory budget.
#[derive(Debug)]
pub(crate) struct OverBudget {
    pub needed: u64,
    pub held: u64,
    pub capacity: u64,
}

impl MemoryTier {
    pub fn new(capacity: u64) -> Self {
        Self {
            first: 0,
            slots: VecDeque::new(),
            accounted: 0,
            allocations: AddressMap::new(),
            bytes: 0,
            pending: 0,
            capacity,
            released: Vec::new(),
            rows: RowIndex::default(),
        }
    }

    /// An empty tier whose frontier is `position`: the batches before it live elsewhere.
    pub fn starting_at(position: u64) -> Self {
        Self {
            first: position,
            ..Self::new(0)
        }
    }

    /// The budget in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Position one past the last stored batch: the ingestion frontier.
    pub fn end(&self) -> u64 {
        self.first + self.slots.len() as u64
    }

    /// Bytes held, each allocation counted once.
    pub fn bytes(&mut self) -> u64 {
        self.account_all();
        self.bytes
    }

    /// At least [`bytes`](Self::bytes), without building the map of shared allocations.
    fn bytes_at_most(&self) -> u64 {
        self.bytes.saturating_add(self.pending)
    }

    /// Whether `more` bytes fit the budget; exact only when the upper bound does not fit.
    pub fn fits(&mut self, more: u64) -> bool {
        self.bytes_at_most().saturating_add(more) <= self.capacity
            || self.bytes().saturating_add(more) <= self.capacity
    }

    /// The batch at `position`, or `None` when it was evicted or not yet stored.
    pub fn get(&self, position: u64) -> Option<&Arc<CachedBatch>> {
        self.slots.get(self.index(position)?)
    }

    fn index(&self, position: u64) -> Option<usize> {
        usize::try_from(position.checked_sub(self.first)?).ok()
    }

    /// Start loading the memory of the batches after `position`, for a reader going in
    /// order: one level of pointers further for each batch closer, so that by its turn a
    /// batch is in cache.
    pub fn prefetch_after(&self, position: u64) {
        let Some(index) = self.index(position) else {
            return;
        };
        let derived = |at: usize| self.slots.get(at).and_then(|batch| batch.derived.get());
        if let Some(next) = derived(index + 1) {
            next.prefetch();
        }
        if let Some(after) = derived(index + 2) {
            prefetch(ptr::from_ref::<dyn Derived>(&**after));
        }
        if let Some(later) = self.slots.get(index + 3) {
            prefetch(Arc::as_ptr(later));
        }
    }

    /// Append the next batch of the stream, whose buffers point into `allocations`,
    /// unless it would exceed the budget.
    pub fn push(&mut self, batch: CachedBatch, allocations: Allocations) -> Result<(), OverBudget> {
        // Within budget even if no allocation is shared: the exact count can wait.
        let (at_most, _) = allocations.totals();
        if self.bytes_at_most().saturating_add(at_most) <= self.capacity {
            self.insert(batch, at_most);
            return Ok(());
        }
        self.account_all();
        let added: u64 = allocations
            .iter()
            .map(|&(start, bytes)| match self.allocations.get(&start) {
                Some(known) => bytes.saturating_sub(known.bytes),
                None => bytes,
            })
            .sum();
        if self.bytes + added > self.capacity {
            return Err(OverBudget {
                needed: added,
                held: self.bytes,
                capacity: self.capacity,
            });
        }
        self.insert(batch, at_most);
        self.account_all();
        Ok(())
    }

    /// Append a batch whatever the budget; the disk tier then trims the hot layer.
    pub fn push_unbounded(&mut self, batch: CachedBatch, allocations: Allocations) {
        self.insert(batch, allocations.totals().0);
    }

    /// Append a batch whose allocations ([`CachedBatch::allocations`]) sum to
    /// `summed_bytes`, counted in `pending` until [`account_all`](Self::account_all).
    fn insert(&mut self, mut batch: CachedBatch, summed_bytes: u64) {
        self.rows.learn(self.end(), batch.num_rows() as u64);
        batch.summed_bytes = summed_bytes;
        self.pending = self.pending.saturating_add(summed_bytes);
        self.slots.push_back(Arc::new(batch));
    }

    /// Count every slot's allocations in the map, each once.
    fn account_all(&mut self) {
        for batch in self.slots.range(self.accounted..) {
            for &(start, bytes) in batch.allocations().iter() {
                let entry = self
                    .allocations
                    .entry(start)
                    .or_insert(Allocation { bytes: 0, users: 0 });
                self.bytes += bytes.saturating_sub(entry.bytes);
                entry.bytes = entry.bytes.max(bytes);
                entry.users += 1;
            }
        }
        self.accounted = self.slots.len();
        self.pending = 0;
    }

    /// True while the batches held exceed the budget.
    pub fn over_budget(&mut self) -> bool {
        self.bytes_at_most() > self.capacity && self.bytes() > self.capacity
    }

    /// Drop the oldest batches until the rest fit the budget (they are on disk already).
    pub fn trim_to_budget(&mut self) {
        while self.over_budget() && !self.slots.is_empty() {
            self.evict_below(self.first + 1);
        }
    }

    /// The oldest batches that must leave for the rest to fit the budget.
    pub fn over_budget_batches(&mut self) -> Vec<(u64, Arc<CachedBatch>)> {
        if !self.over_budget() {
            return Vec::new();
        }
        let mut excess = self.bytes.saturating_sub(self.capacity);
        let mut leaving = Vec::new();
        for (index, batch) in self.slots.iter().enumerate() {
            if excess == 0 {
                break;
            }
            let freed: u64 = batch
                .allocations()
                .iter()
                .filter(|(start, _)| self.allocations.get(start).is_some_and(|a| a.users == 1))
                .map(|&(_, bytes)| bytes)
                .sum();
            excess = excess.saturating_sub(freed.max(1));
            leaving.push((self.first + index as u64, batch.clone()));
        }
        leaving
    }

    /// Drop the oldest batch if it is the one at `position`.
    pub fn pop_oldest_at(&mut self, position: u64) -> bool {
        if self.first != position || self.slots.is_empty() {
            return false;
        }
        self.evict_below(position + 1) == 1
    }

    /// Drop every batch before `position`; returns how many were dropped.
    pub fn evict_below(&mut self, position: u64) -> u64 {
        let mut dropped = 0;
        while self.first < position {
            let Some(batch) = self.slots.pop_front() else {
                break;
            };
            if self.accounted > 0 {
                self.accounted -= 1;
                self.release(&batch.allocations());
            } else {
                self.pending = self.pending.saturating_sub(batch.summed_bytes);
            }
            self.released.push(batch);
            self.first += 1;
            dropped += 1;
        }
        dropped
    }

    /// The row index of the stream: every batch stored here, and those of a tier that
    /// starts later ([`starting_at`](Self::starting_at)) as they are learned.
    pub fn rows(&mut self) -> &mut RowIndex {
        &mut self.rows
    }

    /// The batches evicted since the last call, for the caller to drop once it holds no
    /// lock.
    pub fn take_released(&mut self) -> Vec<Arc<CachedBatch>> {
        std::mem::take(&mut self.released)
    }

    fn release(&mut self, allocations: &Allocations) {
        for (start, _) in allocations.iter() {
            if let Some(entry) = self.allocations.get_mut(start) {
                entry.users -= 1;
                if entry.users == 0 {
                    self.bytes -= entry.bytes;
                    self.allocations.remove(start);
                }
            }
        }
    }
}

/// Where each batch's rows lie in the stream: the rows of batches `0..=i`, summed, for
/// each batch `i` known so far, so that a row's batch is a binary search away. Kept as
/// batches are stored, evicted ones included (8 bytes a batch); a save's batches are
/// learned as they are first read, since its file does not list their rows.
///
/// A clone is a snapshot that costs one reference count: rows are located in it outside
/// the state lock, and the index copies itself only if it learns while a snapshot lives.
#[derive(Debug, Default, Clone)]
pub struct RowIndex {
    ends: Arc<Vec<u64>>,
}

impl RowIndex {
    /// Record that batch `position` holds `rows` rows, if it is the next one unknown;
    /// a position known already (another thread learned it first) is left as it is.
    pub fn learn(&mut self, position: u64, rows: u64) {
        if position == self.batches() {
            let end = self.rows().saturating_add(rows);
            Arc::make_mut(&mut self.ends).push(end);
        }
    }

    /// Batches whose rows are known: `0..batches()`.
    pub fn batches(&self) -> u64 {
        self.ends.len() as u64
    }

    /// Rows in the known batches.
    pub fn rows(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// The batch holding stream row `row` and the row's offset in it; `None` when `row`
    /// lies past the known batches.
    pub fn locate(&self, row: u64) -> Option<(u64, u64)> {
        let batch = self.ends.partition_point(|&end| end <= row);
        let end = *self.ends.get(batch)?;
        let start = end - self.rows_in(batch);
        Some((batch as u64, row - start))
    }

    fn rows_in(&self, batch: usize) -> u64 {
        let before = batch.checked_sub(1).map_or(0, |b| self.ends[b]);
        self.ends[batch] - before
    }
}

/// Every distinct allocation a batch's buffers point into, with its size: what the
/// memory tier counts, once however many batches share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocations(Box<[(usize, u64)]>);

impl Allocations {
    /// The allocations under every column of `batch`.
    pub fn of_batch(batch: &RecordBatch) -> Self {
        let mut found = Vec::new();
        for column in batch.columns() {
            collect_allocations(&column.to_data(), &mut found);
        }
        Self::distinct(found)
    }

    /// The allocations of `data` and every array under it: for a source that holds the
    /// struct array a batch was made from, without the copies `of_batch` makes.
    pub fn of_data(data: &ArrayData) -> Self {
        let mut found = Vec::new();
        collect_allocations(data, &mut found);
        Self::distinct(found)
    }

    /// The distinct allocations among `found`, (start address, bytes) of every buffer of
    /// a batch: for a source that lists them itself, from a batch not yet imported.
    pub fn of_buffers(found: Vec<(usize, u64)>) -> Self {
        Self::distinct(found)
    }

    fn distinct(mut found: Vec<(usize, u64)>) -> Self {
        found.sort_unstable();
        // Keep the largest size seen for one start: slices of one allocation report
        // different lengths.
        found.dedup_by(|later, kept| {
            if later.0 == kept.0 {
                kept.1 = kept.1.max(later.1);
                true
            } else {
                false
            }
        });
        Self(found.into_boxed_slice())
    }

    /// Bytes in all, and how many allocations hold them.
    pub fn totals(&self) -> (u64, usize) {
        (self.0.iter().map(|&(_, bytes)| bytes).sum(), self.0.len())
    }

    fn iter(&self) -> impl Iterator<Item = &(usize, u64)> {
        self.0.iter()
    }
}

fn collect_allocations(data: &ArrayData, found: &mut Vec<(usize, u64)>) {
    let nulls = data.nulls().map(|n| n.buffer());
    for buffer in data.buffers().iter().chain(nulls) {
        if buffer.capacity() > 0 {
            found.push((
                buffer.data_ptr().as_ptr() as usize,
                buffer.capacity() as u64,
            ));
        }
    }
    for child in data.child_data() {
        collect_allocations(child, found);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int64Array;

    fn push(tier: &mut MemoryTier, batch: RecordBatch) -> Result<(), OverBudget> {
        let allocations = Allocations::of_batch(&batch);
        tier.push(CachedBatch::new(batch), allocations)
    }

    fn batch(values: Vec<i64>) -> RecordBatch {
        RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(values)) as _)]).unwrap()
    }

    #[test]
    fn slices_of_one_allocation_count_once() {
        let whole = batch((0..1000).collect());
        let mut tier = MemoryTier::new(u64::MAX);
        push(&mut tier, whole.slice(0, 500)).unwrap();
        let after_first = tier.bytes();
        push(&mut tier, whole.slice(500, 500)).unwrap();
        assert_eq!(tier.bytes(), after_first);
        assert!(after_first >= 8000);
        tier.evict_below(1);
        assert_eq!(tier.bytes(), after_first);
        tier.evict_below(2);
        assert_eq!(tier.bytes(), 0);
    }

    #[test]
    fn batches_evicted_before_the_count_is_read_leave_it_exact() {
        let whole = batch((0..1000).collect());
        let whole_bytes = Allocations::of_batch(&whole).totals().0;
        let small = batch((0..10).collect());
        let small_bytes = Allocations::of_batch(&small).totals().0;
        let mut tier = MemoryTier::new(u64::MAX);
        for part in 0..4 {
            push(&mut tier, whole.slice(part * 250, 250)).unwrap();
        }
        push(&mut tier, small.clone()).unwrap();
        // Before any exact count: the bound counts the shared allocation once per slice.
        assert_eq!(tier.bytes_at_most(), 4 * whole_bytes + small_bytes);
        tier.evict_below(2);
        assert_eq!(tier.bytes_at_most(), 2 * whole_bytes + small_bytes);
        assert_eq!(tier.bytes(), whole_bytes + small_bytes);
        tier.evict_below(4);
        assert_eq!(tier.bytes(), small_bytes);
        tier.evict_below(5);
        assert_eq!(tier.bytes(), 0);
        // A batch pushed after the count and evicted before the next leaves nothing.
        push(&mut tier, small).unwrap();
        tier.evict_below(6);
        assert_eq!((tier.bytes_at_most(), tier.bytes()), (0, 0));
    }

    #[test]
    fn a_sources_allocation_list_matches_the_batchs_own() {
        let whole = batch((0..1000).collect());
        let sliced = whole.slice(10, 500);
        let rows = arrow_array::Array::into_data(arrow_array::StructArray::from(sliced.clone()));
        assert_eq!(Allocations::of_data(&rows), Allocations::of_batch(&sliced));
        let (bytes, count) = Allocations::of_batch(&sliced).totals();
        assert_eq!((bytes, count), (8000, 1));
    }

    #[test]
    fn a_batch_that_fits_only_if_its_allocation_is_shared_is_taken() {
        let whole = batch((0..1000).collect());
        let mut tier = MemoryTier::new(8_100);
        push(&mut tier, whole.slice(0, 500)).unwrap();
        // The upper bound (every allocation new) exceeds the budget; the real need is 0.
        push(&mut tier, whole.slice(500, 500)).unwrap();
        assert_eq!(tier.end(), 2);
    }

    #[test]
    fn the_row_index_finds_each_rows_batch_across_empty_batches() {
        let mut index = RowIndex::default();
        for (position, rows) in [3, 0, 2, 0, 0, 4].into_iter().enumerate() {
            index.learn(position as u64, rows);
        }
        index.learn(2, 99); // known already: ignored
        assert_eq!((index.batches(), index.rows()), (6, 9));
        let found: Vec<_> = (0..10).map(|row| index.locate(row)).collect();
        let expected = [
            (0, 0),
            (0, 1),
            (0, 2),
            (2, 0),
            (2, 1),
            (5, 0),
            (5, 1),
            (5, 2),
            (5, 3),
        ];
        assert_eq!(found[..9], expected.map(Some));
        assert_eq!(found[9], None);
        // A snapshot keeps what it saw; the index goes on learning.
        let snapshot = index.clone();
        index.learn(6, 5);
        assert_eq!((snapshot.batches(), snapshot.locate(9)), (6, None));
        assert_eq!((index.batches(), index.locate(9)), (7, Some((6, 0))));
    }

    #[test]
    fn stored_batches_fill_the_row_index_and_eviction_keeps_it() {
        let mut tier = MemoryTier::new(u64::MAX);
        push(&mut tier, batch(vec![1, 2])).unwrap();
        push(&mut tier, batch(vec![3, 4, 5])).unwrap();
        tier.evict_below(1);
        assert_eq!(tier.rows().locate(4), Some((1, 2)));
        let mut opened = MemoryTier::starting_at(5);
        assert_eq!(opened.rows().batches(), 0);
    }

    #[test]
    fn over_budget_is_refused_and_keeps_state() {
        let mut tier = MemoryTier::new(10_000);
        push(&mut tier, batch((0..1000).collect())).unwrap();
        let err = push(&mut tier, batch((0..1000).collect())).unwrap_err();
        assert!(err.needed >= 8000);
        assert_eq!(tier.end(), 1);
        assert!(tier.get(0).is_some());
    }
}
