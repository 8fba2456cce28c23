//! Writing a save: batches into an Arrow IPC file in a locked staging folder beside the
//! target, then the checksums and manifest, then one rename into place.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_ipc::writer::{DictionaryHandling, FileWriter, IpcWriteOptions};
use arrow_ipc::MetadataVersion;
use arrow_schema::{ArrowError, SchemaRef};

use super::manifest::write_manifest;
use super::{absolute, create_file, Persisted, DATA};
use crate::disk::io_error;
use crate::error::{Error, Result};
use crate::spill_dir::{self, SpillDir};

/// Message alignment in the data file, as in the disk tier.
const ALIGNMENT: usize = 64;
/// A save in progress: batches go into a data file in a locked staging folder beside the
/// target; [`Saver::finish`] adds the checksums and the manifest and moves the folder into
/// place. Dropped unfinished, it removes the staging folder.
pub(crate) struct Saver {
    target: PathBuf,
    /// Dropped before the staging folder: Windows keeps an open file's name, and so the
    /// folder, until it is closed.
    writer: Option<FileWriter<BufWriter<File>>>,
    staging: SpillDir,
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

    pub(crate) fn start(target: &Path, parent: PathBuf) -> Result<Self> {
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
        // The cache's batches all have its schema, so the IPC file writer refuses one only
        // for what a file cannot hold: a dictionary replaced rather than extended.
        writer.write(batch).map_err(|err| match err {
            ArrowError::InvalidArgumentError(why) => Error::InvalidArgument(format!(
                "cannot persist: an Arrow IPC file cannot hold batch {position} ({why}); a \
                 file keeps one dictionary per column, extended but never replaced, so cast \
                 the dictionary columns to their value type (cache.cast) and persist that"
            )),
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
        crate::platform::sync_all(&file).map_err(|err| io_error("cannot sync", &path, err))?;
        // Closed before its folder is renamed, which Windows refuses while a file in it is open.
        drop(file);
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
            .map_err(|err| match crate::platform::errno(&err) {
                libc::EEXIST | libc::ENOTEMPTY => Error::InvalidArgument(format!(
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

/// The parent folder a save to `path` is staged in, once `path` is free to take.
pub(crate) fn check_target(path: &Path) -> Result<PathBuf> {
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

fn write_error(path: &Path, err: ArrowError) -> Error {
    match err {
        ArrowError::IoError(_, io) => io_error("cannot write", path, io),
        other => Error::io(format!("cannot write {}: {other}", path.display())),
    }
}

fn random_id(near: &Path) -> Result<String> {
    let mut bytes = [0u8; 16];
    crate::platform::random_bytes(&mut bytes).map_err(|err| {
        let what = format!(
            "cannot read {} for an id of",
            crate::platform::RANDOM_SOURCE
        );
        io_error(&what, near, err)
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
