//! Cache options and every rule they must keep, in one place; messages name each option
//! as a Python or C caller writes it.

use std::path::PathBuf;
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::faults::FaultInjector;

/// Segments are this large unless one message needs more.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// The smallest segment size accepted: one page.
pub const MIN_SEGMENT_BYTES: u64 = 4096;

/// How a cache stores batches and when it may drop them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheOptions {
    /// Budget in bytes for batches held in memory; `None` is [`default_memory_capacity`].
    pub memory_capacity: Option<u64>,
    /// Cap on readers ever created; enables eviction of batches all of them have passed.
    pub max_readers: Option<u64>,
    /// The disk tier; `None` keeps everything in memory.
    pub disk: Option<DiskOptions>,
    /// Read ahead: a background thread ingests up to this many batches ahead of the
    /// fastest reader (within the memory and disk budgets); `None` reads only on demand.
    pub prefetch: Option<u64>,
    /// Save the stream to this directory as it is ingested (see
    /// [`StreamCache::persist`](crate::StreamCache::persist)); the save is complete once the
    /// upstream ends. The path must not exist yet.
    pub persist: Option<PathBuf>,
}

impl CacheOptions {
    /// Check every option, naming the one that is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.memory_capacity == Some(0) && self.disk.is_none() {
            return Err(Error::InvalidArgument(
                "memory_capacity must be at least 1 byte without the disk tier (0 is allowed \
                 with it: every batch is then read from disk); leave it unset for the default"
                    .into(),
            ));
        }
        if let Some(max_readers) = self.max_readers {
            check_max_readers(max_readers)?;
        }
        if let Some(prefetch) = self.prefetch {
            check_prefetch(prefetch)?;
        }
        match &self.disk {
            Some(disk) => disk.validate(),
            None => Ok(()),
        }
    }
}

/// `max_readers` must be at least 1.
pub fn check_max_readers(max_readers: u64) -> Result<()> {
    if max_readers == 0 {
        return Err(Error::InvalidArgument(
            "max_readers must be at least 1; leave it unset to keep every batch".into(),
        ));
    }
    Ok(())
}

/// `prefetch` must be at least 1 batch.
pub fn check_prefetch(prefetch: u64) -> Result<()> {
    if prefetch == 0 {
        return Err(Error::InvalidArgument(
            "prefetch must be at least 1 batch; leave it unset to read only on demand".into(),
        ));
    }
    Ok(())
}

/// `segment_bytes` must be at least [`MIN_SEGMENT_BYTES`].
pub fn check_segment_bytes(segment_bytes: u64) -> Result<()> {
    if segment_bytes < MIN_SEGMENT_BYTES {
        return Err(Error::InvalidArgument(format!(
            "segment_bytes must be at least {MIN_SEGMENT_BYTES}, got {segment_bytes}"
        )));
    }
    Ok(())
}

/// The default memory budget: three quarters of physical memory (all of it if unknown).
/// Asked once per process: the question is a system call.
pub fn default_memory_capacity() -> u64 {
    static CAPACITY: OnceLock<u64> = OnceLock::new();
    *CAPACITY.get_or_init(|| {
        if cfg!(miri) {
            return u64::MAX; // Miri cannot ask the OS for the machine's memory
        }
        crate::platform::physical_memory().map_or(u64::MAX, |bytes| bytes / 4 * 3)
    })
}

/// When a batch is written to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WritePolicy {
    /// Every batch, as it is ingested (replays read most batches zero-copy from disk).
    #[default]
    OnInsertion,
    /// Only when it leaves the hot layer: a stream that fits in memory never touches disk.
    OnEviction,
}

/// IPC buffer compression on disk. Compressed batches are copied when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Lz4,
    Zstd,
}

/// Where and how the disk tier stores batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskOptions {
    /// Parent directory; created if missing. The cache works in a private subdirectory.
    pub path: PathBuf,
    /// Budget in bytes for batch data on disk.
    pub capacity: u64,
    pub write_policy: WritePolicy,
    pub compression: Compression,
    /// Target size of one segment file, at least [`MIN_SEGMENT_BYTES`].
    pub segment_bytes: u64,
    /// Tests only: make one disk operation fail.
    #[cfg(feature = "fault-injection")]
    pub faults: Option<FaultInjector>,
}

impl DiskOptions {
    /// Disk options with the defaults for everything but the path and the budget.
    pub fn new(path: impl Into<PathBuf>, capacity: u64) -> Self {
        Self {
            path: path.into(),
            capacity,
            write_policy: WritePolicy::default(),
            compression: Compression::default(),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            #[cfg(feature = "fault-injection")]
            faults: None,
        }
    }

    pub(crate) fn faults(&self) -> Option<FaultInjector> {
        #[cfg(feature = "fault-injection")]
        return self.faults.clone();
        #[cfg(not(feature = "fault-injection"))]
        None
    }

    /// Check the disk options, naming the one that is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.capacity == 0 {
            return Err(Error::InvalidArgument(
                "disk_capacity must be at least 1 byte".into(),
            ));
        }
        if self.path.as_os_str().is_empty() {
            return Err(Error::InvalidArgument("disk_path must not be empty".into()));
        }
        if self.path.exists() && !self.path.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "disk_path {} exists and is not a directory; pass a directory",
                self.path.display()
            )));
        }
        check_segment_bytes(self.segment_bytes)
    }
}

/// How [`crate::StreamCache::open`] opens a persisted cache.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    pub verify: crate::save::Verify,
    /// As [`CacheOptions::max_readers`].
    pub max_readers: Option<u64>,
}
