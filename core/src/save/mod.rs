//! The save format: a whole stream as a standard Arrow IPC file plus a manifest, written
//! and opened read-only, zero-copy, by any number of processes at once, with no knowledge
//! of the cache that holds it (`StreamCache::persist` and `open` use it).
//!
//! A persisted cache is a directory:
//! - `data.arrow`: the batches as an Arrow IPC file (pyarrow's `ipc.open_file`, Polars'
//!   `scan_ipc` and DuckDB through either read it without batchcorder);
//! - `checksums.xxh3`: one little-endian XXH3-64 per IPC block, dictionaries first, then
//!   record batches, in the file footer's order;
//! - `manifest.json`: format and version, an id, the counts, the schema as text, and the
//!   checksums of everything else;
//! - `validated.json`, once a process has validated every batch: see [`validation_note`].
//!
//! A save is built in a locked staging folder beside the target and renamed into place
//! only when every file is written and synced: a crash leaves the old state or nothing.

mod footer;
mod manifest;
pub(crate) mod validation_note;
mod writer;

use std::fs::{File, Metadata};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;

use crate::disk::{
    catch_quietly, io_error, Check, Decoding, DiskEntry, DiskIndex, Message, Segment,
};
use crate::error::{Error, Result};
use crate::validate::Utf8;
use footer::Footer;
#[cfg(feature = "fault-injection")]
pub use manifest::reseal;
use manifest::Layout;
use validation_note::Validation;
pub(crate) use writer::{check_target, Saver};

/// What the manifest's `format` field says.
pub const FORMAT: &str = "batchcorder-persisted-cache";
/// The newest format this build writes and reads.
pub const FORMAT_VERSION: u64 = 1;
const MANIFEST: &str = "manifest.json";
const DATA: &str = "data.arrow";
const CHECKSUMS: &str = "checksums.xxh3";

/// When a persisted batch is checked against its checksum (on its first read in the
/// process: one pass over its bytes). Checked or not, every batch is also validated in
/// full on its first read (offsets, lengths, UTF-8, dictionary keys), so a damaged file
/// is an [`Error::Corrupt`], never a crash; only the checksum catches an edited value.
/// UTF-8, the one check that reads every text byte, is skipped when a process already
/// validated the data file as it is now ([`validation_note`]), except with `Always`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Verify {
    /// When the data file was modified after its save (its modification time differs
    /// from the one the manifest records): an edit or a damaging copy is caught, and an
    /// untouched save is read at full speed.
    #[default]
    IfModified,
    Always,
    Never,
}

/// How the batches of an opened save are checked on their first read in a process, as
/// `verify` and the save's [`validation_note`] decided when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validated {
    /// Against their checksums, then validated in full (UTF-8 included).
    Checksums,
    /// Validated in full, UTF-8 included; no checksums.
    Full,
    /// Validated in full but for UTF-8, which a note (`validated.json`) vouches for.
    Noted,
}

/// What a save wrote, as its manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persisted {
    /// The directory, from the root.
    pub path: PathBuf,
    /// 32 hex digits, new for every save: a reference to a persisted cache names it.
    pub id: String,
    pub batches: u64,
    pub rows: u64,
}

/// An opened save: its batches, read from the data file as they are reached.
pub(crate) struct Opened {
    pub(crate) schema: SchemaRef,
    pub(crate) index: DiskIndex,
    pub(crate) saved: Persisted,
}

/// Open the save at `path`, read-only. Its files are checked against the manifest first;
/// batches are mapped from the data file as readers reach them, each checked on its first
/// read as `verify` says.
pub(crate) fn open(path: &Path, verify: Verify) -> Result<Opened> {
    let layout = Layout::read(path)?;
    let (data_path, file, meta) = data_file(path)?;
    let len = meta.len();
    if len != layout.data_bytes {
        return Err(layout.damaged(format!(
            "{DATA} has {len} bytes where the manifest says {}: it was truncated or edited",
            layout.data_bytes
        )));
    }
    let checksums = match verify {
        Verify::Always => true,
        Verify::Never => false,
        Verify::IfModified => modified_ns(&meta, &data_path)? != layout.data_modified_ns,
    };
    let footer = Footer::read(&file, &data_path, len)?;
    // arrow-ipc converts some types arrow-rs cannot make an array of (run ends that are
    // not signed integers); the first empty batch, such as a `take` of no rows, would
    // panic. Only a crafted save has one: the cache never holds a batch of such a type.
    if let Err(panic) = catch_quietly(|| RecordBatch::new_empty(footer.schema.clone())) {
        return Err(layout.damaged(format!(
            "the schema of {DATA} has a type arrow cannot make arrays of ({panic})"
        )));
    }
    if footer.batches.len() as u64 != layout.batches
        || footer.checksummed() != layout.checksums.len()
    {
        return Err(layout.damaged(format!(
            "{DATA} holds {} batches and {} dictionaries where the manifest says {} and \
             {} checksums",
            footer.batches.len(),
            footer.dictionaries.len(),
            layout.batches,
            layout.checksums.len()
        )));
    }
    if footer.structure_checksum(&file, &data_path, len)? != layout.structure_checksum {
        return Err(layout.damaged(format!(
            "the schema or footer of {DATA} does not match its checksum: it was edited"
        )));
    }
    let validation = Validation::new(
        path,
        &layout.id,
        &file,
        &meta,
        footer.batches.len(),
        verify == Verify::Always,
    );
    let segment = Segment::persisted(data_path, file, len);
    let (dictionary_sums, batch_sums) = layout.checksums.split_at(footer.dictionaries.len());
    let mut dictionaries = Vec::with_capacity(footer.dictionaries.len());
    for (block, expected) in footer.dictionaries.iter().zip(dictionary_sums) {
        let message = Message::persisted(&segment, block)?;
        if checksums && message.checksum()? != *expected {
            return Err(layout.damaged(format!(
                "a dictionary at byte {} of {DATA} does not match its checksum: it was \
                 edited or damaged",
                block.offset()
            )));
        }
        dictionaries.push(message);
    }
    // A batch decodes with the dictionaries written before it, deltas included, so
    // each replays the dictionary it was saved with.
    let in_force = |count: usize| -> Arc<[Message]> { dictionaries[..count].into() };
    let mut written_before = (0, in_force(0));
    let mut entries = Vec::with_capacity(footer.batches.len());
    let decoding = Decoding::new(footer.schema.clone());
    let check = Check::new(checksums.then(|| batch_sums.into()), validation.clone());
    // A footer lists fewer than `u32::MAX` blocks (a flatbuffer vector's length is a u32).
    for (position, block) in (0u32..).zip(&footer.batches) {
        let count = footer
            .dictionaries
            .iter()
            .take_while(|d| d.offset() < block.offset())
            .count();
        if count != written_before.0 {
            written_before = (count, in_force(count));
        }
        entries.push(DiskEntry::persisted(
            Message::persisted(&segment, block)?,
            written_before.1.clone(),
            decoding.clone(),
            check.clone(),
            position,
        ));
    }
    let validated = match (checksums, validation.utf8()) {
        (true, _) => Validated::Checksums,
        (false, Utf8::Check) => Validated::Full,
        (false, Utf8::Noted) => Validated::Noted,
    };
    Ok(Opened {
        schema: footer.schema,
        index: DiskIndex::persisted(entries, validated),
        saved: Persisted {
            path: absolute(path),
            id: layout.id,
            batches: layout.batches,
            rows: layout.rows,
        },
    })
}

/// `path` from the root, so that a reference to a save opens after a change of directory
/// and in another process.
pub(super) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The data file of the save in `dir`: its path, the open file and its metadata (the one
/// `fstat` an open makes: its length, times and identity all come from it).
pub(super) fn data_file(dir: &Path) -> Result<(PathBuf, File, Metadata)> {
    let path = dir.join(DATA);
    let file = open_file(&path)?;
    let meta = file
        .metadata()
        .map_err(|err| io_error("cannot read", &path, err))?;
    Ok((path, file, meta))
}

/// A new file of the save, shared as any file the user writes.
pub(super) fn create_file(path: &Path) -> Result<File> {
    crate::platform::create_shared(path).map_err(|err| io_error("cannot create", path, err))
}

fn open_file(path: &Path) -> Result<File> {
    crate::platform::open_read(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => Error::Corrupt(format!(
            "{} is missing: this is not a whole persisted cache",
            path.display()
        )),
        _ => io_error("cannot open", path, err),
    })
}

pub(super) fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = create_file(path)?;
    file.write_all(bytes)
        .and_then(|()| crate::platform::sync_all(&file))
        .map_err(|err| io_error("cannot write", path, err))
}

/// The modification time in `meta` (of the file at `path`) in nanoseconds since the
/// epoch (0 if before it).
pub(super) fn modified_ns(meta: &Metadata, path: &Path) -> Result<Option<u64>> {
    let modified = meta
        .modified()
        .map_err(|err| io_error("cannot read", path, err))?;
    Ok(Some(
        modified
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64),
    ))
}

pub(super) fn hex(value: u64) -> String {
    format!("{value:016x}")
}
