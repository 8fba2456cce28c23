//! Persisted caches: a whole stream saved as a standard Arrow IPC file plus a manifest,
//! and opened read-only, zero-copy, by any number of processes at once.
//!
//! A persisted cache is a directory:
//! - `data.arrow`: the batches as an Arrow IPC file (pyarrow's `ipc.open_file`, Polars'
//!   `scan_ipc` and DuckDB through either read it without batchcorder);
//! - `checksums.xxh3`: one little-endian XXH3-64 per IPC block, dictionaries first, then
//!   record batches, in the file footer's order;
//! - `manifest.json`: format and version, an id, the counts, the schema as text, and the
//!   checksums of everything else.
//!
//! A save is built in a locked staging folder beside the target and renamed into place
//! only when every file is written and synced: a crash leaves the old state or nothing.

use std::fs::File;
use std::hash::Hasher;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_ipc::writer::{DictionaryHandling, FileWriter, IpcWriteOptions};
use arrow_ipc::{Block, MetadataVersion};
use arrow_schema::{ArrowError, SchemaRef};
use serde_json::{json, Value};
use twox_hash::XxHash3_64;

use crate::cache::{made, StreamCache};
use crate::disk::{
    catch_quietly, io_error, map_range, Check, DiskEntry, DiskIndex, Message, Segment,
};
use crate::error::{Error, Result};
use crate::spill_dir::{self, SpillDir};

/// What the manifest's `format` field says.
pub const FORMAT: &str = "batchcorder-persisted-cache";
/// The newest format this build writes and reads.
pub const FORMAT_VERSION: u64 = 1;
const MANIFEST: &str = "manifest.json";
const DATA: &str = "data.arrow";
const CHECKSUMS: &str = "checksums.xxh3";
/// The manifest's own checksum, in its `checksums` object: over every other field.
const MANIFEST_SUM: &str = "manifest_xxh3";
/// Message alignment in the data file, as in the disk tier.
const ALIGNMENT: usize = 64;

/// When a persisted batch is checked against its checksum (on its first read in the
/// process: one pass over its bytes). Checked or not, every batch is also validated in
/// full by arrow on its first read (offsets, lengths, UTF-8, dictionary keys), so a
/// damaged file is an [`Error::Corrupt`], never a crash; only the checksum catches an
/// edited value.
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

/// How [`StreamCache::open`] opens a persisted cache.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    pub verify: Verify,
    /// As [`crate::CacheOptions::max_readers`].
    pub max_readers: Option<u64>,
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

impl StreamCache {
    /// Read the rest of the stream and save all of it to `path`, a directory that must
    /// not exist yet (or be empty). Fails if `max_readers` already evicted batches.
    pub fn persist(&self, path: &Path) -> Result<Persisted> {
        let parent = check_target(path)?;
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
            .shared()
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
        self.shared().persisted.lock().ok()?.clone()
    }

    pub(crate) fn remember(&self, saved: &Persisted) {
        if let Ok(mut slot) = self.shared().persisted.lock() {
            *slot = Some(saved.clone());
        }
    }

    /// Open the persisted cache at `path`, read-only. Its files are checked against the
    /// manifest first; batches are mapped from the data file as readers reach them.
    pub fn open(path: &Path, options: &OpenOptions) -> Result<(StreamCache, Persisted)> {
        let layout = Layout::read(path)?;
        let (data_path, file, len) = data_file(path)?;
        if len != layout.data_bytes {
            return Err(layout.damaged(format!(
                "{DATA} has {len} bytes where the manifest says {}: it was truncated or edited",
                layout.data_bytes
            )));
        }
        let verify = match options.verify {
            Verify::Always => true,
            Verify::Never => false,
            Verify::IfModified => modified_ns(&file, &data_path)? != layout.data_modified_ns,
        };
        let footer = Footer::read(&file, &data_path, len)?;
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
        let segment = Segment::persisted(data_path, file, len);
        let (dictionary_sums, batch_sums) = layout.checksums.split_at(footer.dictionaries.len());
        let mut dictionaries = Vec::with_capacity(footer.dictionaries.len());
        for (block, expected) in footer.dictionaries.iter().zip(dictionary_sums) {
            let message = Message::persisted(&segment, block)?;
            if verify && message.checksum()? != *expected {
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
        for (block, expected) in footer.batches.iter().zip(batch_sums) {
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
                footer.schema.clone(),
                Check::new(verify.then_some(*expected)),
            ));
        }
        let cache = StreamCache::from_persisted(
            footer.schema.clone(),
            DiskIndex::persisted(entries),
            layout.rows,
            options.max_readers,
        )?;
        let opened = Persisted {
            path: absolute(path),
            id: layout.id,
            batches: layout.batches,
            rows: layout.rows,
        };
        cache.remember(&opened);
        Ok((cache, opened))
    }
}

/// A save in progress: batches go into a data file in a locked staging folder beside the
/// target; [`Saver::finish`] adds the checksums and the manifest and moves the folder into
/// place. Dropped unfinished, it removes the staging folder.
pub(crate) struct Saver {
    target: PathBuf,
    staging: SpillDir,
    writer: Option<FileWriter<BufWriter<File>>>,
    batches: u64,
    rows: u64,
}

impl std::fmt::Debug for Saver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saver")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Saver {
    /// Check that `target` is free and create the staging folder; writes nothing yet.
    pub(crate) fn new(target: &Path) -> Result<Self> {
        let parent = check_target(target)?;
        Self::start(target, parent)
    }

    fn start(target: &Path, parent: PathBuf) -> Result<Self> {
        spill_dir::remove_abandoned(&parent);
        let staging = SpillDir::create_staging(&parent)
            .map_err(|err| io_error("cannot create a staging folder in", &parent, err))?;
        Ok(Self {
            target: absolute(target),
            staging,
            writer: None,
            batches: 0,
            rows: 0,
        })
    }

    fn data_path(&self) -> PathBuf {
        self.staging.path().join(DATA)
    }

    fn writer(&mut self, schema: &SchemaRef) -> Result<&mut FileWriter<BufWriter<File>>> {
        if self.writer.is_none() {
            let path = self.data_path();
            let file = create_file(&path)?;
            // A dictionary that a batch extends is written as a delta, which the file
            // format holds (as pyarrow's writer with emit_dictionary_deltas does).
            let options = IpcWriteOptions::try_new(ALIGNMENT, false, MetadataVersion::V5)
                .map_err(|err| Error::Internal(format!("IPC options: {err}")))?
                .with_dictionary_handling(DictionaryHandling::Delta);
            let out = BufWriter::with_capacity(1 << 20, file);
            let writer = FileWriter::try_new_with_options(out, schema, options)
                .map_err(|err| write_error(&path, err))?;
            self.writer = Some(writer);
        }
        Ok(self.writer.as_mut().expect("created above"))
    }

    /// Append the batch at stream `position`.
    pub(crate) fn write(&mut self, position: u64, batch: &RecordBatch) -> Result<()> {
        let path = self.data_path();
        let writer = self.writer(batch.schema_ref())?;
        writer.write(batch).map_err(|err| match err {
            ArrowError::InvalidArgumentError(m) if m.contains("replacement") => {
                Error::InvalidArgument(format!(
                    "cannot persist: batch {position} replaces a dictionary with one that \
                     does not extend it, which an Arrow IPC file cannot hold ({m}); cast the \
                     dictionary columns to their value type (cache.cast) and persist that"
                ))
            }
            other => write_error(&path, other),
        })?;
        self.batches += 1;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Close the data file, write the checksums and the manifest, sync everything, and
    /// rename the staging folder to the target.
    pub(crate) fn finish(mut self, schema: &SchemaRef) -> Result<Persisted> {
        let path = self.data_path();
        self.writer(schema)?;
        let mut writer = self.writer.take().expect("created above");
        writer.finish().map_err(|err| write_error(&path, err))?;
        let file = writer
            .into_inner()
            .map_err(|err| write_error(&path, err))?
            .into_inner()
            .map_err(|err| io_error("cannot write", &path, err.into_error()))?;
        file.sync_all()
            .map_err(|err| io_error("cannot sync", &path, err))?;
        let saved = Persisted {
            path: self.target.clone(),
            id: random_id(self.staging.path())?,
            batches: self.batches,
            rows: self.rows,
        };
        write_manifest(self.staging.path(), &saved, schema)?;
        as_mkdir_makes(self.staging.path())?;
        let target = self.target;
        self.staging
            .commit(&target)
            .map_err(|err| match err.raw_os_error() {
                Some(libc::EEXIST) | Some(libc::ENOTEMPTY) => Error::InvalidArgument(format!(
                    "cannot persist to {}: it appeared while this save ran (another save to the \
                 same path finished first); pick another path",
                    target.display()
                )),
                _ => io_error("cannot move the save into place at", &target, err),
            })?;
        Ok(saved)
    }
}

/// Give the staging folder, private while written, the mode `mkdir` gives a folder
/// beside it (0777 less the umask, or the parent's default ACL): a save is shared like
/// any file the user writes. A probe folder tells that mode; reading the umask would
/// mean setting it, under every other thread's feet.
fn as_mkdir_makes(dir: &Path) -> Result<()> {
    let probe = dir.join(".mode");
    std::fs::create_dir(&probe)
        .and_then(|()| std::fs::metadata(&probe))
        .and_then(|meta| std::fs::remove_dir(&probe).map(|()| meta.permissions()))
        .and_then(|mode| std::fs::set_permissions(dir, mode))
        .map_err(|err| io_error("cannot set the mode of", dir, err))
}

/// Tests and fuzzing only: rewrite the checksums and the manifest of the save at `path`
/// from its data file as it is now, as if batchcorder had saved those bytes: a save
/// crafted to pass every checksum, which must still never crash a reader.
#[cfg(feature = "fault-injection")]
pub fn reseal(path: &Path) -> Result<()> {
    let manifest_path = path.join(MANIFEST);
    let text = std::fs::read(&manifest_path)
        .map_err(|err| io_error("cannot read", &manifest_path, err))?;
    let manifest: Value = serde_json::from_slice(&text)
        .map_err(|err| Error::Corrupt(format!("{}: {err}", manifest_path.display())))?;
    let (data_path, file, len) = data_file(path)?;
    let footer = Footer::read(&file, &data_path, len)?;
    let saved = Persisted {
        path: path.to_path_buf(),
        id: manifest["id"].as_str().unwrap_or_default().to_owned(),
        batches: footer.batches.len() as u64,
        rows: manifest["rows"].as_u64().unwrap_or_default(),
    };
    for name in [MANIFEST, CHECKSUMS] {
        let _ = std::fs::remove_file(path.join(name));
    }
    write_manifest(path, &saved, &footer.schema)
}

/// The parent folder a save to `path` is staged in, once `path` is free to take.
fn check_target(path: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let empty = std::fs::read_dir(path)
                .map_err(|err| io_error("cannot read", path, err))?
                .next()
                .is_none();
            if !empty {
                return Err(Error::InvalidArgument(format!(
                    "cannot persist to {}: it is a directory that is not empty; persist to a \
                     new path (batchcorder deletes nothing it did not write)",
                    path.display()
                )));
            }
        }
        Ok(_) => {
            return Err(Error::InvalidArgument(format!(
                "cannot persist to {}: it is a file; pass a directory path that does not \
                 exist yet",
                path.display()
            )))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(io_error("cannot persist to", path, err)),
    }
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&parent) {
        Ok(meta) if meta.is_dir() => Ok(parent),
        Ok(_) => Err(Error::io(format!(
            "cannot persist to {}: its parent is not a directory",
            path.display()
        ))),
        Err(err) => Err(io_error("cannot persist into", &parent, err)),
    }
}

/// `path` from the root, so that a reference to a save opens after a change of directory
/// and in another process.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The data file of the save in `dir`: its path, the open file and its length.
fn data_file(dir: &Path) -> Result<(PathBuf, File, u64)> {
    let path = dir.join(DATA);
    let file = open_file(&path)?;
    let len = file
        .metadata()
        .map_err(|err| io_error("cannot read", &path, err))?
        .len();
    Ok((path, file, len))
}

fn create_file(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o666) // less the umask, as any file the user writes
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| io_error("cannot create", path, err))
}

fn open_file(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => Error::Corrupt(format!(
                "{} is missing: this is not a whole persisted cache",
                path.display()
            )),
            _ => io_error("cannot open", path, err),
        })
}

fn write_error(path: &Path, err: ArrowError) -> Error {
    match err {
        ArrowError::IoError(_, io) => io_error("cannot write", path, io),
        other => Error::io(format!("cannot write {}: {other}", path.display())),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = create_file(path)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|err| io_error("cannot write", path, err))
}

fn random_id(near: &Path) -> Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|err| io_error("cannot read /dev/urandom for an id of", near, err))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The file's modification time in nanoseconds since the epoch (0 if before it).
fn modified_ns(file: &File, path: &Path) -> Result<Option<u64>> {
    let modified = file
        .metadata()
        .and_then(|meta| meta.modified())
        .map_err(|err| io_error("cannot read", path, err))?;
    Ok(Some(
        modified
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64),
    ))
}

fn hex(value: u64) -> String {
    format!("{value:016x}")
}

/// Checksum the data file's blocks, write them and the manifest, all synced.
fn write_manifest(dir: &Path, saved: &Persisted, schema: &SchemaRef) -> Result<()> {
    let (data_path, file, len) = data_file(dir)?;
    let footer = Footer::read(&file, &data_path, len)?;
    let structure = footer.structure_checksum(&file, &data_path, len)?;
    let modified = modified_ns(&file, &data_path)?;
    let segment = Segment::persisted(data_path.clone(), file, len);
    let mut sums = Vec::with_capacity(footer.checksummed() * 8);
    for block in footer.dictionaries.iter().chain(&footer.batches) {
        sums.extend_from_slice(
            &Message::persisted(&segment, block)?
                .checksum()?
                .to_le_bytes(),
        );
    }
    write_synced(&dir.join(CHECKSUMS), &sums)?;
    let fields: Vec<Value> = schema
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": f.data_type().to_string(), "nullable": f.is_nullable()}))
        .collect();
    let mut manifest = json!({
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "id": saved.id,
        "written_by": format!("batchcorder {}", env!("CARGO_PKG_VERSION")),
        "data_file": DATA,
        "data_bytes": len,
        "data_modified_ns": modified,
        "batches": saved.batches,
        "rows": saved.rows,
        "dictionaries": footer.dictionaries.len(),
        "schema": fields,
        "checksums": {
            "algorithm": "xxh3-64",
            "file": CHECKSUMS,
            "file_xxh3": hex(XxHash3_64::oneshot(&sums)),
            "schema_and_footer_xxh3": hex(structure),
        },
    });
    manifest["checksums"][MANIFEST_SUM] = hex(manifest_checksum(&manifest)).into();
    let mut text = serde_json::to_vec_pretty(&manifest)
        .map_err(|err| Error::Internal(format!("manifest: {err}")))?;
    text.push(b'\n');
    write_synced(&dir.join(MANIFEST), &text)
}

/// XXH3 of the manifest without its own checksum, in a canonical form (compact, keys
/// sorted), so that a tool that reformats the file changes nothing.
fn manifest_checksum(manifest: &Value) -> u64 {
    fn canonical(value: &Value, out: &mut String) {
        match value {
            Value::Object(fields) => {
                let mut fields: Vec<_> = fields.iter().collect();
                fields.sort_unstable_by_key(|(key, _)| *key);
                out.push('{');
                for (i, (key, value)) in fields.into_iter().enumerate() {
                    out.push_str(if i == 0 { "" } else { "," });
                    out.push_str(&Value::from(key.as_str()).to_string());
                    out.push(':');
                    canonical(value, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i == 0 { "" } else { "," });
                    canonical(item, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut without = manifest.clone();
    if let Some(sums) = without.get_mut("checksums").and_then(Value::as_object_mut) {
        sums.remove(MANIFEST_SUM);
    }
    let mut text = String::new();
    canonical(&without, &mut text);
    XxHash3_64::oneshot(text.as_bytes())
}

/// A persisted cache's manifest and checksums, checked against each other.
struct Layout {
    path: PathBuf,
    id: String,
    data_bytes: u64,
    /// The data file's modification time at its save; `None` if the manifest lacks it.
    data_modified_ns: Option<u64>,
    batches: u64,
    rows: u64,
    checksums: Vec<u64>,
    structure_checksum: u64,
}

impl Layout {
    fn read(path: &Path) -> Result<Self> {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(Error::InvalidArgument(format!(
                    "cannot open {}: it is a file; pass the directory a cache was persisted to",
                    path.display()
                )))
            }
            Err(err) => return Err(io_error("cannot open persisted cache", path, err)),
        }
        let manifest_path = path.join(MANIFEST);
        let text = match std::fs::read(&manifest_path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Corrupt(format!(
                    "{} holds no {MANIFEST}: it is not a persisted batchcorder cache, or its \
                     save did not finish",
                    path.display()
                )))
            }
            Err(err) => return Err(io_error("cannot read", &manifest_path, err)),
        };
        let not_ours = |why: &str| {
            Error::Corrupt(format!(
                "{} is not a persisted batchcorder cache: {why}",
                manifest_path.display()
            ))
        };
        let manifest: Value =
            serde_json::from_slice(&text).map_err(|err| not_ours(&format!("not JSON ({err})")))?;
        if manifest.get("format").and_then(Value::as_str) != Some(FORMAT) {
            return Err(not_ours(&format!("its \"format\" is not \"{FORMAT}\"")));
        }
        let number = |key: &str| {
            manifest
                .get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| not_ours(&format!("\"{key}\" is missing or not a number")))
        };
        let version = number("format_version")?;
        if version > FORMAT_VERSION {
            return Err(Error::InvalidArgument(format!(
                "{} was saved in format version {version}, newer than this batchcorder {} \
                 reads (up to {FORMAT_VERSION}); upgrade batchcorder to open it",
                path.display(),
                env!("CARGO_PKG_VERSION")
            )));
        }
        let text_field = |value: Option<&Value>, key: &str| {
            value
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| not_ours(&format!("\"{key}\" is missing or not text")))
        };
        let checksums_entry = manifest.get("checksums");
        let sum = |key: &str| {
            let text = text_field(checksums_entry.and_then(|c| c.get(key)), key)?;
            u64::from_str_radix(&text, 16).map_err(|_| not_ours(&format!("\"{key}\" is not hex")))
        };
        let algorithm = text_field(
            checksums_entry.and_then(|c| c.get("algorithm")),
            "algorithm",
        )?;
        if algorithm != "xxh3-64" {
            return Err(not_ours(&format!(
                "unknown checksum algorithm \"{algorithm}\""
            )));
        }
        if sum(MANIFEST_SUM)? != manifest_checksum(&manifest) {
            return Err(Error::Corrupt(format!(
                "the persisted cache at {} is damaged: {} was edited (its fields do not \
                 match its checksum {MANIFEST_SUM}); persist the stream again",
                path.display(),
                manifest_path.display()
            )));
        }
        let mut layout = Self {
            path: path.to_path_buf(),
            id: text_field(manifest.get("id"), "id")?,
            data_bytes: number("data_bytes")?,
            data_modified_ns: manifest.get("data_modified_ns").and_then(Value::as_u64),
            batches: number("batches")?,
            rows: number("rows")?,
            checksums: Vec::new(),
            structure_checksum: sum("schema_and_footer_xxh3")?,
        };
        let sums_path = path.join(CHECKSUMS);
        let sums = std::fs::read(&sums_path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => layout.damaged(format!("{CHECKSUMS} is missing")),
            _ => io_error("cannot read", &sums_path, err),
        })?;
        if sums.len() % 8 != 0 || XxHash3_64::oneshot(&sums) != sum("file_xxh3")? {
            return Err(layout.damaged(format!("{CHECKSUMS} does not match the manifest")));
        }
        layout.checksums = sums
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        Ok(layout)
    }

    fn damaged(&self, why: String) -> Error {
        Error::Corrupt(format!(
            "the persisted cache at {} is damaged: {why}; persist the stream again",
            self.path.display()
        ))
    }
}

/// The footer of an Arrow IPC file: its schema and the blocks of its messages.
struct Footer {
    schema: SchemaRef,
    dictionaries: Vec<Block>,
    batches: Vec<Block>,
}

impl Footer {
    /// The footer of the data file at `path`, `len` bytes long.
    fn read(file: &File, path: &Path, len: u64) -> Result<Self> {
        // arrow-ipc's schema conversion panics on some malformed input instead of
        // failing; nothing outlives the parse.
        catch_quietly(|| Self::parse(file, path, len)).unwrap_or_else(|panic| {
            Err(Error::Corrupt(format!(
                "{} is not a whole Arrow IPC file: its footer does not parse ({panic})",
                path.display()
            )))
        })
    }

    fn parse(file: &File, path: &Path, len: u64) -> Result<Self> {
        let damaged = |why: String| {
            Error::Corrupt(format!(
                "{} is not a whole Arrow IPC file: {why}",
                path.display()
            ))
        };
        const TRAILER: u64 = 10; // footer length (4) and magic (6)
        if len < 8 + TRAILER {
            return Err(damaged(format!("it has only {len} bytes")));
        }
        let trailer = map_range(file, path, len - TRAILER, TRAILER as usize, false)?;
        let trailer: [u8; 10] = trailer.as_slice().try_into().expect("10 bytes");
        let footer_len = arrow_ipc::reader::read_footer_length(trailer)
            .map_err(|err| damaged(err.to_string()))? as u64;
        if footer_len > len - TRAILER - 8 {
            return Err(damaged(format!(
                "its footer length {footer_len} overruns the file"
            )));
        }
        let bytes = map_range(
            file,
            path,
            len - TRAILER - footer_len,
            footer_len as usize,
            true,
        )?;
        let footer = arrow_ipc::root_as_footer(bytes.as_slice())
            .map_err(|err| damaged(format!("its footer does not parse ({err})")))?;
        let schema = footer
            .schema()
            .ok_or_else(|| damaged("its footer has no schema".into()))?;
        let schema = arrow_ipc::convert::try_fb_to_schema(schema)
            .map_err(|err| damaged(format!("its schema does not parse ({err})")))?;
        let schema = Arc::new(schema);
        let footer_start = len - TRAILER - footer_len;
        let dictionaries: Vec<Block> = footer
            .dictionaries()
            .map(|list| list.iter().copied().collect())
            .unwrap_or_default();
        let batches: Vec<Block> = footer
            .recordBatches()
            .map(|list| list.iter().copied().collect())
            .unwrap_or_default();
        for block in dictionaries.iter().chain(&batches) {
            let end = (block.offset() as i128)
                + block.metaDataLength() as i128
                + block.bodyLength() as i128;
            if block.offset() < 8 || block.metaDataLength() < 0 || end > footer_start as i128 {
                return Err(damaged(format!(
                    "a block at byte {} overruns it",
                    block.offset()
                )));
            }
        }
        Ok(Self {
            schema,
            dictionaries,
            batches,
        })
    }

    /// Blocks that have a checksum each: dictionaries, then batches.
    fn checksummed(&self) -> usize {
        self.dictionaries.len() + self.batches.len()
    }

    /// XXH3 of every byte outside the blocks: magic, schema message, footer, trailer.
    fn structure_checksum(&self, file: &File, path: &Path, len: u64) -> Result<u64> {
        let mut blocks: Vec<(u64, u64)> = self
            .dictionaries
            .iter()
            .chain(&self.batches)
            .map(|b| {
                let start = b.offset() as u64;
                (
                    start,
                    start + b.metaDataLength() as u64 + b.bodyLength() as u64,
                )
            })
            .collect();
        blocks.sort_unstable();
        let mut hasher = XxHash3_64::with_seed(0);
        let mut at = 0u64;
        for (start, end) in blocks.into_iter().chain([(len, len)]) {
            if start > at {
                hasher.write(map_range(file, path, at, (start - at) as usize, true)?.as_slice());
            }
            at = at.max(end);
        }
        Ok(hasher.finish())
    }
}
