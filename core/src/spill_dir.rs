//! Private folders under a user's folder: the disk tier's, and a save's staging folder.
//! Each is created with an owner lock held for its lifetime, so that a later cache or
//! save in the same folder removes the folders of processes that died without cleaning
//! up (SIGKILL, SIGTERM, a crash), whenever they died.
//!
//! A folder has no locked owner file for an instant: between its creation and the lock,
//! and while a save's commit renames it. Both steps hold a shared lock on the parent
//! folder and a sweep holds it exclusively, so a sweep that finds a folder of ours with
//! no owner file knows that its maker died in one of those steps.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::platform::{self, FolderLock, Hold, Lifetime};

/// A disk tier's folder's name starts with this.
const SPILL_PREFIX: &str = "batchcorder-";
/// A save's staging folder's name starts with this: hidden, and unlike any name a user
/// would give a save, since a sweep removes it whole once its owner is gone.
const STAGING_PREFIX: &str = ".batchcorder-save-";
/// The random characters after either prefix.
const SUFFIX_LEN: usize = 6;
/// The lock file in a private folder; its lock is held while the owner lives.
const OWNER: &str = "owner.lock";
/// The owner file's name while it is made and locked.
const NEW_OWNER: &str = ".owner.lock.";

/// A private folder (mode 0700) that is removed, with everything in it, when dropped.
#[derive(Debug)]
pub(crate) struct SpillDir {
    dir: tempfile::TempDir,
    /// Holds the owner lock; a forked child shares it, so its exit releases nothing.
    owner: Option<File>,
    committed: bool,
}

impl SpillDir {
    /// A fresh folder for the disk tier under `parent`, locked as this process's.
    pub fn create(parent: &Path) -> std::io::Result<Self> {
        Self::make(parent, SPILL_PREFIX)
    }

    /// A fresh staging folder for a save under `parent` (see [`SpillDir::commit`]).
    pub fn create_staging(parent: &Path) -> std::io::Result<Self> {
        Self::make(parent, STAGING_PREFIX)
    }

    fn make(parent: &Path, prefix: &str) -> std::io::Result<Self> {
        let _creating = FolderLock::take(parent, Hold::Shared);
        let mut builder = tempfile::Builder::new();
        builder.prefix(prefix).rand_bytes(SUFFIX_LEN);
        if let Some(private) = platform::private_folder_permissions() {
            builder.permissions(private);
        }
        let dir = builder.tempdir_in(parent)?;
        // Locked under a name no cleaner takes for an owner file, then renamed into
        // place: a cleaner never finds an owner file that is not locked yet.
        let staging = dir
            .path()
            .join(format!("{NEW_OWNER}{}", std::process::id()));
        let owner = platform::create_private(&staging, Lifetime::Kept)?;
        if !platform::try_lock(&owner) {
            return Err(std::io::Error::last_os_error());
        }
        std::fs::rename(&staging, dir.path().join(OWNER))?;
        Ok(Self {
            dir,
            owner: Some(owner),
            committed: false,
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Give the folder the name `target` for good: drop the owner mark, sync, and rename
    /// it, failing if `target` exists (an empty directory there is replaced). Used for a
    /// persisted cache's save, staged in a folder that a cleaner removes if the saving
    /// process dies.
    pub fn commit(mut self, target: &Path) -> std::io::Result<()> {
        let parent = target.parent().filter(|p| !p.as_os_str().is_empty());
        let parent = parent.unwrap_or(Path::new("."));
        let _committing = FolderLock::take(parent, Hold::Shared);
        release_owner(self.dir.path(), self.owner.take())?;
        platform::sync_dir(self.path())?;
        match std::fs::remove_dir(target) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        platform::rename_no_replace(self.path(), target)?;
        self.committed = true;
        self.dir.disable_cleanup(true);
        platform::sync_dir(parent)
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        // What this leaves (an error on the way) the TempDir's own drop tries again.
        if !self.committed {
            let _ = remove_owner_last(self.dir.path(), self.owner.take());
        }
    }
}

/// Remove `folder` and everything in it, its owner file last: a process killed meanwhile
/// leaves a folder whose owner file a sweep finds unlocked, or an empty one. `owner` is
/// the owner file's open handle if the caller holds it.
fn remove_owner_last(folder: &Path, owner: Option<File>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(folder)?.flatten() {
        if entry.file_name() == OWNER {
            continue;
        }
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(entry.path())?,
            _ => std::fs::remove_file(entry.path())?,
        }
    }
    match release_owner(folder, owner) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    std::fs::remove_dir_all(folder)
}

/// Remove `folder`'s owner file and release its lock, `owner`, in the order the OS needs
/// (see [`platform::remove_locked`]); a sweep takes the name it may pass through for a
/// file being made, not for an owner file.
fn release_owner(folder: &Path, owner: Option<File>) -> std::io::Result<()> {
    let aside = || folder.join(format!("{NEW_OWNER}{}", std::process::id()));
    platform::remove_locked(&folder.join(OWNER), owner, aside)
}

/// The prefix of a name [`SpillDir`] gives, if `name` is one.
fn our_prefix(name: &std::ffi::OsStr) -> Option<&'static str> {
    let name = name.to_str()?;
    [SPILL_PREFIX, STAGING_PREFIX].into_iter().find(|prefix| {
        name.strip_prefix(prefix).is_some_and(|suffix| {
            suffix.len() == SUFFIX_LEN && suffix.bytes().all(|b| b.is_ascii_alphanumeric())
        })
    })
}

/// Whether a folder of ours whose owner file is missing was left by a maker that died:
/// a staging folder whatever it holds; a disk tier's folder only when empty or holding
/// no more than an owner file being made, since a user's save may bear such a name.
fn died_unowned(folder: &Path, prefix: &str) -> bool {
    if prefix == STAGING_PREFIX {
        return true;
    }
    std::fs::read_dir(folder).is_ok_and(|mut entries| {
        entries.all(|entry| {
            entry.is_ok_and(|e| e.file_name().to_string_lossy().starts_with(NEW_OWNER))
        })
    })
}

/// Remove the folders of ours under `parent` whose owner is gone: one holding an owner
/// file whose lock nobody holds, or, while no folder is being made or committed here,
/// one whose maker died before locking it or while committing it. Anything else (a live
/// cache's folder, a file, a symlink, another name) is left alone. Returns the folders
/// removed.
pub(crate) fn remove_abandoned(parent: &Path) -> Vec<PathBuf> {
    let settled = FolderLock::take(parent, Hold::Exclusive);
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let Some(prefix) = our_prefix(&entry.file_name()) else {
            continue;
        };
        // `file_type` does not follow symlinks.
        if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        let folder = entry.path();
        let owner = platform::open_read_no_follow(&folder.join(OWNER));
        // Held until its owner file is gone, so that no other cleaner judges it meanwhile.
        let abandoned = match &owner {
            Ok(owner) => platform::try_lock(owner),
            Err(err) => {
                settled.is_some()
                    && err.kind() == std::io::ErrorKind::NotFound
                    && died_unowned(&folder, prefix)
            }
        };
        if abandoned && remove_owner_last(&folder, owner.ok()).is_ok() {
            removed.push(folder);
        }
    }
    removed
}
