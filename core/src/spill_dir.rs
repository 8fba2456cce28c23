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

    /// Give the folder the name `target` for good: drop the owner mark, sync, and rename
    /// it, failing if `target` exists (an empty directory there is replaced). Used for a
    /// persisted cache's save, staged in a folder that a cleaner removes if the saving
    /// process dies.
    pub fn commit(self, target: &Path) -> std::io::Result<()> {
        std::fs::remove_file(self.path().join(OWNER))?;
        File::open(self.path())?.sync_all()?;
        match std::fs::remove_dir(target) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        rename_no_replace(self.path(), target)?;
        let parent = target.parent().filter(|p| !p.as_os_str().is_empty());
        File::open(parent.unwrap_or(Path::new(".")))?.sync_all()?;
        let _ = self.dir.keep();
        Ok(())
    }
}

fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths. renameat2 through syscall: glibc 2.17, the
    // wheel's floor, has no wrapper for it.
    let status = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    match status {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
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
