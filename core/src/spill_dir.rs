//! The disk tier's private folder: created under the user's `disk_path` with an owner
//! lock held for the cache's lifetime, so that a later cache can remove the folders of
//! processes that died without cleaning up (SIGKILL, SIGTERM, a crash).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Every private folder's name starts with this.
const PREFIX: &str = "batchcorder-";
/// The lock file in a private folder; its flock is held while the owner lives.
const OWNER: &str = "owner.lock";

/// A private folder (mode 0700) that is removed, with everything in it, when dropped.
#[derive(Debug)]
pub(crate) struct SpillDir {
    dir: tempfile::TempDir,
    /// Holds the owner lock; a forked child shares it, so its exit releases nothing.
    _owner: File,
}

impl SpillDir {
    /// A fresh private folder under `parent`, locked as this process's.
    pub fn create(parent: &Path) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(parent)?;
        // Locked under a name no cleaner looks at, then renamed into place: a cleaner
        // never finds an owner file that is not locked yet.
        let staging = dir.path().join(format!(".{OWNER}.{}", std::process::id()));
        let owner = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&staging)?;
        if !try_lock(&owner) {
            return Err(std::io::Error::last_os_error());
        }
        std::fs::rename(&staging, dir.path().join(OWNER))?;
        Ok(Self { dir, _owner: owner })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Take the exclusive flock of `file` without waiting; false if another holds it.
fn try_lock(file: &File) -> bool {
    // SAFETY: a valid descriptor; flock has no other precondition.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Remove the private folders under `parent` whose owner is gone: a folder named like
/// ours, holding an owner file whose lock nobody holds. Anything else (a live cache's
/// folder, a file, a folder without an owner file, a symlink) is left alone. Returns the
/// folders removed.
pub(crate) fn remove_abandoned(parent: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let ours = entry.file_name().to_string_lossy().starts_with(PREFIX);
        // `file_type` does not follow symlinks.
        if !ours || !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        let folder = entry.path();
        let owner = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(folder.join(OWNER));
        // Held until the folder is gone, so that no other cleaner judges it meanwhile.
        if let Ok(owner) = owner {
            if try_lock(&owner) && std::fs::remove_dir_all(&folder).is_ok() {
                removed.push(folder);
            }
        }
    }
    removed
}
