//! Windows: Win32 calls through windows-sys. What differs from Unix is in
//! docs/processes.md ("Windows").

use std::fs::{File, OpenOptions};
use std::os::windows::ffi::OsStrExt;
use std::os::windows::fs::{MetadataExt, OpenOptionsExt};
use std::os::windows::io::AsRawHandle;
use std::path::{Path, PathBuf};

use windows_sys::Win32::Foundation as win;
use windows_sys::Win32::Security::Cryptography::{
    BCryptGenRandom, BCRYPT_USE_SYSTEM_PREFERRED_RNG,
};
use windows_sys::Win32::Storage::FileSystem::{
    FileBasicInfo, GetFileInformationByHandle, GetFileInformationByHandleEx, LockFileEx,
    MoveFileExW, BY_HANDLE_FILE_INFORMATION, FILE_ATTRIBUTE_REPARSE_POINT, FILE_BASIC_INFO,
    FILE_FLAG_BACKUP_SEMANTICS, FILE_FLAG_DELETE_ON_CLOSE, FILE_FLAG_OPEN_REPARSE_POINT,
    LOCKFILE_EXCLUSIVE_LOCK, LOCKFILE_FAIL_IMMEDIATELY, LOCK_FILE_FLAGS, MOVEFILE_WRITE_THROUGH,
};
use windows_sys::Win32::System::SystemInformation::{GlobalMemoryStatusEx, MEMORYSTATUSEX};
use windows_sys::Win32::System::IO::OVERLAPPED;

use super::{FileState, Hold};

/// The C runtime has no `EDQUOT`: a quota is a full disk to it (`ENOSPC`).
pub(crate) const EDQUOT: i32 = libc::ENOSPC;

/// An open file may keep its name, and so its folder, until its last handle (a
/// mapping's included) closes: deleting it marks it for deletion then, unless the file
/// system has POSIX delete semantics. A folder holding an open file cannot be renamed.
pub(crate) const OPEN_FILES_PIN_THEIR_NAMES: bool = true;

/// The C runtime's errno for a Win32 error code, as its own `_dosmaperr` classes them
/// (what Python's `OSError` reads to pick `FileNotFoundError`, `PermissionError`, ...).
pub(super) fn errno_of_os_error(code: i32) -> i32 {
    let Ok(code) = u32::try_from(code) else {
        return libc::EIO;
    };
    match code {
        win::ERROR_FILE_NOT_FOUND
        | win::ERROR_PATH_NOT_FOUND
        | win::ERROR_INVALID_DRIVE
        | win::ERROR_BAD_NETPATH
        | win::ERROR_BAD_NET_NAME
        | win::ERROR_BAD_PATHNAME
        | win::ERROR_FILENAME_EXCED_RANGE => libc::ENOENT,
        win::ERROR_ACCESS_DENIED
        | win::ERROR_SHARING_VIOLATION
        | win::ERROR_LOCK_VIOLATION
        | win::ERROR_CURRENT_DIRECTORY
        | win::ERROR_NETWORK_ACCESS_DENIED
        | win::ERROR_CANNOT_MAKE
        | win::ERROR_DELETE_PENDING
        | win::ERROR_PRIVILEGE_NOT_HELD => libc::EACCES,
        win::ERROR_WRITE_PROTECT => libc::EROFS,
        win::ERROR_FILE_EXISTS | win::ERROR_ALREADY_EXISTS => libc::EEXIST,
        win::ERROR_DIR_NOT_EMPTY => libc::ENOTEMPTY,
        win::ERROR_DIRECTORY => libc::ENOTDIR,
        win::ERROR_DISK_FULL | win::ERROR_HANDLE_DISK_FULL => libc::ENOSPC,
        win::ERROR_NOT_ENOUGH_MEMORY
        | win::ERROR_OUTOFMEMORY
        | win::ERROR_NOT_ENOUGH_QUOTA
        | win::ERROR_COMMITMENT_LIMIT => libc::ENOMEM,
        win::ERROR_INVALID_PARAMETER | win::ERROR_INVALID_NAME | win::ERROR_NEGATIVE_SEEK => {
            libc::EINVAL
        }
        win::ERROR_NOT_SUPPORTED | win::ERROR_INVALID_FUNCTION => libc::ENOTSUP,
        win::ERROR_CANT_RESOLVE_FILENAME | win::ERROR_STOPPED_ON_SYMLINK => libc::ELOOP,
        win::ERROR_TOO_MANY_OPEN_FILES => libc::EMFILE,
        win::ERROR_NOT_SAME_DEVICE => libc::EXDEV,
        win::ERROR_BROKEN_PIPE | win::ERROR_NO_DATA => libc::EPIPE,
        _ => libc::EIO,
    }
}

/// The I/O error of `errno` (the tests' injected faults): a C runtime errno is no Win32
/// error code, so it travels as [`super::Errno`], of the kind its class has.
pub(crate) fn errno_error(errno: i32) -> std::io::Error {
    use std::io::ErrorKind;
    let kind = match errno {
        libc::ENOSPC => ErrorKind::StorageFull,
        libc::EACCES => ErrorKind::PermissionDenied,
        libc::ENOENT => ErrorKind::NotFound,
        libc::EEXIST => ErrorKind::AlreadyExists,
        libc::ENOMEM => ErrorKind::OutOfMemory,
        _ => ErrorKind::Other,
    };
    std::io::Error::new(kind, super::Errno(errno))
}

/// The C runtime's text for `errno` ("No space left on device", as glibc's).
pub(super) fn strerror(errno: i32) -> String {
    // SAFETY: strerror returns a NUL-terminated string of the C runtime's, valid until
    // the next strerror call on this thread; it is copied at once.
    unsafe {
        let text = libc::strerror(errno);
        if text.is_null() {
            return format!("errno {errno}");
        }
        std::ffi::CStr::from_ptr(text)
            .to_string_lossy()
            .into_owned()
    }
}

/// `path` as a NUL-terminated wide string; a path with a NUL in it is `EINVAL`'s.
fn wide(path: &Path) -> std::io::Result<Vec<u16>> {
    if path.as_os_str().encode_wide().any(|unit| unit == 0) {
        return Err(std::io::Error::from_raw_os_error(
            win::ERROR_INVALID_NAME as i32,
        ));
    }
    // Absolute, and past MAX_PATH in the \\?\ form that has no length limit.
    let absolute = std::path::absolute(path)?;
    let mut wide: Vec<u16> = absolute.as_os_str().encode_wide().collect();
    if wide.len() >= 248 && !wide.starts_with(&[92, 92, 63, 92]) {
        let unc = wide.starts_with(&[92, 92]);
        let prefix: Vec<u16> = if unc { r"\\?\UNC" } else { r"\\?\" }
            .encode_utf16()
            .collect();
        let rest = if unc { &wide[1..] } else { &wide[..] };
        wide = prefix.into_iter().chain(rest.iter().copied()).collect();
    }
    wide.push(0);
    Ok(wide)
}

/// Rename `from` to `to` in one step (`MoveFileExW` without `MOVEFILE_REPLACE_EXISTING`,
/// written through to the disk), failing with `EEXIST` if `to` exists, an empty folder
/// included.
pub(crate) fn rename_no_replace(from: &Path, to: &Path) -> std::io::Result<()> {
    let (from, to) = (wide(from)?, wide(to)?);
    // SAFETY: two NUL-terminated wide strings that outlive the call.
    let moved = unsafe { MoveFileExW(from.as_ptr(), to.as_ptr(), MOVEFILE_WRITE_THROUGH) };
    match moved {
        0 => Err(std::io::Error::last_os_error()),
        _ => Ok(()),
    }
}

/// The machine's physical memory in bytes (`GlobalMemoryStatusEx`).
pub(crate) fn physical_memory() -> Option<u64> {
    // SAFETY: MEMORYSTATUSEX is plain data; all zeroes is a valid value.
    let mut status: MEMORYSTATUSEX = unsafe { std::mem::zeroed() };
    status.dwLength = std::mem::size_of::<MEMORYSTATUSEX>() as u32;
    // SAFETY: a MEMORYSTATUSEX whose dwLength is its size, as the call requires.
    let ok = unsafe { GlobalMemoryStatusEx(&mut status) };
    (ok != 0 && status.ullTotalPhys > 0).then_some(status.ullTotalPhys)
}

/// Make `file`'s data and metadata durable (`FlushFileBuffers`).
pub(crate) fn sync_all(file: &File) -> std::io::Result<()> {
    file.sync_all()
}

/// Nothing: NTFS journals a folder's entries itself, and the one rename that must last
/// (a save's) is made with `MOVEFILE_WRITE_THROUGH`.
pub(crate) fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// What becomes of a file made by [`create_private`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifetime {
    /// Deleted only when the crate deletes it.
    Kept,
    /// A disk tier's segment: also deleted by Windows when its last handle closes (the
    /// mapping's, when the last array that points into it goes; or the process's end),
    /// since Windows keeps a mapped file's name until it is unmapped.
    Spill,
}

/// Create `path`, which must not exist (a symlink or junction there included), for
/// reading and writing. Its ACL is inherited from its folder (docs/processes.md); handles
/// are not inherited by child processes (std's default).
pub(crate) fn create_private(path: &Path, lifetime: Lifetime) -> std::io::Result<File> {
    let delete = match lifetime {
        Lifetime::Kept => 0,
        Lifetime::Spill => FILE_FLAG_DELETE_ON_CLOSE,
    };
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT | delete)
        .open(path)
}

/// Create `path`, which must not exist, for reading and writing.
pub(crate) fn create_shared(path: &Path) -> std::io::Result<File> {
    create_private(path, Lifetime::Kept)
}

/// Open `path` for reading (std shares it for reading, writing and deleting).
pub(crate) fn open_read(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).open(path)
}

/// Open `path` for reading, failing (`ELOOP`) if it is a symlink or another reparse
/// point (a junction, say): the point itself is opened, then refused.
pub(crate) fn open_read_no_follow(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
        .open(path)?;
    if file.metadata()?.file_attributes() & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
        return Err(std::io::Error::from_raw_os_error(
            win::ERROR_CANT_RESOLVE_FILENAME as i32,
        ));
    }
    Ok(file)
}

/// None: a folder's ACL is inherited from its parent (docs/processes.md).
pub(crate) fn private_folder_permissions() -> Option<std::fs::Permissions> {
    None
}

/// `LockFileEx` over every byte of `file`, waiting or not; false when not taken.
fn lock(file: &File, flags: LOCK_FILE_FLAGS) -> bool {
    // SAFETY: OVERLAPPED is plain data; zero is offset 0 and no event.
    let mut overlapped: OVERLAPPED = unsafe { std::mem::zeroed() };
    // SAFETY: a valid handle opened for synchronous I/O, and an OVERLAPPED that lives
    // through the call (which, on such a handle, completes before it returns).
    let locked = unsafe {
        LockFileEx(
            file.as_raw_handle(),
            flags,
            0,
            u32::MAX,
            u32::MAX,
            &mut overlapped,
        )
    };
    locked != 0
}

/// Take the exclusive owner lock (`LockFileEx`) of `file` without waiting; false if
/// another handle holds it. It goes with the handle: its close or the process's end.
pub(crate) fn try_lock(file: &File) -> bool {
    lock(file, LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY)
}

/// Remove the file `path`, whose lock `held` holds if given: an open file keeps its
/// name (and so its folder) until closed, so it is renamed to `aside()`, a name no one
/// takes for a locked file, then closed, then removed.
pub(crate) fn remove_locked(
    path: &Path,
    held: Option<File>,
    aside: impl FnOnce() -> PathBuf,
) -> std::io::Result<()> {
    let Some(held) = held else {
        return std::fs::remove_file(path);
    };
    let aside = aside();
    std::fs::rename(path, &aside)?;
    drop(held);
    std::fs::remove_file(&aside)
}

/// The folder, in the user's temporary folder, of the lock files that stand for folders'
/// locks: Windows locks no folder, and a lock file in the folder itself would be a file
/// batchcorder leaves in the user's folders.
const FOLDER_LOCKS: &str = "batchcorder-folder-locks";

/// The volume serial number and file index of the open `file`: its identity, whatever
/// path (8.3 name, letter case, junction) reached it.
fn file_id(file: &File) -> Option<(u32, u64)> {
    let info = handle_info(file)?;
    let index = (u64::from(info.nFileIndexHigh) << 32) | u64::from(info.nFileIndexLow);
    Some((info.dwVolumeSerialNumber, index))
}

/// `GetFileInformationByHandle` of the open `file`.
fn handle_info(file: &File) -> Option<BY_HANDLE_FILE_INFORMATION> {
    // SAFETY: plain data; all zeroes is a valid value.
    let mut info: BY_HANDLE_FILE_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: a valid handle and a structure of the type the call fills.
    let ok = unsafe { GetFileInformationByHandle(file.as_raw_handle(), &mut info) };
    (ok != 0).then_some(info)
}

/// A lock on a folder, released when dropped: a `LockFileEx` lock on a file named after
/// the folder's identity in `%TEMP%\batchcorder-folder-locks`, made on first use and left
/// there (removing it would race another process's open). So it is shared by the
/// processes of users whose temporary folder is the same (docs/processes.md).
#[derive(Debug)]
pub(crate) struct FolderLock {
    _held: File,
}

impl FolderLock {
    /// `None` when the folder cannot be opened or the lock file made; callers then go
    /// on without it.
    pub(crate) fn take(folder: &Path, hold: Hold) -> Option<Self> {
        let folder = OpenOptions::new()
            .read(true)
            .custom_flags(FILE_FLAG_BACKUP_SEMANTICS) // what opens a folder
            .open(folder)
            .ok()?;
        let (volume, index) = file_id(&folder)?;
        let locks = std::env::temp_dir().join(FOLDER_LOCKS);
        std::fs::create_dir_all(&locks).ok()?;
        let path = locks.join(format!("{volume:08x}-{index:016x}.lock"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(FILE_FLAG_OPEN_REPARSE_POINT)
            .open(&path)
            .or_else(|_| open_read_no_follow(&path))
            .ok()?;
        if file.metadata().ok()?.file_attributes() & FILE_ATTRIBUTE_REPARSE_POINT != 0 {
            return None;
        }
        let flags = match hold {
            Hold::Shared => 0,
            Hold::Exclusive => LOCKFILE_EXCLUSIVE_LOCK,
        };
        lock(&file, flags).then_some(Self { _held: file })
    }
}

/// 100 ns ticks from 1601 to 1970, the two epochs.
const EPOCH_TICKS: i64 = 116_444_736_000_000_000;

/// A FILETIME's ticks as seconds and nanoseconds since 1970.
fn since_epoch(ticks: i64) -> (i64, i64) {
    let ticks = ticks - EPOCH_TICKS;
    (
        ticks.div_euclid(10_000_000),
        ticks.rem_euclid(10_000_000) * 100,
    )
}

/// The state of the open `file`: its volume and file index, size, and NTFS's change and
/// write times. `None` if the OS does not say.
pub(crate) fn file_state(file: &File) -> Option<FileState> {
    let info = handle_info(file)?;
    // SAFETY: plain data; all zeroes is a valid value.
    let mut basic: FILE_BASIC_INFO = unsafe { std::mem::zeroed() };
    // SAFETY: a valid handle, and a buffer of the size given for FileBasicInfo.
    let ok = unsafe {
        GetFileInformationByHandleEx(
            file.as_raw_handle(),
            FileBasicInfo,
            (&mut basic as *mut FILE_BASIC_INFO).cast(),
            std::mem::size_of::<FILE_BASIC_INFO>() as u32,
        )
    };
    if ok == 0 {
        return None;
    }
    Some(FileState {
        device: u64::from(info.dwVolumeSerialNumber),
        inode: (u64::from(info.nFileIndexHigh) << 32) | u64::from(info.nFileIndexLow),
        bytes: (u64::from(info.nFileSizeHigh) << 32) | u64::from(info.nFileSizeLow),
        changed: since_epoch(basic.ChangeTime),
        modified: since_epoch(basic.LastWriteTime),
    })
}

/// The state of the open `file` (std's metadata lacks the change time and identity).
pub(crate) fn file_state_of(file: &File, _meta: &std::fs::Metadata) -> Option<FileState> {
    file_state(file)
}

/// Fill `bytes` from the system's preferred random generator (`BCryptGenRandom`).
pub(crate) fn random_bytes(bytes: &mut [u8]) -> std::io::Result<()> {
    for chunk in bytes.chunks_mut(u32::MAX as usize) {
        // SAFETY: a writable buffer of the length given; no algorithm handle is needed
        // with BCRYPT_USE_SYSTEM_PREFERRED_RNG.
        let status = unsafe {
            BCryptGenRandom(
                std::ptr::null_mut(),
                chunk.as_mut_ptr(),
                chunk.len() as u32,
                BCRYPT_USE_SYSTEM_PREFERRED_RNG,
            )
        };
        if status < 0 {
            return Err(std::io::Error::other(format!(
                "BCryptGenRandom failed with NTSTATUS {status:#x}"
            )));
        }
    }
    Ok(())
}

/// Where random bytes come from, for error messages.
pub(crate) const RANDOM_SOURCE: &str = "BCryptGenRandom";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_past_max_path_works() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(120)).join("e".repeat(120));
        std::fs::create_dir_all(&deep).unwrap();
        let from = deep.join("from");
        std::fs::create_dir(&from).unwrap();
        let to = deep.join("to");
        assert!(wide(&to).unwrap().len() > 260);
        rename_no_replace(&from, &to).unwrap();
        assert!(to.is_dir() && !from.exists());
    }

    #[test]
    fn a_path_with_a_nul_is_invalid() {
        let err = wide(Path::new("a\0b")).unwrap_err();
        assert_eq!(super::super::errno(&err), libc::EINVAL, "{err}");
    }

    #[test]
    fn filetimes_count_from_1970() {
        assert_eq!(since_epoch(EPOCH_TICKS), (0, 0));
        assert_eq!(since_epoch(EPOCH_TICKS + 15), (0, 1500));
        assert_eq!(since_epoch(EPOCH_TICKS - 1), (-1, 999_999_900));
    }
}
