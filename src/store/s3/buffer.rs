//! Part buffers and the per-instance budget they are drawn from. `object_store` sends a
//! part from memory (a `PutPayload`), so the bytes of a part in the making are held; the
//! budget caps how many such buffers an instance holds at once, so memory stays bounded
//! however many uploads run. A writer reserves its whole share before it starts (never a
//! bit at a time, which could leave every writer holding half of what it needs).

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use object_store::PutPayload;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::WRITER_RESERVATION;

/// The bytes an instance may hold in part buffers, shared by the clones of an `S3Bytes`.
#[derive(Debug, Clone)]
pub struct Budget {
    /// One permit per KiB.
    kib: Arc<Semaphore>,
    /// KiB one writer reserves (at most the whole budget).
    share: u32,
    /// KiB in all.
    total: u32,
}

impl Budget {
    /// A budget of `bytes` (at least one writer's share).
    pub fn new(bytes: usize) -> Self {
        let total = (bytes.max(WRITER_RESERVATION) / 1024).min(u32::MAX as usize);
        let share = (WRITER_RESERVATION / 1024).min(total);
        Self {
            kib: Arc::new(Semaphore::new(total)),
            // Both fit in u32: `total` was capped above and `share` is at most `total`.
            share: u32::try_from(share).unwrap_or(u32::MAX),
            total: u32::try_from(total).unwrap_or(u32::MAX),
        }
    }

    /// Waits for one writer's share; it is given back when the permit drops.
    pub async fn reserve(&self) -> OwnedSemaphorePermit {
        // The semaphore is never closed, so acquiring only waits.
        loop {
            if let Ok(p) = self.kib.clone().acquire_many_owned(self.share).await {
                return p;
            }
        }
    }

    /// `bytes` more for a writer that has its share, if the budget has them free now
    /// (never waits: a writer that waited for more while holding its share could block
    /// another doing the same).
    pub fn try_extra(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024)).ok()?;
        self.kib.clone().try_acquire_many_owned(kib).ok()
    }

    /// Waits until `bytes` (at most the whole budget) can be held; given back when the
    /// permit drops.
    pub async fn reserve_bytes(&self, bytes: usize) -> OwnedSemaphorePermit {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total.max(1));
        loop {
            if let Ok(p) = self.kib.clone().acquire_many_owned(kib).await {
                return p;
            }
        }
    }

    /// The bytes of the whole budget.
    pub fn bytes(&self) -> usize {
        self.total as usize * 1024
    }

    /// Writers that could start now without waiting.
    pub fn free_writers(&self) -> usize {
        self.kib.available_permits() / self.share.max(1) as usize
    }
}

/// Bytes gathered for the next part: the chunks as they came, cut without copying.
#[derive(Debug, Default)]
pub(crate) struct Buffer {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Buffer {
    /// Bytes held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds bytes at the end.
    pub(crate) fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len();
            self.chunks.push_back(b);
        }
    }

    /// Puts bytes that come before everything held (staged bytes read back).
    pub(crate) fn prepend(&mut self, front: Vec<Bytes>) {
        for b in front.into_iter().rev() {
            if !b.is_empty() {
                self.len += b.len();
                self.chunks.push_front(b);
            }
        }
    }

    /// The first `n` bytes (or all, when fewer are held) as a payload.
    pub(crate) fn take(&mut self, n: usize) -> PutPayload {
        let mut out = Vec::new();
        let mut left = n;
        while left > 0 {
            let Some(mut c) = self.chunks.pop_front() else {
                break;
            };
            if c.len() > left {
                let rest = c.split_off(left);
                self.chunks.push_front(rest);
            }
            left -= c.len();
            self.len -= c.len();
            out.push(c);
        }
        out.into_iter().collect()
    }

    /// Everything held, as a payload.
    pub(crate) fn take_all(&mut self) -> PutPayload {
        self.len = 0;
        self.chunks.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_cut_chunks_without_losing_bytes() {
        let mut b = Buffer::default();
        b.push(Bytes::from_static(b"hello"));
        b.push(Bytes::from_static(b""));
        b.push(Bytes::from_static(b" world"));
        b.prepend(vec![Bytes::from_static(b">"), Bytes::from_static(b"> ")]);
        assert_eq!(b.len(), 14);
        let first: Vec<u8> = b.take(4).into_iter().flatten().collect();
        assert_eq!(first, b">> h");
        assert_eq!(b.len(), 10);
        let rest: Vec<u8> = b.take_all().into_iter().flatten().collect();
        assert_eq!(rest, b"ello world");
        assert_eq!(b.len(), 0);
        assert_eq!(b.take(3).content_length(), 0);
    }

    #[tokio::test]
    async fn a_budget_grants_at_least_one_writer_and_takes_shares_back() {
        let tiny = Budget::new(1);
        assert_eq!(tiny.free_writers(), 1);
        let b = Budget::new(2 * WRITER_RESERVATION);
        let one = b.reserve().await;
        let _two = b.reserve().await;
        assert_eq!(b.free_writers(), 0);
        drop(one);
        assert_eq!(b.free_writers(), 1);
        // More than the budget is capped at the whole of it, and still granted.
        drop(_two);
        let all = b.reserve_bytes(usize::MAX).await;
        assert_eq!(b.free_writers(), 0);
        drop(all);
        let _some = b.reserve_bytes(3 << 20).await;
        assert_eq!(b.free_writers(), 1);
    }
}
