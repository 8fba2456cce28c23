//! libbatchcorder: the C ABI of batchcorder over the Arrow C Stream Interface, as
//! `include/batchcorder.h` describes it. A thin layer: the cache itself is the
//! `batchcorder-core` crate (core/), which Rust users depend on directly.

pub use batchcorder_cdata::abi;
pub mod boundary;
pub mod cache;
pub mod capsule;
mod derived;
pub mod export;
pub mod options;
pub mod persist;
pub mod random_access;
pub mod reader_options;
pub mod upstream;
pub mod version;

pub use boundary::{
    bc_last_error, bc_last_error_errno, bc_last_error_kind, bc_version, BcErrorKind, BcStatus,
};
