//! Everything the crate asks of the operating system that differs between Unix (Linux,
//! macOS) and Windows: one body of each function per OS, in `unix.rs` and `windows.rs`,
//! and the rest of the crate calls only these. docs/processes.md ("Windows") says what
//! the Windows bodies promise where it differs from Unix.

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::*;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub(crate) use windows::*;

/// How a [`FolderLock`] is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hold {
    /// By any number of holders at once: while a folder of ours is made or committed.
    Shared,
    /// By one holder: while a sweep judges the folders.
    Exclusive,
}

/// One state of a file: any write to it moves its change time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileState {
    pub device: u64,
    pub inode: u64,
    pub bytes: u64,
    /// Seconds and nanoseconds since the epoch.
    pub changed: (i64, i64),
    pub modified: (i64, i64),
}

/// The errno of `err`: its OS error as a C runtime errno, else (a library that kept
/// only a message) the number in its "(os error N)" text, else its kind's; `EIO` when
/// none says.
pub(crate) fn errno(err: &std::io::Error) -> i32 {
    use std::io::ErrorKind;
    if let Some(Errno(errno)) = err.get_ref().and_then(|inner| inner.downcast_ref()) {
        return *errno;
    }
    if let Some(code) = err.raw_os_error() {
        return errno_of_os_error(code);
    }
    let text = err.to_string();
    let quoted = text
        .split_once("(os error ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .and_then(|(number, _)| number.parse().ok());
    if let Some(code) = quoted {
        return errno_of_os_error(code);
    }
    match err.kind() {
        ErrorKind::PermissionDenied => libc::EACCES,
        ErrorKind::NotFound => libc::ENOENT,
        ErrorKind::AlreadyExists => libc::EEXIST,
        ErrorKind::StorageFull => libc::ENOSPC,
        ErrorKind::QuotaExceeded => EDQUOT,
        ErrorKind::ReadOnlyFilesystem => libc::EROFS,
        ErrorKind::NotADirectory => libc::ENOTDIR,
        ErrorKind::OutOfMemory => libc::ENOMEM,
        _ => libc::EIO,
    }
}

/// An errno carried by an I/O error whose OS error is of another kind (Windows's): what
/// [`errno_error`] makes there.
#[derive(Debug)]
pub(crate) struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&strerror(self.0))
    }
}

impl std::error::Error for Errno {}

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
        assert_eq!(errno(&err), libc::EEXIST, "{err}");
        std::fs::write(&c, b"kept").unwrap();
        let err = rename_no_replace(&a, &c).unwrap_err();
        assert_eq!(errno(&err), libc::EEXIST, "{err}");
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
        // Windows flushes only a handle that may write.
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        sync_all(&file).unwrap();
        sync_dir(dir.path()).unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "system calls")]
    fn an_owner_lock_has_one_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owner");
        let first = create_private(&path, Lifetime::Kept).unwrap();
        assert!(try_lock(&first));
        let second = open_read_no_follow(&path).unwrap();
        assert!(!try_lock(&second), "a second handle took a held lock");
        drop(first);
        assert!(try_lock(&second), "the lock outlived its handle");
    }

    #[test]
    #[cfg_attr(miri, ignore = "system calls")]
    fn a_folder_lock_is_shared_or_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let first = FolderLock::take(dir.path(), Hold::Shared).expect("a shared lock");
        let second = FolderLock::take(dir.path(), Hold::Shared).expect("shared twice");
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.path().to_path_buf();
        let sweeper = std::thread::spawn(move || {
            let exclusive = FolderLock::take(&path, Hold::Exclusive);
            tx.send(exclusive.is_some()).unwrap();
        });
        let wait = std::time::Duration::from_millis(200);
        assert!(rx.recv_timeout(wait).is_err(), "taken while shared");
        drop((first, second));
        assert!(
            rx.recv_timeout(wait * 50).unwrap(),
            "an exclusive lock once free"
        );
        sweeper.join().unwrap();
    }

    #[test]
    #[cfg_attr(miri, ignore = "system calls")]
    fn a_new_file_is_never_made_over_an_existing_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"kept").unwrap();
        for err in [
            create_private(&path, Lifetime::Kept).unwrap_err(),
            create_shared(&path).unwrap_err(),
        ] {
            assert_eq!(errno(&err), libc::EEXIST, "{err}");
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"kept");
    }

    // Unix only: on Windows making a symlink takes a privilege (or developer mode), and
    // wine 8 reports success but makes none, so nothing here could make one to refuse.
    #[cfg(unix)]
    #[test]
    #[cfg_attr(miri, ignore = "system calls")]
    fn a_symlink_is_neither_followed_nor_replaced() {
        use std::os::unix::fs::symlink as symlink_file;
        let dir = tempfile::tempdir().unwrap();
        let (target, link) = (dir.path().join("target"), dir.path().join("link"));
        std::fs::write(&target, b"kept").unwrap();
        symlink_file(&target, &link).unwrap();
        let err = open_read_no_follow(&link).unwrap_err();
        assert_eq!(errno(&err), libc::ELOOP, "{err}");
        let (missing, dangling) = (dir.path().join("missing"), dir.path().join("dangling"));
        symlink_file(&missing, &dangling).unwrap();
        for path in [&link, &dangling] {
            for err in [
                create_private(path, Lifetime::Kept).unwrap_err(),
                create_private(path, Lifetime::Spill).unwrap_err(),
                create_shared(path).unwrap_err(),
            ] {
                assert_eq!(errno(&err), libc::EEXIST, "{err}");
            }
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"kept");
        assert!(!missing.exists());
    }

    #[test]
    #[cfg_attr(miri, ignore = "system calls")]
    fn missing_and_forbidden_files_keep_their_errno_class() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_read(&dir.path().join("missing")).unwrap_err();
        assert_eq!(errno(&err), libc::ENOENT, "{err}");
        let err = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(errno(&err), libc::EACCES, "{err}");
        let wrapped = std::io::Error::other(format!(
            "{} at /x",
            open_read(dir.path().join("m").as_path()).unwrap_err()
        ));
        assert_eq!(errno(&wrapped), libc::ENOENT, "{wrapped}");
    }

    #[test]
    #[cfg_attr(miri, ignore = "system calls")]
    fn a_file_state_moves_with_a_write() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = create_shared(&path).unwrap();
        let before = file_state(&file).expect("a state");
        assert_eq!(before.bytes, 0);
        std::thread::sleep(std::time::Duration::from_millis(20));
        file.write_all(b"more").unwrap();
        sync_all(&file).unwrap();
        let after = file_state(&open_read(&path).unwrap()).expect("a state");
        assert_eq!((after.device, after.inode), (before.device, before.inode));
        assert_eq!(after.bytes, 4);
        assert_ne!(after.changed, before.changed);
    }

    #[test]
    #[cfg_attr(miri, ignore = "system calls")]
    fn an_errno_comes_back_from_its_error() {
        for code in [libc::ENOSPC, libc::EIO, EDQUOT, libc::EACCES, libc::ENOENT] {
            let err = errno_error(code);
            assert_eq!(errno(&err), code, "{err}");
        }
        let text = errno_error(libc::ENOSPC).to_string();
        assert!(text.contains("No space left on device"), "{text}");
    }

    #[test]
    #[cfg_attr(miri, ignore = "system calls")]
    fn random_bytes_differ() {
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        random_bytes(&mut a).unwrap();
        random_bytes(&mut b).unwrap();
        assert_ne!(a, b);
    }
}
