//! Reading file bytes from the page cache without blocking an async thread (`RWF_NOWAIT`),
//! and from the disk on a blocking thread when they are not there: what serving and the ZIP
//! stream read with.

use std::sync::Arc;

/// Would this error mean "the data is not in memory yet" for a no-wait attempt?
pub(super) fn would_block(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::OPNOTSUPP
}

/// Reads at most `max` bytes of `file` from `offset`. Without `wait`, only bytes already in
/// the page cache (`RWF_NOWAIT`): the result may be short, and `None` means nothing was
/// cached. A result shorter than asked with `wait` means the end of the file.
pub fn read_at(
    file: &std::fs::File,
    offset: u64,
    max: usize,
    wait: bool,
) -> std::io::Result<Option<bytes::Bytes>> {
    use rustix::io::ReadWriteFlags;
    let mut pooled = crate::bufpool::PooledBuf::filled(max);
    let buf = pooled.vec_mut();
    let mut filled = 0;
    while filled < max {
        let flags = if wait {
            ReadWriteFlags::empty()
        } else {
            ReadWriteFlags::NOWAIT
        };
        let mut slices = [std::io::IoSliceMut::new(&mut buf[filled..])];
        match rustix::io::preadv2(file, &mut slices, offset + filled as u64, flags) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) if !wait && would_block(e) => break,
            Err(e) => return Err(e.into()),
        }
    }
    if filled == 0 && !wait && max > 0 {
        return Ok(None);
    }
    Ok(Some(pooled.freeze(filled)))
}

/// Reads up to `max` bytes of `file` from `offset`: from the page cache on the calling
/// (async) thread when they are there, else on a blocking thread. Empty at the end.
pub async fn read_chunk(
    file: &Arc<std::fs::File>,
    offset: u64,
    max: usize,
) -> std::io::Result<bytes::Bytes> {
    if let Some(b) = read_at(file, offset, max, false)? {
        return Ok(b);
    }
    let file = Arc::clone(file);
    tokio::task::spawn_blocking(move || read_at(&file, offset, max, true))
        .await
        .map_err(std::io::Error::other)?
        .map(Option::unwrap_or_default)
}
