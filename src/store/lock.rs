//! The `flock`s that order work on one session: its folder's lock (commits, completes,
//! aborts) and its data file's (the part being appended, a complete publishing it). They
//! die with the process, so a crash never leaves a lock behind.

use std::path::Path;

use super::sessions;
use super::{not_found, StoreError};

/// Takes a live session's lock (waiting for it) and checks the session is still live: a
/// complete may have claimed it while we waited.
pub(super) fn lock_live_session(dir: &Path) -> Result<std::fs::File, StoreError> {
    let lock = lock_dir(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => not_found(),
        _ => e.into(),
    })?;
    if !dir.join("session.json").exists() {
        return Err(not_found());
    }
    Ok(lock)
}

/// Opens the data file of a session, with its exclusive `flock` (held by whoever appends to
/// it, and by a complete that publishes it), without waiting: `None` when another holds it.
pub(super) fn lock_data_file(
    dir: &Path,
    create: bool,
) -> Result<Option<std::fs::File>, StoreError> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .open(dir.join(sessions::DATA_FILE))
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(StoreError::Io(e.into())),
    }
}

/// Opens a folder and takes its exclusive `flock`, waiting for it. The lock lives as long as
/// the returned handle, and dies with the process.
pub(super) fn lock_dir(dir: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::File::open(dir)?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .map_err(std::io::Error::from)?;
    Ok(f)
}

/// Is a claimed or in-progress folder abandoned, its lock free (its holder gone)?
pub(super) fn claim_is_dead(dir: &Path) -> bool {
    let Ok(f) = std::fs::File::open(dir) else {
        return false;
    };
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
}
