//! The disk tier: batches as Arrow IPC messages in bounded segment files, read back
//! zero-copy through memory maps.
//!
//! Each cache works in a fresh private directory (0700) under the user's path; segment
//! files are created exclusively, mode 0600, sized once before they are mapped and never
//! truncated, so a mapping can never fault. The cache keeps its own index of message
//! blocks, which lets any batch be decoded alone, with the dictionaries in force at it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_buffer::Buffer;
use arrow_ipc::reader::FileDecoder;
use arrow_ipc::writer::{
    write_message, DictionaryTracker, EncodedData, IpcDataGenerator, IpcWriteContext,
    IpcWriteOptions,
};
use arrow_ipc::{Block, CompressionType, MetadataVersion};
use arrow_schema::{ArrowError, SchemaRef};
use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::faults::{FaultInjector, IoPoint};
use crate::ipc_flat::{FlatBuffers, Layout};
use crate::options::{Compression, DiskOptions, WritePolicy};
use crate::save::validation_note::Validation;
use crate::save::Validated;
use crate::spill_dir::{self, SpillDir};
use crate::storage::CachedBatch;

/// Every message starts at a multiple of this, so mapped buffers are aligned for any type.
const ALIGNMENT: usize = 64;

pub(crate) fn io_error(what: &str, path: &Path, err: std::io::Error) -> Error {
    Error::Io {
        message: format!("{what} {}: {}", path.display(), without_errno(&err)),
        errno: os_errno(&err),
    }
}

/// `err`'s text without Rust's " (os error N)": the errno travels apart, and Python's
/// `OSError` shows it as "[Errno N]".
fn without_errno(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.split_once(" (os error ") {
        Some((before, rest)) => match rest.split_once(')') {
            Some((_, after)) => format!("{before}{after}"),
            None => text,
        },
        None => text,
    }
}

/// The OS error behind `err` as an errno, also when a library wrapped it: tempfile keeps
/// the OS error only in its message, "... (os error N) at path ...". EIO when there is
/// none.
fn os_errno(err: &std::io::Error) -> i32 {
    crate::platform::errno(err)
}

/// One segment file: a spill segment, mapped once at its full size, or a persisted
/// cache's data file, mapped in windows (`Windows`) so that a process maps only what its
/// live batches and its last reads use.
pub(crate) struct Segment {
    path: PathBuf,
    backing: Backing,
    /// Bytes of messages written into it.
    written: AtomicU64,
    /// Highest stream position with a message in it.
    last_position: AtomicU64,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

enum Backing {
    Mapped(Buffer),
    Persisted(Windows),
}

/// Bytes a persisted file is mapped in at a time: one mmap and one munmap serve every
/// batch inside, and the pages a process holds stay bounded (not the whole file, as
/// `pa.memory_map` holds it once read). Several of a large batch's size, as a mapping
/// per batch costs processes that read one file together (bench/notes.md).
const WINDOW: u64 = 16 << 20;
/// Windows start at a multiple of this: a page size on every platform (4, 16, 64 KiB).
const WINDOW_ALIGN: u64 = 64 << 10;
/// Windows kept mapped after their batches go: the dictionaries' (at the start of the
/// file) and the current one of a reader or two.
const RECENT_WINDOWS: usize = 3;

/// A persisted data file's mappings. A window lives while the segment keeps it among its
/// recent ones or while a batch's buffers (slices of it) hold it; the last one unmaps it.
struct Windows {
    file: File,
    len: u64,
    /// Newest first: `(file offset, mapping)`.
    recent: std::sync::Mutex<VecDeque<(u64, Buffer)>>,
}

impl Windows {
    /// `len` bytes at `offset`, from a recent window or a new one that starts at or
    /// below `offset`.
    fn slice(&self, path: &Path, offset: u64, len: usize) -> Result<Buffer> {
        let end = offset + len as u64;
        let within = |(start, window): &(u64, Buffer)| {
            (*start <= offset && end <= start + window.len() as u64)
                .then(|| window.slice_with_length((offset - start) as usize, len))
        };
        // A poisoned lock only means a map failed mid-update: the list is still whole.
        let lock = || self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = lock().iter().find_map(within) {
            return Ok(found);
        }
        if end > self.len {
            // The footer's blocks were checked to lie inside the file.
            return Err(Error::Internal(format!(
                "bytes {offset}..{end} lie past the end of {} ({} bytes)",
                path.display(),
                self.len
            )));
        }
        let start = offset - offset % WINDOW_ALIGN;
        let stop = (start + WINDOW).max(end).min(self.len);
        // Mapped outside the lock, so that readers of other windows do not wait on it.
        let window = map_range(&self.file, path, start, (stop - start) as usize, false)?;
        let mut recent = lock();
        if let Some(found) = recent.iter().find_map(within) {
            // Another reader mapped it meanwhile: ours goes, untouched, so no pages twice.
            drop(recent);
            return Ok(found);
        }
        let found = within(&(start, window.clone())).expect("the window spans the range");
        recent.push_front((start, window));
        let dropped = (recent.len() > RECENT_WINDOWS).then(|| recent.pop_back());
        drop(recent);
        drop(dropped); // unmapped (if no batch holds it) outside the lock
        Ok(found)
    }
}

impl Segment {
    /// A persisted data file, read from but never written or deleted.
    pub(crate) fn persisted(path: PathBuf, file: File, len: u64) -> Arc<Self> {
        Arc::new(Self {
            path,
            backing: Backing::Persisted(Windows {
                file,
                len,
                recent: Default::default(),
            }),
            written: AtomicU64::new(len),
            last_position: AtomicU64::new(u64::MAX),
        })
    }

    fn is_persisted(&self) -> bool {
        matches!(self.backing, Backing::Persisted(_))
    }

    /// The bytes at `offset..offset + len`, zero-copy.
    fn bytes(&self, offset: usize, len: usize) -> Result<Buffer> {
        match &self.backing {
            Backing::Mapped(buffer) => Ok(buffer.slice_with_length(offset, len)),
            Backing::Persisted(_) if len == 0 => Ok(Buffer::from_vec(Vec::<u8>::new())),
            Backing::Persisted(windows) => windows.slice(&self.path, offset as u64, len),
        }
    }

    /// Bytes a spill segment can hold; a persisted file takes no more.
    fn room(&self) -> u64 {
        match &self.backing {
            Backing::Mapped(buffer) => buffer.len() as u64,
            Backing::Persisted(_) => 0,
        }
    }
}

/// Map `len` bytes of `file` at `offset` (any offset: the mapping starts at the page
/// below it) as a buffer that unmaps them when its last slice goes; `populate` faults
/// every page in up front.
pub(crate) fn map_range(
    file: &File,
    path: &Path,
    offset: u64,
    len: usize,
    populate: bool,
) -> Result<Buffer> {
    if len == 0 {
        return Ok(Buffer::from_vec(Vec::<u8>::new()));
    }
    // SAFETY: persisted files are never written after their save; a caller that edits
    // one while it is open breaks that contract, as with any memory-mapped file.
    let mut options = memmap2::MmapOptions::new();
    options.offset(offset).len(len);
    if populate {
        options.populate();
    }
    let map = unsafe { options.map(file) }.map_err(|err| io_error("cannot map", path, err))?;
    let ptr = std::ptr::NonNull::new(map.as_ptr() as *mut u8)
        .ok_or_else(|| Error::io(format!("empty mapping of {}", path.display())))?;
    // SAFETY: the mapping lives as long as the Arc that owns it, held by the buffer.
    Ok(unsafe { Buffer::from_custom_allocation(ptr, len, Arc::new(map)) })
}

/// Where one IPC message lies.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    segment: Arc<Segment>,
    offset: usize,
    metadata_len: usize,
    body_len: usize,
}

impl Message {
    fn block(&self) -> Block {
        Block::new(
            self.offset as i64,
            self.metadata_len as i32,
            self.body_len as i64,
        )
    }

    fn bytes(&self) -> Result<Buffer> {
        self.segment
            .bytes(self.offset, self.metadata_len + self.body_len)
    }

    /// XXH3-64 of the message's bytes.
    pub(crate) fn checksum(&self) -> Result<u64> {
        Ok(twox_hash::XxHash3_64::oneshot(self.bytes()?.as_slice()))
    }

    /// A message of a persisted file, at `block`.
    pub(crate) fn persisted(segment: &Arc<Segment>, block: &Block) -> Result<Self> {
        let field = |value: i64, what: &str| {
            usize::try_from(value)
                .map_err(|_| Error::Corrupt(format!("a block's {what} is negative ({value})")))
        };
        Ok(Self {
            segment: segment.clone(),
            offset: field(block.offset(), "offset")?,
            metadata_len: field(block.metaDataLength().into(), "metadata length")?,
            body_len: field(block.bodyLength(), "body length")?,
        })
    }
}

/// A batch on disk: its message and the dictionary messages in force at it.
#[derive(Debug, Clone)]
pub(crate) struct DiskEntry {
    batch: Message,
    dictionaries: Arc<[Message]>,
    /// Shared by the cache's entries.
    decoding: Arc<Decoding>,
    /// Shared by the reads of this batch.
    known: Arc<Known>,
}

/// How the batches of one cache decode, decided once from its schema.
#[derive(Debug)]
pub(crate) struct Decoding {
    /// The schema as the IPC writer numbered its dictionaries, which the decoder needs.
    ipc_schema: SchemaRef,
    /// Whether every column is flat, so that `crate::ipc_flat` may decode a batch.
    flat: bool,
}

impl Decoding {
    /// For batches written with `ipc_schema` (the cache's schema, dictionaries numbered).
    pub(crate) fn new(ipc_schema: SchemaRef) -> Arc<Self> {
        let flat = crate::ipc_flat::is_flat(&ipc_schema);
        Arc::new(Self { ipc_schema, flat })
    }
}

/// What the reads of one batch share: its check, and what a later decode learnt. A save
/// keeps one per batch, so it stays small: 40 bytes (a 64-byte allocation with the
/// `Arc`'s counts).
#[derive(Debug, Default)]
struct Known {
    /// For a batch of a persisted file: how the save's batches are checked on their first
    /// read; `None` for the spill files this process wrote.
    check: Option<Arc<Check>>,
    /// The batch's place among the save's, which finds its checksum.
    position: u32,
    /// Whether a read of the batch succeeded: its check passed (a save's) or it decoded
    /// (a spill's).
    read_once: AtomicBool,
    /// Set by the batch's second read, so that a batch read once (a single pass, a
    /// worker's one epoch) does not pay for it: the flat layout, or `None` when arrow-ipc
    /// decodes it.
    learnt: std::sync::OnceLock<Option<Layout>>,
}

/// How the batches of a persisted file are checked on their first read in this process:
/// against their checksums when the cache verifies, and always by a full validation
/// (`crate::validate`), their dictionaries with them. Once a batch passed
/// (`Known::read_once`), later reads of the same bytes skip both. Shared by the save's
/// batches.
#[derive(Debug)]
pub(crate) struct Check {
    /// Each batch's checksum, in the file's order; `None` when they are not verified.
    checksums: Option<Box<[u64]>>,
    validation: Arc<Validation>,
}

impl Check {
    /// `checksums`: what the batches' bytes must hash to, or `None` to skip that part;
    /// `validation`: the save's.
    pub(crate) fn new(checksums: Option<Box<[u64]>>, validation: Arc<Validation>) -> Arc<Self> {
        Arc::new(Self {
            checksums,
            validation,
        })
    }
}

impl DiskEntry {
    /// Decode the batch, under the cache's `schema`; its buffers point into the mapping
    /// unless compressed. A batch of flat columns is held as its message's buffers
    /// (`crate::ipc_flat`), made a `RecordBatch` only when one is needed.
    pub fn read(&self, schema: &SchemaRef) -> Result<CachedBatch> {
        #[cfg(test)]
        READS.with(|reads| reads.set(reads.get() + 1));
        let bytes = self.batch.bytes()?;
        let Some(check) = self.unread_check() else {
            // Our own spill files, or a persisted batch that passed its check.
            return self.decode(schema, &bytes).map(Decoded::cached);
        };
        self.check_sum(check, &bytes)?;
        for dictionary in self.dictionaries.iter() {
            check_message(&dictionary.bytes()?, dictionary.metadata_len, true)
                .map_err(|why| self.damaged(&format!("has a damaged dictionary: {why}")))?;
        }
        let header = check_message(&bytes, self.batch.metadata_len, false)
            .map_err(|why| self.damaged(&format!("is damaged: {why}")))?;
        let invalid = |err: ArrowError| self.damaged(&format!("is not valid Arrow data ({err})"));
        // Decoded unchecked, arrow-rs's constructors assert (panic) on a buffer too short
        // for its array, where the checked decoder would fail; the decoder is local, so
        // a panic leaves nothing half-updated.
        let checked = catch_quietly(|| {
            if let Some(flat) = self.decode_flat(schema, &bytes, header)? {
                flat.validate(check.validation.utf8()).map_err(invalid)?;
                return Ok(Decoded::Flat(flat));
            }
            let batch = self.decode_ipc(schema, &bytes)?;
            for column in batch.columns() {
                crate::validate::validate_column(column.as_ref(), check.validation.utf8())
                    .map_err(invalid)?;
            }
            Ok(Decoded::Batch(batch))
        });
        let decoded = checked
            .unwrap_or_else(|panic| Err(self.damaged(&format!("does not decode ({panic})"))))?;
        if !self.known.read_once.swap(true, Ordering::AcqRel) {
            check.validation.passed();
        }
        Ok(decoded.cached())
    }

    /// Decode `bytes`, the batch's message, without validating it: flat columns here
    /// (`crate::ipc_flat`), anything else by arrow-ipc.
    fn decode(&self, schema: &SchemaRef, bytes: &Buffer) -> Result<Decoded> {
        // A layout is learnt from these very bytes (this entry's, in a file never
        // written again), once checked (a save's) or as written (a spill's): reusing it
        // needs no check.
        let learnt = self.known.learnt.get();
        match learnt {
            Some(Some(layout)) => {
                if let Some(flat) = layout.flat(schema, bytes) {
                    return Ok(Decoded::Flat(flat));
                }
            }
            Some(None) => return self.decode_ipc(schema, bytes).map(Decoded::Batch),
            None => {}
        }
        let mut decoded = None;
        if self.decoding.flat {
            // A spill message may be compressed, which a save's must not be.
            let header = parse_message(bytes, self.batch.metadata_len, false)
                .map_err(|why| self.undecodable(&why))?;
            decoded = self.decode_flat(schema, bytes, header)?.map(Decoded::Flat);
        }
        let decoded = match decoded {
            Some(flat) => flat,
            None => Decoded::Batch(self.decode_ipc(schema, bytes)?),
        };
        if learnt.is_none() && self.known.read_once.swap(true, Ordering::AcqRel) {
            self.learn(&decoded);
        }
        Ok(decoded)
    }

    /// How a persisted batch is checked, until a read of it passed; `None` for a spill's.
    fn unread_check(&self) -> Option<&Check> {
        self.known
            .check
            .as_deref()
            .filter(|_| !self.known.read_once.load(Ordering::Acquire))
    }

    /// `bytes` against the batch's checksum, when `check` verifies them.
    fn check_sum(&self, check: &Check, bytes: &Buffer) -> Result<()> {
        let Some(checksums) = &check.checksums else {
            return Ok(());
        };
        let expected = checksums.get(self.known.position as usize);
        if expected != Some(&twox_hash::XxHash3_64::oneshot(bytes.as_slice())) {
            return Err(self.damaged("does not match its checksum: the file was edited or damaged"));
        }
        Ok(())
    }

    /// The batch's row count from its message header, without decoding it: for a save's
    /// batch that `max_readers` eviction drops unread. Its bytes are checked against
    /// their checksum first where its first read would check them.
    pub(crate) fn header_rows(&self) -> Result<u64> {
        let bytes = self.batch.bytes()?;
        if let Some(check) = self.unread_check() {
            self.check_sum(check, &bytes)?;
        }
        let header = check_message(&bytes, self.batch.metadata_len, false)
            .map_err(|why| self.damaged(&format!("is damaged: {why}")))?;
        // check_message refused a negative length.
        Ok(header.length() as u64)
    }

    /// Keep what decoding this batch found, for its later reads (unless another read
    /// kept it first).
    fn learn(&self, decoded: &Decoded) {
        let layout = match decoded {
            Decoded::Flat(flat) => Some(Layout::of(flat)),
            Decoded::Batch(_) => None,
        };
        let _ = self.known.learnt.set(layout);
    }

    /// The batch by `crate::ipc_flat` from its parsed `header`, when it decodes it there.
    fn decode_flat(
        &self,
        schema: &SchemaRef,
        bytes: &Buffer,
        header: arrow_ipc::RecordBatch<'_>,
    ) -> Result<Option<FlatBuffers>> {
        if !self.dictionaries.is_empty() || !self.decoding.flat {
            return Ok(None);
        }
        crate::ipc_flat::decode(schema, header, bytes, self.batch.metadata_len)
            .map_err(|why| self.undecodable(&why))
    }

    /// Decode `bytes` by arrow-ipc, without validating it.
    fn decode_ipc(&self, schema: &SchemaRef, bytes: &Buffer) -> Result<RecordBatch> {
        let decoder = FileDecoder::new(self.decoding.ipc_schema.clone(), MetadataVersion::V5);
        // SAFETY: for the spill files this process wrote, and for a persisted batch that
        // passed `read`'s checks in this process. On its first read, a persisted batch is
        // decoded unchecked too, then validated in full before anything reads a value:
        // the decoder's unchecked constructors only assemble buffers (slicing out of
        // range panics, and `read` catches that).
        let mut decoder = unsafe { decoder.with_skip_validation(true) };
        let failed = |err: arrow_schema::ArrowError| self.undecodable(&err.to_string());
        for dictionary in self.dictionaries.iter() {
            decoder
                .read_dictionary(&dictionary.block(), &dictionary.bytes()?)
                .map_err(failed)?;
        }
        let decoded = decoder
            .read_record_batch(&self.batch.block(), bytes)
            .map_err(failed)?
            .ok_or_else(|| Error::io("a disk block holds no record batch"))?;
        let options = RecordBatchOptions::new().with_row_count(Some(decoded.num_rows()));
        RecordBatch::try_new_with_options(schema.clone(), decoded.columns().to_vec(), &options)
            .map_err(failed)
    }

    /// The error for a batch that does not decode, for the reason `why`.
    fn undecodable(&self, why: &str) -> Error {
        match self.known.check {
            Some(_) => self.damaged(&format!("does not decode ({why})")),
            None => Error::io(format!(
                "cannot decode batch from {}: {why}",
                self.batch.segment.path.display()
            )),
        }
    }

    /// The error for a persisted batch that fails its check.
    fn damaged(&self, why: &str) -> Error {
        Error::Corrupt(format!(
            "the batch at byte {} of {} {why}; persist the stream again",
            self.batch.offset,
            self.batch.segment.path.display()
        ))
    }

    fn segment(&self) -> &Arc<Segment> {
        &self.batch.segment
    }

    /// Batch `position` of a persisted file, checked on its first read as `check` says.
    pub(crate) fn persisted(
        batch: Message,
        dictionaries: Arc<[Message]>,
        decoding: Arc<Decoding>,
        check: Arc<Check>,
        position: u32,
    ) -> Self {
        Self {
            batch,
            dictionaries,
            decoding,
            known: Arc::new(Known {
                check: Some(check),
                position,
                ..Default::default()
            }),
        }
    }
}

/// A batch read from disk: flat columns as their message's buffers, or arrays.
enum Decoded {
    Flat(FlatBuffers),
    Batch(RecordBatch),
}

impl Decoded {
    fn cached(self) -> CachedBatch {
        match self {
            Decoded::Flat(flat) => CachedBatch::deferred(flat.rows(), Box::new(flat)),
            Decoded::Batch(batch) => CachedBatch::new(batch),
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Batches this thread read from disk, for tests of what reads them.
    pub(crate) static READS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Messages this thread parsed, for tests of what later reads reuse.
    static PARSES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Run `f`, returning a panic's message instead of unwinding, and without printing it:
/// on a damaged persisted file, arrow-rs's panics are damage to report, not bugs. Other
/// panics still reach the hook that was installed before (wrapped on first use).
pub(crate) fn catch_quietly<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    use std::cell::Cell;
    thread_local!(static QUIET: Cell<bool> = const { Cell::new(false) });
    static WRAP_HOOK: std::sync::Once = std::sync::Once::new();
    WRAP_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info)
            }
        }));
    });
    let was = QUIET.with(|quiet| quiet.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|quiet| quiet.set(was));
    result.map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into())
    })
}

/// Refuse, before arrow-ipc sees it, what it would panic on or allocate for instead of
/// failing: what `parse_message` refuses, and compression (a save is never compressed,
/// and a damaged length prefix would size an allocation). Arrow's validation checks the
/// rest. Returns the batch's header, parsed and verified.
pub(crate) fn check_message(
    bytes: &[u8],
    metadata_len: usize,
    dictionary: bool,
) -> std::result::Result<arrow_ipc::RecordBatch<'_>, String> {
    let batch = parse_message(bytes, metadata_len, dictionary)?;
    if batch.compression().is_some() {
        return Err("it claims compression, which a save never uses".into());
    }
    Ok(batch)
}

/// The record batch header of a message (of a dictionary's, with `dictionary`), its
/// flatbuffer verified; refused: a message too short for its prefix, of another metadata
/// version, a header of another kind, a negative length, or a buffer outside the body.
fn parse_message(
    bytes: &[u8],
    metadata_len: usize,
    dictionary: bool,
) -> std::result::Result<arrow_ipc::RecordBatch<'_>, String> {
    #[cfg(test)]
    PARSES.with(|parses| parses.set(parses.get() + 1));
    let prefix = bytes
        .get(..8)
        .filter(|_| metadata_len >= 8 && metadata_len <= bytes.len());
    let Some(prefix) = prefix else {
        return Err(format!("its metadata length {metadata_len} is too short"));
    };
    if prefix[..4] != [0xff; 4] {
        return Err("it does not start with an IPC continuation marker".into());
    }
    let flatbuffer_len = i32::from_le_bytes(prefix[4..].try_into().expect("4 bytes"));
    let metadata = usize::try_from(flatbuffer_len)
        .ok()
        .and_then(|len| bytes[..metadata_len].get(8..8 + len))
        .ok_or_else(|| format!("its metadata length prefix {flatbuffer_len} overruns it"))?;
    let message = arrow_ipc::root_as_message(metadata)
        .map_err(|err| format!("its metadata does not parse ({err})"))?;
    if message.version() != MetadataVersion::V5 {
        return Err(format!(
            "its metadata is of {:?}, not V5",
            message.version()
        ));
    }
    let batch = match dictionary {
        true => message.header_as_dictionary_batch().and_then(|d| d.data()),
        false => message.header_as_record_batch(),
    };
    let Some(batch) = batch else {
        return Err(format!("it holds a {:?} message", message.header_type()));
    };
    let body = (bytes.len() - metadata_len) as i64;
    let nodes = batch.nodes().into_iter().flatten();
    if batch.length() < 0 || nodes.clone().any(|n| n.length() < 0 || n.null_count() < 0) {
        return Err("it has a negative length".into());
    }
    for buffer in batch.buffers().into_iter().flatten() {
        let end = buffer.offset().checked_add(buffer.length());
        if buffer.offset() < 0 || buffer.length() < 0 || end.is_none_or(|end| end > body) {
            return Err(format!(
                "a buffer of {} bytes at {} lies outside its {body}-byte body",
                buffer.length(),
                buffer.offset()
            ));
        }
    }
    Ok(batch)
}

/// Writes batches into segments; used only by the thread that ingests.
pub(crate) struct DiskWriter {
    directory: PathBuf,
    write_policy: WritePolicy,
    segment_bytes: u64,
    capacity: u64,
    /// Bytes of live segments, shared with the index, which subtracts deleted ones.
    used: Arc<AtomicU64>,
    generator: IpcDataGenerator,
    tracker: DictionaryTracker,
    options: IpcWriteOptions,
    context: IpcWriteContext,
    active: Option<(Arc<Segment>, File)>,
    next_segment: u64,
    dictionaries: DictionaryLog,
    /// `dictionaries` as every entry shares it, rebuilt only when a dictionary changes.
    in_force: Arc<[Message]>,
    faults: Option<FaultInjector>,
    /// The schema with the dictionary ids the tracker assigned, once the first batch came.
    decoding: Option<Arc<Decoding>>,
    /// Removes the directory with everything in it when the writer goes (and, where an
    /// open file keeps its name, the last mapping of its segments: see [`SegmentMap`]).
    dir: Arc<SpillDir>,
}

impl std::fmt::Debug for DiskWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskWriter")
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

impl DiskWriter {
    /// Create the private directory for one cache under `options.path`.
    /// `options` were validated by [`crate::CacheOptions::validate`].
    pub fn create(options: &DiskOptions) -> Result<(Self, DiskIndex)> {
        let faults = options.faults();
        inject(&faults, IoPoint::CreateDirectory)
            .map_err(|err| io_error("cannot create disk_path", &options.path, err))?;
        std::fs::create_dir_all(&options.path)
            .map_err(|err| io_error("cannot create disk_path", &options.path, err))?;
        spill_dir::remove_abandoned(&options.path);
        let dir = SpillDir::create(&options.path)
            .map_err(|err| io_error("cannot create a cache directory in", &options.path, err))?;
        let compression = match options.compression {
            Compression::None => None,
            Compression::Lz4 => Some(CompressionType::LZ4_FRAME),
            Compression::Zstd => Some(CompressionType::ZSTD),
        };
        let ipc_options = IpcWriteOptions::try_new(ALIGNMENT, false, MetadataVersion::V5)
            .and_then(|o| o.try_with_compression(compression))
            .map_err(|err| Error::Internal(format!("IPC options: {err}")))?;
        let used = Arc::new(AtomicU64::new(0));
        let writer = Self {
            directory: dir.path().to_path_buf(),
            write_policy: options.write_policy,
            segment_bytes: options.segment_bytes.max(1),
            capacity: options.capacity,
            used: used.clone(),
            generator: IpcDataGenerator::default(),
            tracker: DictionaryTracker::new(false),
            options: ipc_options,
            context: IpcWriteContext::default(),
            active: None,
            next_segment: 0,
            dictionaries: DictionaryLog::default(),
            in_force: Arc::from([]),
            faults,
            decoding: None,
            dir: Arc::new(dir),
        };
        Ok((writer, DiskIndex::new(used, options.capacity)))
    }

    /// When this writer is given batches.
    pub fn write_policy(&self) -> WritePolicy {
        self.write_policy
    }

    /// The private directory this cache writes in.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Append `batch` (stream position `position`) and return where it lies.
    pub fn write(&mut self, position: u64, batch: &RecordBatch) -> Result<DiskEntry> {
        let decoding = match &self.decoding {
            Some(decoding) => decoding.clone(),
            None => {
                // The tracker numbers the dictionaries while encoding the schema; decoding
                // that message gives the decoder a schema with the same numbers.
                let message = self.generator.schema_to_bytes_with_dictionary_tracker(
                    batch.schema_ref(),
                    &mut self.tracker,
                    &self.options,
                );
                self.dictionaries = DictionaryLog::for_schema(&message.ipc_message)?;
                let schema =
                    arrow_ipc::convert::try_schema_from_flatbuffer_bytes(&message.ipc_message)
                        .map_err(|err| {
                            Error::io(format!("cannot encode the schema as IPC: {err}"))
                        })?;
                let decoding = Decoding::new(Arc::new(schema));
                self.decoding = Some(decoding.clone());
                decoding
            }
        };
        let (dictionaries, encoded) = self
            .generator
            .encode(batch, &mut self.tracker, &self.options, &mut self.context)
            .map_err(|err| Error::io(format!("cannot encode batch {position} as IPC: {err}")))?;
        let needed: u64 = dictionaries
            .iter()
            .chain([&encoded])
            .map(|m| padded_len(m) as u64)
            .sum();
        let used = self.used.load(Ordering::Acquire);
        if used + needed > self.capacity {
            return Err(Error::Capacity(format!(
                "batch {position} needs {needed} bytes on disk but disk_capacity={} bytes \
                 already holds {used}; raise disk_capacity, or set max_readers so that \
                 passed segments are deleted",
                self.capacity
            )));
        }
        if !dictionaries.is_empty() {
            for dictionary in dictionaries {
                let id = dictionary_id(&dictionary)?;
                let message = self.append(position, dictionary)?;
                self.dictionaries.record(id, message);
            }
            self.in_force = self.dictionaries.in_force();
        }
        let message = self.append(position, encoded)?;
        Ok(DiskEntry {
            batch: message,
            dictionaries: self.in_force.clone(),
            decoding,
            known: Default::default(),
        })
    }

    fn append(&mut self, position: u64, message: EncodedData) -> Result<Message> {
        let len = padded_len(&message);
        let fits = self.active.as_ref().is_some_and(|(segment, _)| {
            segment.written.load(Ordering::Acquire) + len as u64 <= segment.room()
        });
        if !fits {
            self.roll(len as u64)?;
        }
        let (segment, file) = self.active.as_mut().expect("roll() opened a segment");
        let offset = segment.written.load(Ordering::Acquire);
        let fault = inject(&self.faults, IoPoint::Write)
            .err()
            .map(|err| crate::platform::errno(&err));
        let written = write_at(file, offset, message, &self.options, fault)
            .map_err(|err| io_error("cannot write to", &segment.path, err))?;
        segment
            .written
            .store(offset + written.total as u64, Ordering::Release);
        segment.last_position.store(position, Ordering::Release);
        self.used.fetch_add(written.total as u64, Ordering::AcqRel);
        Ok(Message {
            segment: segment.clone(),
            offset: offset as usize,
            metadata_len: written.metadata_len,
            body_len: written.body_len,
        })
    }

    /// Start a new segment that can hold at least `needed` bytes.
    fn roll(&mut self, needed: u64) -> Result<()> {
        let size = self.segment_bytes.max(needed);
        let path = self
            .directory
            .join(format!("segment-{:06}.arrows", self.next_segment));
        self.next_segment += 1;
        let fail =
            |point, what| inject(&self.faults, point).map_err(|err| io_error(what, &path, err));
        fail(IoPoint::CreateSegment, "cannot create segment")?;
        let file = crate::platform::create_private(&path, crate::platform::Lifetime::Spill)
            .map_err(|err| io_error("cannot create segment", &path, err))?;
        // Sized once, before mapping, and never shrunk: reads of the mapping cannot fault.
        fail(IoPoint::SizeSegment, "cannot size segment")?;
        file.set_len(size)
            .map_err(|err| io_error("cannot size segment", &path, err))?;
        fail(IoPoint::MapSegment, "cannot map")?;
        // SAFETY: the file is private to this cache and never truncated while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|err| io_error("cannot map", &path, err))?;
        let ptr = std::ptr::NonNull::new(map.as_ptr() as *mut u8)
            .ok_or_else(|| Error::io(format!("empty mapping of {}", path.display())))?;
        let len = map.len();
        let owner = SegmentMap {
            _map: map,
            _folder: crate::platform::OPEN_FILES_PIN_THEIR_NAMES.then(|| self.dir.clone()),
        };
        // SAFETY: the mapping lives as long as the Arc that owns it, held by the buffer.
        let buffer = unsafe { Buffer::from_custom_allocation(ptr, len, Arc::new(owner)) };
        let segment = Arc::new(Segment {
            path,
            backing: Backing::Mapped(buffer),
            written: AtomicU64::new(0),
            last_position: AtomicU64::new(0),
        });
        self.active = Some((segment, file));
        Ok(())
    }
}

/// A spill segment's mapping, which the arrays read from it hold. Where an open file keeps
/// its name until its last handle closes (Windows), it holds the cache's folder too: a
/// segment is deleted when its mapping goes (it was made delete-on-close), and the folder,
/// by the last one, so nothing is left once the last array goes.
struct SegmentMap {
    _map: Mmap,
    _folder: Option<Arc<SpillDir>>,
}

struct Written {
    metadata_len: usize,
    body_len: usize,
    total: usize,
}

/// Bytes a message takes in a segment, padding included.
fn padded_len(message: &EncodedData) -> usize {
    // Continuation marker and length prefix, metadata and body, each padded to ALIGNMENT.
    let metadata = (8 + message.ipc_message.len()).next_multiple_of(ALIGNMENT);
    metadata + message.arrow_data.len().next_multiple_of(ALIGNMENT) + ALIGNMENT
}

fn inject(faults: &Option<FaultInjector>, point: IoPoint) -> std::io::Result<()> {
    faults.as_ref().map_or(Ok(()), |faults| faults.check(point))
}

/// Passes writes through until `budget` bytes are written, then fails with `errno`: how
/// an injected fault tears a message half-way, as a short write on a full disk does.
struct Torn<W> {
    inner: W,
    budget: usize,
    errno: i32,
}

impl<W: Write> Write for Torn<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.budget == 0 {
            return Err(crate::platform::errno_error(self.errno));
        }
        let n = self.inner.write(&buf[..buf.len().min(self.budget)])?;
        self.budget -= n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn write_at(
    file: &mut File,
    offset: u64,
    message: EncodedData,
    options: &IpcWriteOptions,
    fault_errno: Option<i32>,
) -> std::io::Result<Written> {
    file.seek(SeekFrom::Start(offset))?;
    let (budget, errno) = match fault_errno {
        Some(errno) => (padded_len(&message) / 2, errno),
        None => (usize::MAX, 0),
    };
    // Small messages go out in one write; large bodies bypass the buffer.
    let buffered = std::io::BufWriter::with_capacity(64 << 10, &mut *file);
    let mut out = Torn {
        inner: buffered,
        budget,
        errno,
    };
    let (metadata_len, body_len) = write_message(&mut out, message, options).map_err(|err| {
        // Keep the OS error (ENOSPC, EDQUOT...) that the IPC writer wrapped.
        match err {
            arrow_schema::ArrowError::IoError(_, io) => io,
            other => std::io::Error::other(other),
        }
    })?;
    let total = (metadata_len + body_len).next_multiple_of(ALIGNMENT);
    out.write_all(&[0u8; ALIGNMENT][..total - metadata_len - body_len])?;
    out.flush()?;
    Ok(Written {
        metadata_len,
        body_len,
        total,
    })
}

/// The dictionary messages written so far that a batch decoded now needs, in the order
/// the IPC writer emitted them.
///
/// Order matters: a dictionary whose values hold another dictionary (nested dictionaries)
/// is decoded against the inner dictionary in force when it was written. So a replaced
/// dictionary is forgotten only once no dictionary still in force was written against it.
#[derive(Debug, Default)]
struct DictionaryLog {
    /// (id, message, superseded by a later message of the same id), oldest first.
    written: Vec<(i64, Message, bool)>,
    /// For each dictionary id, the ids of the dictionaries nested in its values.
    nested: HashMap<i64, Vec<i64>>,
}

impl DictionaryLog {
    /// A log for the schema in `schema_message`, an encoded IPC schema message.
    fn for_schema(schema_message: &[u8]) -> Result<Self> {
        let fields = arrow_ipc::root_as_message(schema_message)
            .ok()
            .and_then(|m| m.header_as_schema())
            .and_then(|s| s.fields())
            .ok_or_else(|| Error::Internal("the IPC writer emitted a malformed schema".into()))?;
        let mut nested = HashMap::new();
        for field in fields {
            collect_nested_dictionaries(field, &mut nested);
        }
        Ok(Self {
            written: Vec::new(),
            nested,
        })
    }

    fn record(&mut self, id: i64, message: Message) {
        for entry in self.written.iter_mut().filter(|entry| entry.0 == id) {
            entry.2 = true;
        }
        self.written.push((id, message, false));
        // Newest first: a superseded message stays only while a kept later one nests it.
        let mut needed: HashSet<i64> = HashSet::new();
        let mut kept = Vec::with_capacity(self.written.len());
        for (id, message, superseded) in self.written.drain(..).rev() {
            if superseded && !needed.contains(&id) {
                continue;
            }
            needed.remove(&id);
            needed.extend(self.nested.get(&id).into_iter().flatten());
            kept.push((id, message, superseded));
        }
        kept.reverse();
        self.written = kept;
    }

    fn in_force(&self) -> Arc<[Message]> {
        self.written.iter().map(|(_, m, _)| m.clone()).collect()
    }
}

/// Record, for every dictionary-encoded field at or below `field`, the dictionary ids
/// below it; returns the ids at or below `field`.
fn collect_nested_dictionaries(
    field: arrow_ipc::Field<'_>,
    nested: &mut HashMap<i64, Vec<i64>>,
) -> Vec<i64> {
    let mut below = Vec::new();
    for child in field.children().into_iter().flatten() {
        below.extend(collect_nested_dictionaries(child, nested));
    }
    if let Some(dictionary) = field.dictionary() {
        nested.insert(dictionary.id(), below.clone());
        below.push(dictionary.id());
    }
    below
}

fn dictionary_id(message: &EncodedData) -> Result<i64> {
    arrow_ipc::root_as_message(&message.ipc_message)
        .ok()
        .and_then(|m| m.header_as_dictionary_batch())
        .map(|d| d.id())
        .ok_or_else(|| Error::Internal("the IPC writer emitted a malformed dictionary".into()))
}

/// Which positions are on disk, in which segments; lives under the cache's state lock.
#[derive(Debug)]
pub(crate) struct DiskIndex {
    entries: BTreeMap<u64, DiskEntry>,
    segments: VecDeque<Arc<Segment>>,
    used: Arc<AtomicU64>,
    /// `disk_capacity`, which the writer enforces.
    capacity: u64,
    segments_deleted: u64,
    /// For an opened save: how its batches are checked on their first read.
    validated: Option<Validated>,
}

impl DiskIndex {
    /// The index of a persisted cache: its batches in order, none of them deletable.
    pub(crate) fn persisted(entries: Vec<DiskEntry>, validated: Validated) -> Self {
        let segments = entries.first().map(|entry| entry.segment().clone());
        let bytes = segments
            .as_ref()
            .map_or(0, |s| s.written.load(Ordering::Acquire));
        Self {
            entries: (0u64..).zip(entries).collect(),
            segments: segments.into_iter().collect(),
            used: Arc::new(AtomicU64::new(bytes)),
            capacity: bytes,
            segments_deleted: 0,
            validated: Some(validated),
        }
    }

    fn new(used: Arc<AtomicU64>, capacity: u64) -> Self {
        Self {
            entries: BTreeMap::new(),
            segments: VecDeque::new(),
            used,
            capacity,
            segments_deleted: 0,
            validated: None,
        }
    }

    /// Whether `bytes` more fit the disk budget now.
    pub fn has_room_for(&self, bytes: u64) -> bool {
        self.bytes().saturating_add(bytes) <= self.capacity
    }

    pub fn insert(&mut self, position: u64, entry: DiskEntry) {
        let segment = entry.segment();
        if !self
            .segments
            .back()
            .is_some_and(|last| Arc::ptr_eq(last, segment))
        {
            self.segments.push_back(segment.clone());
        }
        self.entries.insert(position, entry);
    }

    /// Batches indexed now.
    pub fn len(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn get(&self, position: u64) -> Option<&DiskEntry> {
        self.entries.get(&position)
    }

    pub fn bytes(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    pub fn segments_deleted(&self) -> u64 {
        self.segments_deleted
    }

    /// For an opened save, how its batches are checked on their first read.
    pub fn validated(&self) -> Option<Validated> {
        self.validated
    }

    /// Forget positions before `position` and delete segments that only held those.
    /// The newest segment stays: the writer may still be appending to it.
    pub fn evict_below(&mut self, position: u64) {
        self.entries = self.entries.split_off(&position);
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            if oldest.is_persisted() || oldest.last_position.load(Ordering::Acquire) >= position {
                break;
            }
            let segment = self.segments.pop_front().expect("checked non-empty");
            // Mapped buffers handed out stay valid: unlinking keeps the inode until
            // unmapped (on Windows the file goes when its last handle, the mapping's, does).
            let _ = std::fs::remove_file(&segment.path);
            self.used
                .fetch_sub(segment.written.load(Ordering::Acquire), Ordering::AcqRel);
            self.segments_deleted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_batch_of_a_save_keeps_fits_a_64_byte_allocation() {
        // One `Known` per batch of an opened save, behind an `Arc` (two counts): 56 bytes,
        // which malloc serves from 64-byte chunks (72 would take 80).
        assert!(size_of::<Known>() + 2 * size_of::<usize>() <= 56);
    }

    /// A persisted file of `len` bytes, each the low byte of its offset's index / 7.
    fn persisted(len: usize) -> (tempfile::TempDir, Arc<Segment>, Vec<u8>) {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("data.arrow");
        let bytes: Vec<u8> = (0..len).map(|i| (i / 7) as u8).collect();
        std::fs::write(&path, &bytes).expect("written");
        let file = File::open(&path).expect("opened");
        let segment = Segment::persisted(path, file, len as u64);
        (dir, segment, bytes)
    }

    fn windows(segment: &Segment) -> &Windows {
        match &segment.backing {
            Backing::Persisted(windows) => windows,
            Backing::Mapped(_) => unreachable!("a persisted segment"),
        }
    }

    /// Every range reads the file's bytes: inside a window, across a window's end, longer
    /// than a window, at the file's end; ranges inside one window share its mapping.
    #[test]
    fn windows_serve_any_range_of_the_file() {
        let window = WINDOW as usize;
        let len = 2 * window + window / 2 + 13;
        let (_dir, segment, bytes) = persisted(len);
        let ranges = [
            (0, 100),
            (5000, 64),
            (window - 10, 20),
            (window + 3, window + 7),
            (len - 5, 5),
            (17, 0),
            (1, len - 1),
        ];
        for (offset, size) in ranges {
            let read = segment.bytes(offset, size).expect("mapped");
            assert_eq!(
                read.as_slice(),
                &bytes[offset..offset + size],
                "{offset}+{size}"
            );
        }
        let first = segment.bytes(64, 8).expect("mapped");
        let second = segment.bytes(4096 * 3, 8).expect("mapped");
        assert_eq!(
            second.as_ptr() as usize - first.as_ptr() as usize,
            4096 * 3 - 64,
            "one window serves both"
        );
        let recent = windows(&segment).recent.lock().expect("not poisoned");
        assert!(recent.len() <= RECENT_WINDOWS);
    }

    /// Readers racing for one window all get the one mapping the segment keeps: a window
    /// mapped twice is unmapped, not kept beside the first.
    #[test]
    fn racing_readers_share_one_window() {
        for round in 0..20 {
            let (_dir, segment, bytes) = persisted(1 << 20);
            let offset = round * 4096 + 64;
            let barrier = std::sync::Barrier::new(4);
            let reads: Vec<Buffer> = std::thread::scope(|scope| {
                let threads: Vec<_> = (0..4)
                    .map(|_| {
                        scope.spawn(|| {
                            barrier.wait();
                            segment.bytes(offset, 100).expect("mapped")
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).collect()
            });
            for read in &reads {
                assert_eq!(read.as_slice(), &bytes[offset..offset + 100]);
                assert_eq!(read.as_ptr(), reads[0].as_ptr(), "round {round}");
            }
            let recent = windows(&segment).recent.lock().expect("not poisoned");
            assert!(recent.len() <= RECENT_WINDOWS);
        }
    }

    /// Two batches of flat columns, nulls and strings among them, and one with a list.
    fn flat_and_nested() -> (Vec<RecordBatch>, RecordBatch) {
        use arrow_array::{ArrayRef, Float64Array, Int64Array, ListArray, StringArray};
        let flat = |start: i64| {
            let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(start..start + 10));
            let x: ArrayRef = Arc::new(Float64Array::from_iter(
                (0..10).map(|i| (i % 3 != 0).then_some(i as f64 / 2.0)),
            ));
            let names: ArrayRef = Arc::new(StringArray::from_iter(
                (0..10).map(|i| (i % 4 != 1).then(|| format!("añb{}", start + i))),
            ));
            RecordBatch::try_from_iter([("id", ids), ("x", x), ("name", names)]).unwrap()
        };
        let list = ListArray::from_iter_primitive::<arrow_array::types::Int32Type, _, _>([
            Some(vec![Some(1), None]),
            None,
        ]);
        let nested =
            RecordBatch::try_from_iter([("list", Arc::new(list) as arrow_array::ArrayRef)])
                .unwrap();
        (vec![flat(0), flat(10)], nested)
    }

    /// Read `entry` four times: every read gives `expected`; returns the messages parsed.
    fn parses_over_four_reads(entry: &DiskEntry, expected: &RecordBatch) -> u64 {
        let before = PARSES.with(std::cell::Cell::get);
        for read in 0..4 {
            let cached = entry.read(&expected.schema()).expect("read");
            assert_eq!(cached.batch().expect("made"), expected, "read {read}");
        }
        PARSES.with(std::cell::Cell::get) - before
    }

    /// A saved batch's message is parsed on its first two reads only (the check, then the
    /// read that learns its layout): later reads make it from that layout.
    #[test]
    fn a_saved_flat_batch_is_parsed_on_its_first_two_reads_only() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let (source, _) = flat_and_nested();
        let schema = source[0].schema();
        let upstream =
            arrow_array::RecordBatchIterator::new(source.clone().into_iter().map(Ok), schema);
        let cache = crate::StreamCache::new(Box::new(upstream), Default::default()).unwrap();
        let path = dir.path().join("save");
        cache.persist(&path).unwrap();
        let opened = crate::save::open(&path, crate::save::Verify::Always).unwrap();
        for (position, expected) in (0u64..).zip(&source) {
            let entry = opened.index.get(position).expect("saved");
            assert_eq!(parses_over_four_reads(entry, expected), 2, "{position}");
        }
    }

    /// A spilled flat batch is parsed on its first two reads only, compressed or not; one
    /// with a nested column goes to arrow-ipc unparsed.
    #[test]
    fn a_spilled_batch_is_parsed_on_its_first_two_reads_only() {
        let (flat, nested) = flat_and_nested();
        for compression in [Compression::None, Compression::Lz4] {
            let dir = tempfile::tempdir().expect("a temporary folder");
            let mut options = DiskOptions::new(dir.path(), 1 << 30);
            options.compression = compression;
            let (mut writer, _) = DiskWriter::create(&options).unwrap();
            for (position, batch) in (0u64..).zip(&flat) {
                let entry = writer.write(position, batch).unwrap();
                assert_eq!(parses_over_four_reads(&entry, batch), 2, "{compression:?}");
            }
        }
        let dir = tempfile::tempdir().expect("a temporary folder");
        let (mut writer, _) = DiskWriter::create(&DiskOptions::new(dir.path(), 1 << 30)).unwrap();
        let entry = writer.write(0, &nested).unwrap();
        assert_eq!(parses_over_four_reads(&entry, &nested), 0);
    }

    /// A range past the end is refused, never mapped (a read would fault).
    #[test]
    fn a_range_past_the_end_is_an_error() {
        let (_dir, segment, _) = persisted(1000);
        assert!(matches!(segment.bytes(990, 20), Err(Error::Internal(_))));
    }
}
