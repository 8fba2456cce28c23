//! batchcorder's Arrow C Data engine: a small C Data Interface toolkit of its own, as
//! nanoarrow is for C. It reads a producer's `ArrowArrayStream`, checks every array
//! against its schema, keeps the producer's arrays as they came, and exports copies of
//! them to any number of consumers. It knows nothing of a cache: the `batchcorder` crate
//! adapts these types to the core's traits and adds the C ABI's statuses and handles.
//!
//! Each module depends only on those listed before it:
//!
//! | module | purpose |
//! |---|---|
//! | [`abi`] | the C Data and C Stream Interface structs, and the casts to arrow-rs's twins |
//! | [`layout`] | the array tree a schema's arrays must have, from arrow-rs's layouts: the per-array check |
//! | [`schema_copy`] | an owned copy of a C schema tree, exported exactly as its producer wrote it |
//! | [`kept`] | the producer's array tree that we keep, and the roots arrow-rs imports it through |
//! | [`image`] | the export image of a kept tree or of a batch's columns, copied by every export |
//! | [`import`] | a producer's stream: its schema, and each array checked and kept |
//!
//! Every `unsafe` block says why it is sound (`clippy::undocumented_unsafe_blocks` is
//! denied), and the unit tests run under Miri (`make miri`).

pub mod abi;
pub mod image;
pub mod import;
pub mod kept;
pub mod layout;
pub mod schema_copy;
