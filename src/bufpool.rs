//! Byte buffers that go back to a small pool once the bytes in them have been sent or
//! written, instead of being freed.
//!
//! Two hot paths make a large buffer per step and free it on another thread: the base64
//! decode of a JSON part (a few hundred KiB per received frame) and the read of a range or
//! chunk being served (64 KiB for a typical range). With the system allocator each such
//! buffer is fresh memory: page faults and zero fill on every use, and on this VM, after
//! idle periods, far worse (the host has taken the pages back). Profiles in
//! bench/RESULTS.md. A pooled buffer keeps its pages: it is touched once and reused.
//!
//! Only untouched capacity is virtual, so the pool's cost in memory is what was really
//! used, bounded by `KEEP` buffers a class.

use std::sync::Mutex;

use bytes::Bytes;

/// Capacity classes, smallest first: a request for `n` bytes takes the first that holds it.
const CLASSES: [usize; 3] = [64 * 1024, 256 * 1024, 1024 * 1024];
/// Idle buffers kept per class.
const KEEP: [usize; 3] = [32, 16, 16];
/// Smaller requests are plain allocations: not worth a lock.
const MIN_POOLED: usize = 16 * 1024;

static POOLS: [Mutex<Vec<Vec<u8>>>; 3] = [
    Mutex::new(Vec::new()),
    Mutex::new(Vec::new()),
    Mutex::new(Vec::new()),
];

/// A buffer with room for at least the bytes asked for, taken from the pool when it can be.
/// Turned into [`Bytes`] by [`PooledBuf::freeze`]; back in the pool when those are dropped
/// (on whatever thread drops them), or when it is dropped itself.
pub struct PooledBuf {
    vec: Vec<u8>,
    class: Option<usize>,
}

impl PooledBuf {
    /// An empty buffer (length 0) with room for at least `capacity` bytes without growing.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut b = Self::take(capacity);
        b.vec.clear();
        b
    }

    /// A buffer of exactly `len` initialised bytes (their content is whatever was there
    /// before: zeroes, or an earlier use's bytes), to read into.
    pub fn filled(len: usize) -> Self {
        let mut b = Self::take(len);
        // A reused buffer is initialised up to its old length: only the rest is zeroed.
        b.vec.resize(len, 0);
        b
    }

    fn take(n: usize) -> Self {
        let class = (n >= MIN_POOLED)
            .then(|| CLASSES.iter().position(|&c| n <= c))
            .flatten();
        let reused = class.and_then(|c| POOLS[c].lock().ok()?.pop());
        let vec = reused.unwrap_or_else(|| Vec::with_capacity(class.map_or(n, |c| CLASSES[c])));
        Self { vec, class }
    }

    /// The bytes, to append to or to read into.
    pub fn vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.vec
    }

    /// Bytes in the buffer.
    pub fn len(&self) -> usize {
        self.vec.len()
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.vec.is_empty()
    }

    /// The first `len` bytes (at most all of them) as `Bytes`, which give the buffer back
    /// when the last of them is dropped.
    pub fn freeze(mut self, len: usize) -> Bytes {
        let len = len.min(self.vec.len());
        if self.class.is_none() {
            let mut vec = std::mem::take(&mut self.vec);
            vec.truncate(len);
            return Bytes::from(vec);
        }
        Bytes::from_owner(self).slice(..len)
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.vec
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        let Some(class) = self.class else { return };
        // A buffer that grew past its class (an append that did not fit) is not kept.
        if self.vec.capacity() != CLASSES[class] {
            return;
        }
        if let Ok(mut pool) = POOLS[class].lock() {
            if pool.len() < KEEP[class] {
                pool.push(std::mem::take(&mut self.vec));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn freeze_keeps_the_bytes_and_slices_keep_the_buffer() {
        let mut b = PooledBuf::with_capacity(100_000);
        assert!(b.is_empty());
        b.vec_mut().extend_from_slice(b"hello world");
        assert_eq!(b.len(), 11);
        let bytes = b.freeze(5);
        assert_eq!(&bytes[..], b"hello");
        let tail = bytes.slice(1..);
        drop(bytes);
        assert_eq!(&tail[..], b"ello");
    }

    #[test]
    fn a_pooled_buffer_has_its_class_room() {
        // The tests share the pool: use a class no other test here takes.
        let mut b = PooledBuf::with_capacity(CLASSES[2]);
        b.vec_mut().resize(CLASSES[2], 7);
        drop(b.freeze(10));
        let again = PooledBuf::with_capacity(CLASSES[1] + 1);
        assert_eq!(again.vec.capacity(), CLASSES[2]);
        assert!(again.is_empty(), "an append buffer starts empty");
        let read = PooledBuf::filled(CLASSES[2] - 1);
        assert_eq!(read.len(), CLASSES[2] - 1);
    }

    #[test]
    fn small_huge_and_grown_buffers_are_plain() {
        for n in [0, 10, MIN_POOLED - 1, CLASSES[2] + 1] {
            let b = PooledBuf::filled(n);
            assert!(b.class.is_none());
            assert_eq!(b.freeze(5).len(), n.min(5));
        }
        let mut grown = PooledBuf::with_capacity(MIN_POOLED);
        grown.vec_mut().resize(CLASSES[0] + 1, 0);
        drop(grown); // not kept: its capacity is no longer the class's
    }
}
