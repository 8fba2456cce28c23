//! A note in a save that one process validated every batch of its data file in full:
//! later openers skip the one check that reads every text byte (UTF-8) while the file's
//! change time, which every write moves, is still the one the note records.

use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::validate::Utf8;

/// The note's name in the save folder.
pub(crate) const NOTE: &str = "validated.json";
const FORMAT: &str = "batchcorder-validated";
/// How old a change time must be before a note records it. A write gets a change time of
/// its own tick, and ticks are far shorter than this (2 s on FAT, the coarsest), so a
/// write after the note's check cannot carry the time the note records.
const SETTLED: Duration = Duration::from_secs(3);
/// A note is a few hundred bytes; a larger file is not one.
const MAX_NOTE_BYTES: u64 = 4096;

/// One state of a data file: any write to it changes its change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileState {
    device: u64,
    inode: u64,
    bytes: u64,
    changed: (i64, i64),
    modified: (i64, i64),
}

impl FileState {
    fn of(file: &File) -> Option<Self> {
        Some(Self::from(&file.metadata().ok()?))
    }

    fn from(meta: &Metadata) -> Self {
        Self {
            device: meta.dev(),
            inode: meta.ino(),
            bytes: meta.size(),
            changed: (meta.ctime(), meta.ctime_nsec()),
            modified: (meta.mtime(), meta.mtime_nsec()),
        }
    }

    /// Whether every write from `now` on gets a later change time than this state's.
    fn settled(&self, now: SystemTime) -> bool {
        let (Ok(seconds), Ok(nanos)) =
            (u64::try_from(self.changed.0), u32::try_from(self.changed.1))
        else {
            return false;
        };
        UNIX_EPOCH + Duration::new(seconds, nanos) + SETTLED < now
    }

    /// The note for this state of save `id`'s data file. A note is trusted only when it
    /// is exactly this text, so a damaged note is an absent one.
    fn note(&self, id: &str) -> Value {
        json!({
            "format": FORMAT,
            "id": id,
            "data_file": {
                "device": self.device,
                "inode": self.inode,
                "bytes": self.bytes,
                "changed": [self.changed.0, self.changed.1],
                "modified": [self.modified.0, self.modified.1],
            },
        })
    }
}

/// How the batches of one opened save are validated, and the note their validation leaves.
#[derive(Debug)]
pub(crate) struct Validation {
    utf8: Utf8,
    /// Batches not yet validated in full in this process.
    pending: AtomicUsize,
    /// What to note once none is pending; `None` when nothing will be noted.
    note: Option<PendingNote>,
}

#[derive(Debug)]
struct PendingNote {
    dir: PathBuf,
    id: String,
    file: File,
    state: FileState,
}

impl Validation {
    /// For the `batches` of save `id` in `dir`, whose data file is `file` with metadata
    /// `meta`: text is trusted when a note matches the file as it is now; with
    /// `always_check` the note is not even read (and is written again once all passed).
    pub(super) fn new(
        dir: &Path,
        id: &str,
        file: &File,
        meta: &Metadata,
        batches: usize,
        always_check: bool,
    ) -> Arc<Self> {
        let state = FileState::from(meta);
        let noted = !always_check && read_note(dir) == Some(state.note(id));
        let note = if !noted && state.settled(SystemTime::now()) {
            file.try_clone().ok().map(|file| PendingNote {
                dir: dir.to_path_buf(),
                id: id.to_owned(),
                file,
                state,
            })
        } else {
            None
        };
        Arc::new(Self {
            utf8: if noted { Utf8::Noted } else { Utf8::Check },
            pending: AtomicUsize::new(batches),
            note,
        })
    }

    /// Whether text values are checked for UTF-8.
    pub(crate) fn utf8(&self) -> Utf8 {
        self.utf8
    }

    /// Count a batch that passed full validation for the first time in this process.
    /// After the last one, the note is written if the file is still as it was opened.
    pub(crate) fn passed(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(note) = &self.note {
                note.write();
            }
        }
    }
}

impl PendingNote {
    /// Write the note (best effort: a save in a read-only folder is validated again by
    /// each process), through a temporary file and a rename, readable as the data file is.
    fn write(&self) {
        if FileState::of(&self.file) != Some(self.state) {
            return;
        }
        let write = || -> std::io::Result<()> {
            let mut temporary = tempfile::Builder::new()
                .prefix(".validated-")
                .tempfile_in(&self.dir)?;
            temporary.write_all(self.state.note(&self.id).to_string().as_bytes())?;
            let mode = self.file.metadata()?.permissions();
            temporary.as_file().set_permissions(mode)?;
            temporary.persist(self.dir.join(NOTE))?;
            Ok(())
        };
        let _ = write();
    }
}

/// The note in `dir`, if there is one that parses.
fn read_note(dir: &Path) -> Option<Value> {
    let mut text = Vec::new();
    File::open(dir.join(NOTE))
        .ok()?
        .take(MAX_NOTE_BYTES)
        .read_to_end(&mut text)
        .ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> FileState {
        FileState {
            device: 1,
            inode: 2,
            bytes: 3,
            changed: (1_700_000_000, 5),
            modified: (1_700_000_000, 6),
        }
    }

    #[test]
    fn a_note_names_one_state_of_one_save() {
        let note = state().note("a");
        assert_eq!(note, state().note("a"));
        assert_ne!(note, state().note("b"));
        let mut later = state();
        later.changed.1 += 1;
        assert_ne!(note, later.note("a"));
        let mut other_file = state();
        other_file.inode += 1;
        assert_ne!(note, other_file.note("a"));
    }

    #[test]
    fn only_a_change_time_some_seconds_old_is_noted() {
        let changed = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert!(!state().settled(changed));
        assert!(!state().settled(changed + SETTLED));
        assert!(state().settled(changed + SETTLED + Duration::from_nanos(1)));
        let mut before_the_epoch = state();
        before_the_epoch.changed = (-1, 0);
        assert!(!before_the_epoch.settled(SystemTime::now()));
    }
}
