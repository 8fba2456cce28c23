//! batchcorder: read a single-use Arrow stream once, replay it from any number of readers.
//!
//! The core ([`StreamCache`], [`CacheReader`]) is a safe Rust API; the `ffi` module is the
//! thin C boundary that `include/batchcorder.h` describes.

pub mod cache;
pub mod disk;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod faults;
#[cfg(not(feature = "fault-injection"))]
mod faults;
pub mod ffi;
pub mod reader;
mod registry;
pub mod storage;

pub use cache::{
    default_memory_capacity, BatchSource, CacheOptions, Pulled, Stats, StreamCache, Upstream,
};
pub use error::{Error, Result};
pub use reader::{validate_cast, CacheReader, Cast, OnCastFailure};
pub use storage::{CachedBatch, Derived};
