//! What the operating systems batchcorder builds for (Linux, macOS) do differently: each
//! function here has one body per OS, chosen by `cfg(target_os)`, and the rest of the
//! crate calls only these. Everything else the crate asks of the OS (`open` flags,
//! `flock`, `mmap`, `/dev/urandom`, `st_ctime`) is POSIX or BSD and the same on both.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

    // Each asks the OS itself, which Miri (`make miri` runs this crate's unit tests)
    // does not model.
    #[test]
    #[cfg_attr(miri, ignore = "system calls")]
    fn a_rename_never_replaces_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        let err = rename_no_replace(&a, &b).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
        std::fs::write(&c, b"kept").unwrap();
        let err = rename_no_replace(&a, &c).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
        assert_eq!(std::fs::read(&c).unwrap(), b"kept");
        rename_no_replace(&a, &dir.path().join("d")).unwrap();
        assert!(!a.exists() && dir.path().join("d").is_dir());
    }

    #[test]
    #[cfg_attr(miri, ignore = "system calls")]
    fn the_machine_has_some_memory() {
        let bytes = physical_memory().expect("the OS tells its memory");
        assert!(bytes >= 64 << 20, "{bytes}");
    }

    #[test]
    #[cfg_attr(miri, ignore = "system calls")]
    fn a_file_and_a_folder_sync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        sync_all(&File::open(&path).unwrap()).unwrap();
        sync_all(&File::open(dir.path()).unwrap()).unwrap();
    }
}
