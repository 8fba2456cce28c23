//! The cache: owns the upstream, ingests it lazily and exactly once, and hands out readers.

use std::mem::ManuallyDrop;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use arrow_array::{RecordBatch, RecordBatchReader};
use arrow_schema::{ArrowError, SchemaRef};

use crate::disk::{DiskIndex, DiskWriter};
use crate::error::{Error, Result};
use crate::options::{default_memory_capacity, CacheOptions, OpenOptions, WritePolicy};
use crate::order::Sequence;
use crate::prefetch::{Signal, Step};
use crate::reader::{CacheReader, Cast, ReaderOptions};
use crate::registry::ReaderRegistry;
use crate::save::{self, Persisted, Saver};
use crate::storage::{Allocations, CachedBatch, MemoryTier, RowIndex};

/// The upstream a cache reads from: any Arrow record batch reader.
pub type Upstream = Box<dyn RecordBatchReader + Send>;

/// One batch as a [`BatchSource`] hands it over.
pub struct Pulled {
    /// The batch, possibly with the form an export layer reuses on every read (see
    /// [`CachedBatch::with_derived`]), or held only in that form
    /// ([`CachedBatch::deferred`]).
    pub batch: CachedBatch,
    /// The allocations the batch's buffers point into, when the source has them at hand
    /// (see [`Allocations::of_data`]); otherwise they are found from the batch. A
    /// deferred batch comes with them.
    pub allocations: Option<Allocations>,
}

/// An upstream that may hand over more than the batch: the C stream import passes the
/// producer's own columns along, so that replays re-export them without converting.
/// Every [`Upstream`] is one.
pub trait BatchSource: Send {
    fn schema(&self) -> SchemaRef;
    /// The next batch; `None` at the end.
    fn pull(&mut self) -> Option<std::result::Result<Pulled, ArrowError>>;
}

impl BatchSource for Upstream {
    fn schema(&self) -> SchemaRef {
        RecordBatchReader::schema(self.as_ref())
    }

    fn pull(&mut self) -> Option<std::result::Result<Pulled, ArrowError>> {
        Some(self.next()?.map(|batch| Pulled {
            batch: CachedBatch::new(batch),
            allocations: None,
        }))
    }
}

/// Counters describing a cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Batches pulled from the upstream.
    pub batches_ingested: u64,
    /// Rows in those batches.
    pub rows_ingested: u64,
    /// Bytes of batch buffers held in memory, each allocation counted once.
    pub memory_bytes: u64,
    /// Bytes of batch data held on disk.
    pub disk_bytes: u64,
    /// Batches dropped because every reader had passed them (`max_readers`).
    pub batches_evicted: u64,
    /// Disk segments deleted because every reader had passed them.
    pub segments_deleted: u64,
    /// Readers alive now.
    pub readers_live: u64,
    /// Readers created since the cache was made.
    pub readers_created: u64,
    /// Whether the upstream reported its end.
    pub upstream_exhausted: bool,
    /// Nanoseconds spent inside the upstream's `next`.
    pub upstream_wait_ns: u64,
    /// For a cache opened from a save, how its batches are checked on their first read
    /// in this process; `None` for any other cache.
    pub validated: Option<crate::save::Validated>,
}

#[derive(Debug)]
struct State {
    memory: MemoryTier,
    /// Where batches lie on disk.
    disk: Option<DiskIndex>,
    registry: ReaderRegistry,
    /// The upstream's failure (or a budget failure), kept and returned to every reader
    /// that reaches this position: a failed pull is never retried.
    failure: Option<Error>,
    exhausted: bool,
    closed: bool,
    rows_ingested: u64,
    batches_evicted: u64,
    /// Bytes of the newest batch stored: what the read-ahead thread expects the next to need.
    last_batch_bytes: u64,
    /// Bytes of every batch stored, for the average a shuffle window is checked with.
    bytes_ingested: u64,
}

/// What only the ingesting thread touches.
struct Ingest {
    source: Option<Box<dyn BatchSource>>,
    writer: Option<DiskWriter>,
    /// The save made as the stream is ingested (`CacheOptions::persist`).
    saver: Option<Saver>,
}

pub(crate) struct Shared {
    schema: SchemaRef,
    /// Held only by the thread that pulls from the upstream and writes to disk.
    ingest: Mutex<Ingest>,
    state: Mutex<State>,
    ingested: AtomicU64,
    exhausted: AtomicBool,
    poisoned: AtomicBool,
    upstream_wait_ns: AtomicU64,
    evicts: bool,
    /// Wakes the read-ahead thread, when `prefetch` is set.
    prefetch: Option<Arc<Signal>>,
    /// The persisted copy another process can open: where this cache was opened from,
    /// or its latest save.
    persisted: Mutex<Option<Persisted>>,
    /// Held by [`StreamCache::share`] while it saves, so that it saves once.
    save_lock: Mutex<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(signal) = &self.prefetch {
            signal.stop();
        }
    }
}

/// A replayable cache over a single-use stream.
///
/// Thread-safe: every method takes `&self`. Readers keep the storage alive, so dropping
/// the cache does not invalidate them; [`StreamCache::close`] does, with a clean error.
#[derive(Clone)]
pub struct StreamCache {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StreamCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamCache")
            .field("ingested", &self.ingested_count())
            .field("exhausted", &self.upstream_exhausted())
            .finish_non_exhaustive()
    }
}

impl StreamCache {
    /// Wrap `upstream`. Nothing is read from it until a reader asks.
    pub fn new(upstream: Upstream, options: CacheOptions) -> Result<Self> {
        Ok(Self::prepare(options)?.start(upstream))
    }

    /// Check the options and create the disk directory, before any upstream is taken:
    /// a caller that fails here still owns its stream.
    pub fn prepare(options: CacheOptions) -> Result<PreparedCache> {
        options.validate()?;
        let disk = match &options.disk {
            Some(disk) => {
                let (writer, index) = DiskWriter::create(disk)?;
                Some((writer, index))
            }
            None => None,
        };
        let saver = options.persist.as_deref().map(Saver::new).transpose()?;
        Ok(PreparedCache {
            options,
            disk,
            saver,
        })
    }

    /// The private directory of the disk tier, if there is one.
    pub fn disk_directory(&self) -> Option<std::path::PathBuf> {
        let ingest = self.shared.ingest.lock().ok()?;
        ingest.writer.as_ref().map(|w| w.directory().to_path_buf())
    }
}

/// A cache whose options are checked and whose storage exists, waiting for its upstream.
#[derive(Debug)]
pub struct PreparedCache {
    options: CacheOptions,
    disk: Option<(DiskWriter, DiskIndex)>,
    saver: Option<Saver>,
}

impl PreparedCache {
    /// Attach the upstream. Cannot fail.
    pub fn start(self, upstream: Upstream) -> StreamCache {
        self.start_source(Box::new(upstream))
    }

    /// Attach an upstream that is a [`BatchSource`]. Cannot fail.
    pub fn start_source(self, upstream: Box<dyn BatchSource>) -> StreamCache {
        let capacity = self
            .options
            .memory_capacity
            .unwrap_or_else(default_memory_capacity);
        let (writer, index) = match self.disk {
            Some((writer, index)) => (Some(writer), Some(index)),
            None => (None, None),
        };
        let options = self.options;
        let state = State {
            memory: MemoryTier::new(capacity),
            disk: index,
            registry: ReaderRegistry::new(options.max_readers),
            failure: None,
            exhausted: false,
            closed: false,
            rows_ingested: 0,
            batches_evicted: 0,
            last_batch_bytes: 0,
            bytes_ingested: 0,
        };
        let prefetch = options.prefetch.map(|_| Arc::new(Signal::default()));
        let shared = Shared {
            schema: upstream.schema(),
            ingest: Mutex::new(Ingest {
                source: Some(upstream),
                writer,
                saver: self.saver,
            }),
            state: Mutex::new(state),
            ingested: AtomicU64::new(0),
            exhausted: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            upstream_wait_ns: AtomicU64::new(0),
            evicts: options.max_readers.is_some(),
            prefetch: prefetch.clone(),
            persisted: Mutex::new(None),
            save_lock: Mutex::new(()),
        };
        let shared = Arc::new(shared);
        if let (Some(signal), Some(ahead)) = (prefetch, options.prefetch) {
            crate::prefetch::spawn(&shared, signal, ahead);
        }
        StreamCache { shared }
    }
}

impl StreamCache {
    /// A finished cache over a persisted file's `index`: nothing to ingest, nothing in
    /// memory, every batch read from the index.
    pub(crate) fn from_persisted(
        schema: SchemaRef,
        index: DiskIndex,
        rows: u64,
        max_readers: Option<u64>,
    ) -> Result<Self> {
        if let Some(max_readers) = max_readers {
            crate::options::check_max_readers(max_readers)?;
        }
        let batches = index.len();
        let state = State {
            memory: MemoryTier::starting_at(batches),
            disk: Some(index),
            registry: ReaderRegistry::new(max_readers),
            failure: None,
            exhausted: true,
            closed: false,
            rows_ingested: rows,
            batches_evicted: 0,
            last_batch_bytes: 0,
            bytes_ingested: 0,
        };
        let shared = Shared {
            schema,
            ingest: Mutex::new(Ingest {
                source: None,
                writer: None,
                saver: None,
            }),
            state: Mutex::new(state),
            ingested: AtomicU64::new(batches),
            exhausted: AtomicBool::new(true),
            poisoned: AtomicBool::new(false),
            upstream_wait_ns: AtomicU64::new(0),
            evicts: max_readers.is_some(),
            prefetch: None,
            persisted: Mutex::new(None),
            save_lock: Mutex::new(()),
        };
        Ok(StreamCache {
            shared: Arc::new(shared),
        })
    }

    /// The batch at `position`, ingesting up to it; `None` past the end.
    pub(crate) fn batch_at(&self, position: u64) -> Result<Option<Arc<CachedBatch>>> {
        self.shared.batch_at(position)
    }

    /// What every cache shares with its readers: for the random access calls.
    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The schema of the stream.
    pub fn schema(&self) -> SchemaRef {
        self.shared.schema.clone()
    }

    /// A new reader at batch 0 (`from_start`) or at the ingestion frontier.
    pub fn reader(&self, from_start: bool) -> Result<CacheReader> {
        self.reader_with_schema(from_start, None)
    }

    /// A new reader whose batches are cast as `target` says (see [`crate::validate_cast`]).
    pub fn reader_with_schema(
        &self,
        from_start: bool,
        target: Option<Cast>,
    ) -> Result<CacheReader> {
        self.reader_with(ReaderOptions {
            from_start,
            cast: target,
            ..ReaderOptions::default()
        })
    }

    /// A new reader as `options` say: where it starts, its order and share of the
    /// batches ([`crate::ReadOrder`]), and its cast.
    pub fn reader_with(&self, options: ReaderOptions) -> Result<CacheReader> {
        let mut state = self.checked_state(&options)?;
        let ReaderOptions {
            from_start,
            order,
            cast,
        } = options;
        let start = if from_start { 0 } else { state.memory.end() };
        let sequence = Sequence::new(&order, start)?;
        let slot = state.registry.register(sequence.lowest_needed())?;
        drop(state);
        Ok(CacheReader::new(
            self.shared.clone(),
            sequence,
            &order,
            slot,
            cast,
        ))
    }

    /// Check `options` as [`StreamCache::reader_with`] does, without making a reader:
    /// the order, the cast, a closed cache ([`Error::Closed`]) and a shuffle window
    /// against the memory budget. What depends on the readers of the moment
    /// (`max_readers` reached, batches already evicted) is left to `reader_with`.
    pub fn check_reader_options(&self, options: &ReaderOptions) -> Result<()> {
        self.checked_state(options).map(drop)
    }

    /// The state, locked, once `options` passed every check a new reader's do.
    fn checked_state(&self, options: &ReaderOptions) -> Result<StateGuard<'_>> {
        let ReaderOptions {
            from_start,
            order,
            cast,
        } = options;
        order.validate(*from_start)?;
        if let Some(target) = cast {
            crate::reader::validate_cast(&self.shared.schema, &target.schema)?;
        }
        let mut state = self.shared.lock_state()?;
        if state.closed {
            return Err(Error::Closed);
        }
        if let Some(window) = order.shuffle.and_then(|shuffle| shuffle.window) {
            state.check_window_fits(window, self.ingested_count())?;
        }
        Ok(state)
    }

    /// Pull the next batch from the upstream into the cache; false once it is exhausted.
    pub fn ingest_next(&self) -> Result<bool> {
        let frontier = self.shared.ingested.load(Ordering::Acquire);
        Ok(self.shared.batch_at(frontier)?.is_some())
    }

    /// Pull the whole upstream into the cache; returns the batch count. Idempotent.
    pub fn ingest_all(&self) -> Result<u64> {
        self.shared.ingest_all()
    }

    /// Batches pulled from the upstream so far. Never blocks on ingestion.
    pub fn ingested_count(&self) -> u64 {
        self.shared.ingested.load(Ordering::Acquire)
    }

    /// True once the upstream has reported its end.
    pub fn upstream_exhausted(&self) -> bool {
        self.shared.exhausted.load(Ordering::Acquire)
    }

    /// Current counters.
    pub fn stats(&self) -> Result<Stats> {
        let mut state = self.shared.lock_state()?;
        let (disk_bytes, segments_deleted, validated) = match &state.disk {
            Some(index) => (index.bytes(), index.segments_deleted(), index.validated()),
            None => (0, 0, None),
        };
        Ok(Stats {
            batches_ingested: self.ingested_count(),
            rows_ingested: state.rows_ingested,
            memory_bytes: state.memory.bytes(),
            disk_bytes,
            batches_evicted: state.batches_evicted,
            segments_deleted,
            readers_live: state.registry.live(),
            readers_created: state.registry.created(),
            upstream_exhausted: state.exhausted,
            upstream_wait_ns: self.shared.upstream_wait_ns.load(Ordering::Relaxed),
            validated,
        })
    }

    /// Drop all stored batches and the upstream, and delete the disk directory.
    /// Idempotent, and works on a poisoned cache too. Readers then fail with
    /// [`Error::Closed`]; batches they already returned stay valid (mapped files stay
    /// readable after they are deleted).
    pub fn close(&self) -> Result<()> {
        let stored = {
            // Closing a poisoned cache still releases what it holds: dropping needs no
            // invariant that an interrupted update could have broken.
            let mut state = self
                .shared
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if state.closed {
                return Ok(());
            }
            state.closed = true;
            (
                std::mem::replace(&mut state.memory, MemoryTier::new(0)),
                state.disk.take(),
            )
        };
        drop(stored);
        if let Some(signal) = &self.shared.prefetch {
            signal.notify(); // the read-ahead thread sees `closed` and ends
        }
        // Waits for a pull in progress; the puller sees `closed` and discards its batch.
        let mut ingest = self
            .shared
            .ingest
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (source, writer, saver) = (
            ingest.source.take(),
            ingest.writer.take(),
            ingest.saver.take(),
        );
        drop(ingest);
        drop(source);
        drop(writer);
        drop(saver); // an unfinished save: its staging folder goes with it
        Ok(())
    }

    /// Mark the cache unusable: every later call on it and its readers fails with
    /// [`Error::Internal`]. For a layer that catches a panic in a call on the cache (the C
    /// ABI does), whose state the panic may have left half-updated.
    pub fn poison(&self) {
        self.shared.poison();
    }
}

/// What the ingest path must do outside the state lock once a batch is stored.
enum Spill {
    /// Nothing more; whether ingestion can go on (false after a failure or close).
    Nothing(bool),
    /// `OnEviction`: these hot batches must reach disk before they leave memory.
    Write(Vec<(u64, Arc<CachedBatch>)>),
}

impl Shared {
    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    fn lock_state(&self) -> Result<StateGuard<'_>> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::poisoned());
        }
        let guard = self.state.lock().map_err(|_| Error::poisoned())?;
        Ok(StateGuard(ManuallyDrop::new(guard)))
    }

    pub(crate) fn ensure_open(&self) -> Result<()> {
        match self.lock_state()?.closed {
            true => Err(Error::Closed),
            false => Ok(()),
        }
    }

    /// Run `f` on the stream's row index, under the state lock; [`Error::Closed`] once
    /// the cache is closed.
    pub(crate) fn with_row_index<T>(&self, f: impl FnOnce(&mut RowIndex) -> T) -> Result<T> {
        let mut state = self.lock_state()?;
        if state.closed {
            return Err(Error::Closed);
        }
        Ok(f(state.memory.rows()))
    }

    fn lock_ingest(&self) -> Result<MutexGuard<'_, Ingest>> {
        self.ingest.lock().map_err(|_| Error::poisoned())
    }

    /// The batch at `position`, pulling from the upstream as needed; `None` past the end.
    pub(crate) fn batch_at(&self, position: u64) -> Result<Option<Arc<CachedBatch>>> {
        loop {
            {
                let state = self.lock_state()?;
                if state.closed {
                    return Err(Error::Closed);
                }
                if position < state.memory.end() {
                    if let Some(batch) = state.memory.get(position) {
                        state.memory.prefetch_after(position);
                        return Ok(Some(batch.clone()));
                    }
                    let on_disk = state.disk.as_ref().and_then(|d| d.get(position)).cloned();
                    let evicted_below = state.registry.evicted_below();
                    drop(state);
                    // Decoded without any lock: readers on many threads read disk at once.
                    return match on_disk {
                        Some(entry) => Ok(Some(Arc::new(entry.read(&self.schema)?))),
                        // Eviction keeps every batch a live reader has not passed; random
                        // access, which is no reader, may ask for one it dropped.
                        None if position < evicted_below => Err(Error::Evicted {
                            position,
                            evicted_below,
                        }),
                        None => Err(Error::Internal(format!(
                            "batch {position} is neither in memory nor on disk"
                        ))),
                    };
                }
                if let Some(failure) = &state.failure {
                    return Err(failure.clone());
                }
                if state.exhausted {
                    return Ok(None);
                }
            }
            self.pull_next(position)?;
        }
    }

    /// Pull the whole upstream; returns the batch count. No batch is read back, so none
    /// that went to disk is decoded.
    pub(crate) fn ingest_all(&self) -> Result<u64> {
        loop {
            {
                let state = self.lock_state()?;
                if state.closed {
                    return Err(Error::Closed);
                }
                if let Some(failure) = &state.failure {
                    return Err(failure.clone());
                }
                if state.exhausted {
                    return Ok(self.ingested.load(Ordering::Acquire));
                }
            }
            self.pull_next(self.ingested.load(Ordering::Acquire))?;
        }
    }

    /// Whether the stream has a batch at `position`, pulling up to it as needed.
    pub(crate) fn contains(&self, position: u64) -> Result<bool> {
        if position < self.ingested.load(Ordering::Acquire) {
            return Ok(true);
        }
        Ok(self.batch_at(position)?.is_some())
    }

    /// Pull one batch from the upstream, unless another thread got there first.
    ///
    /// Only the ingest lock is held while the upstream runs: a pyarrow upstream over a
    /// Python generator takes the GIL inside `next`, so holding the state lock here could
    /// deadlock against a thread that holds the GIL and reads a cached batch. Disk writes
    /// also happen under the ingest lock alone.
    fn pull_next(&self, wanted: u64) -> Result<()> {
        let mut guard = self.lock_ingest()?;
        let ingest = &mut *guard;
        if self.ingested.load(Ordering::Acquire) > wanted {
            return Ok(());
        }
        let Some(source) = ingest.source.as_mut() else {
            return Ok(()); // exhausted, failed or closed: the caller's loop sees which
        };
        let started = Instant::now();
        let pulled = source.pull();
        self.upstream_wait_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);

        let batch = match pulled {
            Some(Ok(pulled)) => check_pulled(&self.schema, pulled).map_err(Some),
            Some(Err(err)) => Err(Some(Error::from_upstream(&err))),
            None => Err(None),
        };
        let position = self.ingested.load(Ordering::Acquire);
        let open = match batch {
            Ok((batch, allocations)) => {
                let saved = match ingest.saver.as_mut() {
                    Some(saver) => made(&batch).and_then(|b| saver.write(position, b)),
                    None => Ok(()),
                };
                let open = match self.store(ingest, position, batch, allocations)? {
                    Spill::Write(leaving) => self.spill(ingest, leaving)?,
                    Spill::Nothing(open) => open,
                };
                match saved {
                    Ok(()) => open,
                    // The batch in hand is served; the stream stops after it.
                    Err(err) => self.fail_unless_closed(err)?,
                }
            }
            Err(Some(err)) => self.fail_unless_closed(err)?,
            Err(None) => {
                let saved = ingest.saver.take().map(|saver| saver.finish(&self.schema));
                let mut state = self.lock_state()?;
                match saved {
                    _ if state.closed => {}
                    Some(Err(err)) => state.failure = Some(err),
                    Some(Ok(saved)) => {
                        if let Ok(mut slot) = self.persisted.lock() {
                            *slot = Some(saved);
                        }
                        state.exhausted = true;
                        self.exhausted.store(true, Ordering::Release);
                    }
                    None => {
                        state.exhausted = true;
                        self.exhausted.store(true, Ordering::Release);
                    }
                }
                false
            }
        };
        if !open {
            // Released outside the state lock: a release may call back into Python.
            let (source, saver) = (ingest.source.take(), ingest.saver.take());
            drop(guard);
            drop(source);
            drop(saver);
        }
        Ok(())
    }

    /// Keep `err` as the failure every reader meets at the frontier; false (ingestion
    /// stops).
    fn fail_unless_closed(&self, err: Error) -> Result<bool> {
        let mut state = self.lock_state()?;
        if !state.closed && state.failure.is_none() {
            state.failure = Some(err);
        }
        Ok(false)
    }

    /// Keep `batch`, the next of the stream, in memory and (per policy) on disk.
    fn store(
        &self,
        ingest: &mut Ingest,
        position: u64,
        batch: CachedBatch,
        allocations: Allocations,
    ) -> Result<Spill> {
        let policy = ingest.writer.as_ref().map(DiskWriter::write_policy);
        // OnInsertion: written before the state lock is taken.
        let written = match (policy, ingest.writer.as_mut()) {
            (Some(WritePolicy::OnInsertion), Some(writer)) => {
                Some(made(&batch).and_then(|b| writer.write(position, b)))
            }
            _ => None,
        };
        let mut state = self.lock_state()?;
        if state.closed {
            return Ok(Spill::Nothing(false));
        }
        state.evict_passed();
        let rows = batch.num_rows() as u64;
        let bytes = allocations.totals().0;
        state.bytes_ingested += bytes;
        if self.prefetch.is_some() {
            state.last_batch_bytes = bytes;
        }
        let spill = match written {
            None if policy.is_none() => match state.memory.push(batch, allocations) {
                Ok(()) => Spill::Nothing(true),
                Err(over) => {
                    state.failure = Some(Error::Capacity(format!(
                        "batch {position} needs {} bytes but memory_capacity={} bytes already \
                         holds {}; raise memory_capacity, set max_readers to stream in \
                         bounded memory, or enable the disk tier",
                        over.needed, over.capacity, over.held
                    )));
                    return Ok(Spill::Nothing(false));
                }
            },
            Some(Err(err)) => {
                // The batch in hand stays in memory, over budget if need be: a disk failure
                // loses nothing that was pulled.
                state.memory.push_unbounded(batch, allocations);
                state.failure = Some(err);
                Spill::Nothing(false)
            }
            Some(Ok(entry)) => {
                state.memory.push_unbounded(batch, allocations);
                if let Some(index) = state.disk.as_mut() {
                    index.insert(position, entry);
                }
                // Everything is on disk already: the hot layer just keeps the newest.
                state.memory.trim_to_budget();
                Spill::Nothing(true)
            }
            None => {
                state.memory.push_unbounded(batch, allocations);
                Spill::Write(state.memory.over_budget_batches())
            }
        };
        state.rows_ingested += rows;
        self.ingested.store(state.memory.end(), Ordering::Release);
        Ok(spill)
    }

    /// `OnEviction`: write the batches leaving the hot layer, then let them go. On failure
    /// they stay in memory, so nothing already cached is lost. Returns whether ingestion
    /// can go on.
    fn spill(&self, ingest: &mut Ingest, leaving: Vec<(u64, Arc<CachedBatch>)>) -> Result<bool> {
        let Some(writer) = ingest.writer.as_mut() else {
            return Ok(true);
        };
        for (position, batch) in leaving {
            let written = made(&batch).and_then(|b| writer.write(position, b));
            let mut state = self.lock_state()?;
            if state.closed {
                return Ok(false);
            }
            match written {
                Ok(entry) => {
                    if state.memory.pop_oldest_at(position) {
                        if let Some(index) = state.disk.as_mut() {
                            index.insert(position, entry);
                        }
                    }
                }
                Err(err) => {
                    state.failure = Some(err);
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    /// Called when a reader moves or goes away: drop what every reader has passed, and
    /// let the read-ahead thread look again.
    pub(crate) fn reader_moved(&self) {
        if self.evicts {
            if let Ok(mut state) = self.lock_state() {
                state.evict_passed();
            }
        }
        if let Some(signal) = &self.prefetch {
            signal.notify();
        }
    }

    /// Whether readers' moves matter: they free batches (`max_readers`) or let the
    /// read-ahead thread go further (`prefetch`).
    pub(crate) fn watches_readers(&self) -> bool {
        self.evicts || self.prefetch.is_some()
    }

    /// One look of the read-ahead thread: pull the next batch if the fastest reader is
    /// less than `ahead` batches behind the frontier and another batch fits the budgets.
    /// Runs on that thread, which then calls the upstream.
    pub(crate) fn prefetch_step(&self, ahead: u64) -> Step {
        let Ok(mut state) = self.lock_state() else {
            return Step::Done;
        };
        if state.closed || state.exhausted || state.failure.is_some() {
            return Step::Done;
        }
        let frontier = state.memory.end();
        let fastest = state.registry.fastest_position();
        if frontier >= fastest.saturating_add(ahead) || !state.has_room() {
            return Step::Wait;
        }
        drop(state);
        match self.pull_next(frontier) {
            Ok(()) => Step::Pulled,
            Err(_) => Step::Done,
        }
    }
}

/// The state lock. Batches evicted while it is held are dropped after it is released:
/// dropping the last reference to a batch releases its producer's array, which may take
/// Python's GIL, and a thread holding the GIL may be waiting for this lock.
struct StateGuard<'a>(ManuallyDrop<MutexGuard<'a, State>>);

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.0
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.0
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        let released = self.0.memory.take_released();
        // SAFETY: dropped once, here, and never used again.
        unsafe { ManuallyDrop::drop(&mut self.0) };
        drop(released);
    }
}

impl State {
    /// Whether a batch the size of the last one fits the budget of the tier it lands in.
    fn has_room(&mut self) -> bool {
        let next = self.last_batch_bytes;
        match &self.disk {
            Some(index) => index.has_room_for(next),
            None => self.memory.fits(next),
        }
    }

    /// Refuse a shuffle window that cannot fit a memory-only cache that evicts: a window
    /// keeps at least `window` batches, estimated at the average size so far. Without
    /// `max_readers` every batch stays anyway, and with the disk tier they spill.
    fn check_window_fits(&mut self, window: u64, ingested: u64) -> Result<()> {
        if self.disk.is_some() || !self.registry.caps() || ingested == 0 {
            return Ok(());
        }
        let average = self.bytes_ingested / ingested;
        let needed = average.saturating_mul(window);
        let capacity = self.memory.capacity();
        if needed > capacity {
            return Err(Error::InvalidArgument(format!(
                "shuffle_window={window} keeps at least {window} batches, about {needed} \
                 bytes at the {average} bytes per batch read so far, but memory_capacity is \
                 {capacity} bytes; pass a smaller shuffle_window (at most {}), raise \
                 memory_capacity, or add a disk tier",
                capacity / average.max(1)
            )));
        }
        Ok(())
    }

    fn evict_passed(&mut self) {
        let frontier = self.memory.end();
        if let Some(below) = self.registry.evictable_below(frontier) {
            let below = self.count_rows_below(below);
            if below <= self.registry.evicted_below() {
                return;
            }
            self.batches_evicted += below - self.registry.evicted_below();
            self.memory.evict_below(below);
            if let Some(index) = self.disk.as_mut() {
                index.evict_below(below);
            }
            self.registry.mark_evicted_below(below);
        }
    }

    /// A save's row index learns a batch's rows at its first read, which a batch that
    /// eviction drops unread never has: count those from their headers first, so that
    /// rows after them can still be taken. Returns how far eviction may go: up to a batch
    /// whose header is damaged, which stays for a read to report it.
    fn count_rows_below(&mut self, below: u64) -> u64 {
        let Some(index) = self.disk.as_ref() else {
            return below;
        };
        let rows = self.memory.rows();
        while rows.batches() < below {
            let position = rows.batches();
            match index.get(position).map(|entry| entry.header_rows()) {
                Some(Ok(count)) => rows.learn(position, count),
                Some(Err(_)) => return position,
                None => break,
            }
        }
        below
    }
}

/// Saves: `persist`, `share` and `open` over the save format (`crate::save`).
impl StreamCache {
    /// Read the rest of the stream and save all of it to `path`, a directory that must
    /// not exist yet (or be empty). Fails if `max_readers` already evicted batches.
    pub fn persist(&self, path: &Path) -> Result<Persisted> {
        let parent = save::check_target(path)?;
        self.ingest_all()?;
        let evicted = self.stats()?.batches_evicted;
        if evicted > 0 {
            return Err(Error::InvalidArgument(format!(
                "cannot persist: max_readers already evicted {evicted} batches that every \
                 reader had passed; persist before the readers move on, or open the cache \
                 without max_readers"
            )));
        }
        let mut saver = Saver::start(path, parent)?;
        let mut position = 0;
        while let Some(batch) = self.batch_at(position)? {
            saver.write(position, made(&batch)?)?;
            position += 1;
        }
        let saved = saver.finish(&self.schema())?;
        self.remember(&saved);
        Ok(saved)
    }

    /// A persisted copy of this cache that other processes can open: where it was opened
    /// from or last persisted to; for a disk-tier cache never persisted, a save made once
    /// inside its private folder (deleted with it). A memory-only cache has none.
    pub fn share(&self) -> Result<Persisted> {
        if let Some(saved) = self.persisted_copy() {
            return Ok(saved);
        }
        let Some(folder) = self.disk_directory() else {
            return Err(Error::InvalidArgument(
                "a memory-only cache has no files another process can open: persist it \
                 first (persist(path)), or give it a disk_path"
                    .into(),
            ));
        };
        // Read to the end before taking the save lock: no lock is held across the
        // upstream. Then one save at a time; a second caller finds the first one's copy.
        self.ingest_all()?;
        let _saving = self
            .shared
            .save_lock
            .lock()
            .map_err(|_| Error::poisoned())?;
        if let Some(saved) = self.persisted_copy() {
            return Ok(saved);
        }
        self.persist(&folder.join("shared"))
            .map_err(|err| match err {
                Error::InvalidArgument(why) => Error::InvalidArgument(format!(
                    "this cache cannot be shared with another process (pickle, share), which \
                 opens a save of it made once: {why}"
                )),
                other => other,
            })
    }

    /// The persisted copy recorded by [`StreamCache::open`], [`StreamCache::persist`] or
    /// [`StreamCache::share`], if any.
    pub fn persisted_copy(&self) -> Option<Persisted> {
        self.shared.persisted.lock().ok()?.clone()
    }

    fn remember(&self, saved: &Persisted) {
        if let Ok(mut slot) = self.shared.persisted.lock() {
            *slot = Some(saved.clone());
        }
    }

    /// Open the persisted cache at `path`, read-only. Its files are checked against the
    /// manifest first; batches are mapped from the data file as readers reach them.
    pub fn open(path: &Path, options: &OpenOptions) -> Result<(StreamCache, Persisted)> {
        let opened = crate::save::open(path, options.verify)?;
        let cache = StreamCache::from_persisted(
            opened.schema,
            opened.index,
            opened.saved.rows,
            options.max_readers,
        )?;
        cache.remember(&opened.saved);
        Ok((cache, opened.saved))
    }
}

/// The `RecordBatch` of a cached one. Only a deferred batch can fail to make it, when
/// what its upstream handed over turns out malformed.
pub(crate) fn made(batch: &CachedBatch) -> Result<&RecordBatch> {
    batch.batch().map_err(|err| Error::from_upstream(&err))
}

/// A pulled batch and its allocations, once its schema is found to be the declared one.
/// A deferred batch was checked by its source, against the schema it declared.
fn check_pulled(expected: &SchemaRef, pulled: Pulled) -> Result<(CachedBatch, Allocations)> {
    let Pulled { batch, allocations } = pulled;
    let allocations = match allocations {
        Some(listed) => listed,
        None => Allocations::of_batch(made(&batch)?),
    };
    if let Some(made) = batch.batch_if_made() {
        check_schema(expected, made)?;
    }
    Ok((batch, allocations))
}

fn check_schema(expected: &SchemaRef, batch: &RecordBatch) -> Result<()> {
    let actual = batch.schema_ref();
    if Arc::ptr_eq(expected, actual) || expected.fields() == actual.fields() {
        return Ok(());
    }
    Err(Error::Upstream {
        message: format!(
            "the upstream produced a batch whose schema {actual} differs from its declared \
             schema {expected}"
        ),
        errno: libc::EINVAL,
    })
}
