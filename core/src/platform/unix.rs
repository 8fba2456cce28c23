//! Unix (Linux, macOS): where the two differ, a function has one body per OS, chosen by
//! `cfg(target_os)`. Everything else here (`open` flags, `flock`, `/dev/urandom`,
//! `st_ctime`) is POSIX or BSD and the same on both.

use std::ffi::{CStr, CString};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{FileState, Hold};

/// `EDQUOT`: a disk quota is exhausted.
pub(crate) const EDQUOT: i32 = libc::EDQUOT;

/// Whether an open file keeps its name, and so its folder, until its last handle (a
/// mapping's included) closes, and a folder holding an open file cannot be renamed:
/// Windows's ways, not Unix's.
pub(crate) const OPEN_FILES_PIN_THEIR_NAMES: bool = false;

/// An OS error is an errno already.
pub(super) fn errno_of_os_error(code: i32) -> i32 {
    code
}

/// The I/O error of `errno` (the tests' injected faults).
pub(crate) fn errno_error(errno: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno)
}

/// The C library's text for `errno`.
pub(super) fn strerror(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// Rename `from` to `to` in one step, failing with `EEXIST` if `to` exists (an empty
/// directory included). Linux: `renameat2(RENAME_NOREPLACE)`; macOS:
/// `renamex_np(RENAME_EXCL)`. A file system that cannot rename without replacing fails
/// the call (`EINVAL` on Linux, `ENOTSUP` on macOS): there is no safe fallback, since a
/// check and a plain rename would race another process's rename to the same name.
pub(crate) fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    rename_exclusive(&c_path(from)?, &c_path(to)?)
}

#[cfg(target_os = "linux")]
fn rename_exclusive(from: &CStr, to: &CStr) -> std::io::Result<()> {
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

#[cfg(target_os = "macos")]
fn rename_exclusive(from: &CStr, to: &CStr) -> std::io::Result<()> {
    // SAFETY: two NUL-terminated paths; renamex_np (macOS 10.12 on, below every Rust
    // target's floor) has no other precondition.
    let status = unsafe { libc::renamex_np(from.as_ptr(), to.as_ptr(), libc::RENAME_EXCL) };
    match status {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn rename_exclusive(_from: &CStr, _to: &CStr) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "batchcorder knows no rename that refuses to replace its target on this OS \
         (it uses Linux's renameat2 and macOS's renamex_np)",
    ))
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// The machine's physical memory in bytes, `None` if the OS does not say. Linux (and
/// any other Unix): `sysconf(_SC_PHYS_PAGES) * sysconf(_SC_PAGESIZE)`; macOS: the
/// `hw.memsize` sysctl, the byte count the kernel keeps.
pub(crate) fn physical_memory() -> Option<u64> {
    #[cfg(not(target_os = "macos"))]
    {
        // SAFETY: sysconf has no preconditions.
        let (pages, page_size) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        (pages > 0 && page_size > 0).then(|| (pages as u64).saturating_mul(page_size as u64))
    }
    #[cfg(target_os = "macos")]
    {
        let mut bytes: u64 = 0;
        let mut len = std::mem::size_of::<u64>();
        // SAFETY: a NUL-terminated name, and an out-buffer of `len` bytes that
        // sysctlbyname fills with at most `len` bytes; no new value is set.
        let status = unsafe {
            libc::sysctlbyname(
                c"hw.memsize".as_ptr(),
                (&mut bytes as *mut u64).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        (status == 0 && len == std::mem::size_of::<u64>() && bytes > 0).then_some(bytes)
    }
}

/// Make `file`'s data and metadata durable, as [`File::sync_all`]. On macOS that is
/// `fcntl(F_FULLFSYNC)`, which some file systems refuse (SMB, FUSE, exFAT, ...:
/// `ENOTSUP`, `EOPNOTSUPP`, `EINVAL` or `ENOTTY`); there it falls back to `fsync`, which
/// such a file system does honour, as SQLite and Go do. Linux: `sync_all` (`fsync`),
/// nothing else.
pub(crate) fn sync_all(file: &File) -> std::io::Result<()> {
    #[cfg(target_os = "macos")]
    {
        use std::os::fd::AsRawFd;
        match file.sync_all() {
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::ENOTSUP | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOTTY)
                ) =>
            {
                loop {
                    // SAFETY: a valid descriptor; fsync has no other precondition.
                    if unsafe { libc::fsync(file.as_raw_fd()) } == 0 {
                        return Ok(());
                    }
                    let err = std::io::Error::last_os_error();
                    if err.kind() != std::io::ErrorKind::Interrupted {
                        return Err(err);
                    }
                }
            }
            other => other,
        }
    }
    #[cfg(not(target_os = "macos"))]
    file.sync_all()
}

/// Make the folder `dir`'s entries durable: `fsync` of the folder.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    sync_all(&File::open(dir)?)
}

/// What becomes of a file made by [`create_private`]. The same on Unix; on Windows a
/// spill segment also goes when its last handle closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// Deleted only when the crate deletes it.
    Kept,
    /// A disk tier's segment, deleted by its cache (while still mapped, if need be).
    Spill,
}

/// Create `path`, which must not exist (a symlink there included), for reading and
/// writing by this user alone (0600), not inherited by child processes.
pub(crate) fn create_private(path: &Path, _lifetime: Lifetime) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Create `path`, which must not exist, as any file the user writes (0666 less the
/// umask), for reading and writing.
pub(crate) fn create_shared(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o666)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Open `path` for reading, not inherited by child processes.
pub(crate) fn open_read(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Open `path` for reading, failing (`ELOOP`) if it is a symlink.
pub(crate) fn open_read_no_follow(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// The permissions a private folder is created with: 0700.
pub(crate) fn private_folder_permissions() -> Option<std::fs::Permissions> {
    Some(std::fs::Permissions::from_mode(0o700))
}

/// Take the exclusive owner lock (`flock`) of `file` without waiting; false if another
/// holds it. A forked child shares it, so its exit releases nothing.
pub(crate) fn try_lock(file: &File) -> bool {
    // SAFETY: a valid descriptor; flock has no other precondition.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Remove the file `path`, whose lock `held` holds if given, then release the lock: a
/// removed name is gone at once, so no one finds it unlocked. `aside` is Windows's.
pub(crate) fn remove_locked(
    path: &Path,
    held: Option<File>,
    _aside: impl FnOnce() -> PathBuf,
) -> std::io::Result<()> {
    let removed = std::fs::remove_file(path);
    drop(held);
    removed
}

/// A `flock` on a folder, released when dropped.
#[derive(Debug)]
pub(crate) struct FolderLock {
    _held: File,
}

impl FolderLock {
    /// `None` when the folder cannot be opened or locked (no read permission, a file
    /// system without flock); callers then go on without it.
    pub(crate) fn take(folder: &Path, hold: Hold) -> Option<Self> {
        let operation = match hold {
            Hold::Shared => libc::LOCK_SH,
            Hold::Exclusive => libc::LOCK_EX,
        };
        let folder = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(folder)
            .ok()?;
        loop {
            // SAFETY: a valid descriptor; flock has no other precondition.
            if unsafe { libc::flock(folder.as_raw_fd(), operation) } == 0 {
                return Some(Self { _held: folder });
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return None;
            }
        }
    }
}

/// The state of the open `file` (its `fstat`), `None` if the OS does not say.
pub(crate) fn file_state(file: &File) -> Option<FileState> {
    file_state_of(file, &file.metadata().ok()?)
}

/// The state of the open `file` whose metadata is `meta` (all of it is there on Unix).
pub(crate) fn file_state_of(_file: &File, meta: &std::fs::Metadata) -> Option<FileState> {
    Some(FileState {
        device: meta.dev(),
        inode: meta.ino(),
        bytes: meta.size(),
        changed: (meta.ctime(), meta.ctime_nsec()),
        modified: (meta.mtime(), meta.mtime_nsec()),
    })
}

/// Fill `bytes` from the OS's random source (`/dev/urandom`).
pub(crate) fn random_bytes(bytes: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    File::open("/dev/urandom")?.read_exact(bytes)
}

/// Where random bytes come from, for error messages.
pub(crate) const RANDOM_SOURCE: &str = "/dev/urandom";
