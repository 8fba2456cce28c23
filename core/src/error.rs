//! The error type of the core, one variant per way a cache call can fail.

use std::fmt;

use arrow_schema::ArrowError;

/// Why a cache operation failed.
///
/// Each variant maps to one `BcStatus` at the C boundary and to one Python exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A caller error: bad option, impossible cast, released stream.
    InvalidArgument(String),
    /// Every one of the cache's `max_readers` readers was created already. A caller error
    /// like [`Error::InvalidArgument`] (its status in C), with an identity of its own so
    /// that a caller such as a server can tell "no reader left" from a bad request.
    ReaderCap {
        max_readers: u64,
        /// Batches before this position were evicted (0: none were).
        evicted_below: u64,
    },
    /// A memory or disk budget cannot hold a batch that must be kept.
    Capacity(String),
    /// The disk tier failed; `errno` is the OS error (EIO when there is none).
    Io { message: String, errno: i32 },
    /// The upstream producer failed; `errno` is its C Stream error code.
    Upstream { message: String, errno: i32 },
    /// The cache was closed.
    Closed,
    /// A batch or row index past the end of the stream. A caller error like
    /// [`Error::InvalidArgument`] (its status in C), with an identity of its own so that
    /// a binding can raise its "index out of range" error (Python's `IndexError`).
    OutOfRange(String),
    /// Random access reached a batch that `max_readers` eviction dropped already, once
    /// every reader had passed it.
    Evicted {
        position: u64,
        /// Every batch before this position is gone.
        evicted_below: u64,
    },
    /// A persisted cache's files are not what its save wrote: damaged, edited, truncated,
    /// or not a persisted cache at all.
    Corrupt(String),
    /// A bug: a panic, or a lock poisoned by one.
    Internal(String),
}

/// The core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wrap an error raised by the upstream reader, keeping its errno class.
    pub fn from_upstream(err: &ArrowError) -> Self {
        let errno = match err {
            ArrowError::IoError(_, io) => io
                .raw_os_error()
                .map_or(libc::EIO, |_| crate::platform::errno(io)),
            ArrowError::MemoryError(_) => libc::ENOMEM,
            ArrowError::InvalidArgumentError(_) => libc::EINVAL,
            _ => libc::EIO,
        };
        Error::Upstream {
            message: upstream_message(err),
            errno,
        }
    }

    /// The errno a C Stream callback returns for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::InvalidArgument(_)
            | Error::ReaderCap { .. }
            | Error::Closed
            | Error::OutOfRange(_)
            | Error::Evicted { .. } => libc::EINVAL,
            Error::Capacity(_) => libc::ENOMEM,
            Error::Io { errno, .. } => *errno,
            Error::Internal(_) => libc::EIO,
            Error::Corrupt(_) => libc::EILSEQ,
            Error::Upstream { errno, .. } => *errno,
        }
    }

    /// A disk-tier failure without an OS error behind it.
    pub(crate) fn io(message: impl Into<String>) -> Self {
        Error::Io {
            message: message.into(),
            errno: libc::EIO,
        }
    }

    pub(crate) fn poisoned() -> Self {
        Error::Internal(
            "the cache is poisoned: an earlier call panicked while updating it; \
             drop it and build a new cache from a fresh source"
                .into(),
        )
    }
}

/// The upstream's own text, without the `ArrowError` variant prefix that would hide it.
fn upstream_message(err: &ArrowError) -> String {
    match err {
        ArrowError::IoError(msg, _)
        | ArrowError::MemoryError(msg)
        | ArrowError::InvalidArgumentError(msg)
        | ArrowError::CDataInterface(msg) => msg.clone(),
        other => other.to_string(),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(m)
            | Error::OutOfRange(m)
            | Error::Capacity(m)
            | Error::Corrupt(m)
            | Error::Io { message: m, .. } => f.write_str(m),
            Error::Upstream { message, .. } => write!(f, "upstream stream failed: {message}"),
            Error::Closed => f.write_str(
                "the cache is closed; build a new cache from a fresh source to read again",
            ),
            Error::Internal(m) => write!(f, "internal error in batchcorder: {m}"),
            Error::Evicted {
                position,
                evicted_below,
            } => write!(
                f,
                "batch {position} was evicted: max_readers dropped every batch before \
                 {evicted_below} once all the readers had passed it; read it before the \
                 readers pass it, or create the cache without max_readers"
            ),
            Error::ReaderCap {
                max_readers,
                evicted_below,
            } => {
                write!(
                    f,
                    "Maximum number of readers ({max_readers}) has been reached: \
                     max_readers={max_readers} readers were already created from this cache"
                )?;
                if *evicted_below > 0 {
                    write!(
                        f,
                        ", and batches before {evicted_below} were evicted once every reader \
                         had passed them, so a new reader could not replay from the start"
                    )?;
                }
                f.write_str(
                    "; create the cache with a larger max_readers, and create every reader \
                     before reading",
                )
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for ArrowError {
    fn from(err: Error) -> Self {
        match err {
            Error::Io { message, errno } => {
                ArrowError::IoError(message, std::io::Error::from_raw_os_error(errno))
            }
            Error::Capacity(m) => ArrowError::MemoryError(m),
            Error::Upstream { errno, .. } => {
                let text = err.to_string();
                ArrowError::IoError(text, std::io::Error::from_raw_os_error(errno))
            }
            other => ArrowError::InvalidArgumentError(other.to_string()),
        }
    }
}
