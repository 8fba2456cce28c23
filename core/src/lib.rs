//! batchcorder's core: read a single-use Arrow stream once, replay it from any number of
//! independent readers.
//!
//! A [`StreamCache`] wraps any [`arrow_array::RecordBatchReader`] and pulls it lazily,
//! exactly once, keeping every batch in memory or in a memory + disk tier (Arrow IPC
//! segments, read back through memory maps). Each [`CacheReader`] replays the stream from
//! the start or joins at the ingestion frontier, on any thread. With
//! [`CacheOptions::max_readers`], batches that every reader has passed are evicted, which
//! bounds memory like `itertools.tee`.
//!
//! ```
//! use std::sync::Arc;
//! use arrow_array::{Int64Array, RecordBatch, RecordBatchIterator};
//! use arrow_schema::{DataType, Field, Schema};
//! use batchcorder_core::{CacheOptions, StreamCache};
//!
//! let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
//! let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))])?;
//! let once = RecordBatchIterator::new([Ok(batch.clone()), Ok(batch)], schema);
//! let cache = StreamCache::new(Box::new(once), CacheOptions::default())?;
//! for _ in 0..2 {
//!     // Every pass sees the whole stream; the upstream is read once.
//!     let rows: usize = cache.reader(true)?.map(|b| b.unwrap().num_rows()).sum();
//!     assert_eq!(rows, 6);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The C ABI (`libbatchcorder`, `include/batchcorder.h`) and the Python package are thin
//! layers over this crate.

pub mod cache;
// Its one unsafe block whose SAFETY comment is not next to it (`map_file`) is being
// reworked with damaged saves; the comment moves then, and this goes.
#[expect(
    clippy::undocumented_unsafe_blocks,
    reason = "disk.rs is being reworked"
)]
pub mod disk;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod faults;
#[cfg(not(feature = "fault-injection"))]
mod faults;
mod ipc_flat;
pub mod options;
pub mod order;
mod platform;
mod prefetch;
mod random_access;
pub mod reader;
mod registry;
pub mod save;
mod spill_dir;
pub mod storage;
mod validate;

pub use cache::{BatchSource, Pulled, Stats, StreamCache, Upstream};
pub use error::{Error, Result};
pub use ipc_flat::{FlatBuffers, FlatColumn};
pub use options::{
    default_memory_capacity, CacheOptions, Compression, DiskOptions, OpenOptions, WritePolicy,
};
pub use order::{ReadOrder, Shard, Shuffle};
pub use reader::{validate_cast, CacheReader, Cast, OnCastFailure, ReaderOptions};
pub use save::{Persisted, Validated, Verify};
pub use storage::{CachedBatch, Derived, RowIndex};
