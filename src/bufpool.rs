//! Byte buffers that go back to a small pool once the bytes in them have been sent or
//! written, instead of being freed.
//!
//! Two hot paths make a large buffer per step and free it on another thread: the base64
//! decode of a JSON part (up to 1 MiB handed to the writer at a time) and the reads of a
//! file being served (64 KiB for a typical range, 256 KiB or 1 MiB chunks for whole files
//! and ZIP entries). With the system allocator each such buffer is fresh memory: page
//! faults and zero fill on every use, and on this VM, after idle periods, far worse (the
//! host has taken the pages back). Profiles in bench/RESULTS.md. A pooled buffer keeps its
//! pages: it is touched once and reused.
//!
//! Untouched capacity stays virtual, so what the pool holds in memory is what was really
//! used, bounded by `KEEP` buffers a class.

use std::sync::Mutex;

use bytes::Bytes;

/// Capacity classes, smallest first: a request for `n` bytes takes the first that holds it.
const CLASSES: [usize; 3] = [64 * 1024, 256 * 1024, 1024 * 1024];
/// Idle buffers kept per class.
const KEEP: [usize; 3] = [32, 16, 16];
/// Smaller requests are plain allocations: not worth a lock.
const MIN_POOLED: usize = 16 * 1024;

/// Idle buffers by class.
pub(crate) struct Pool([Mutex<Vec<Vec<u8>>>; 3]);

/// The process's pool.
static GLOBAL: Pool = Pool::new();

impl Pool {
    const fn new() -> Self {
        Self([
            Mutex::new(Vec::new()),
            Mutex::new(Vec::new()),
            Mutex::new(Vec::new()),
        ])
    }

    fn pop(&self, class: usize) -> Option<Vec<u8>> {
        self.0[class].lock().ok()?.pop()
    }

    fn push(&self, class: usize, vec: Vec<u8>) {
        if let Ok(mut idle) = self.0[class].lock() {
            if idle.len() < KEEP[class] {
                idle.push(vec);
            }
        }
    }
}

fn class_of(n: usize) -> Option<usize> {
    if n < MIN_POOLED {
        return None;
    }
    CLASSES.iter().position(|&c| n <= c)
}

/// A buffer with room for at least the bytes asked for, taken from the pool when it can be.
/// Turned into [`Bytes`] by [`PooledBuf::freeze`]; back in the pool when those are dropped
/// (on whatever thread drops them), or when it is dropped itself.
pub(crate) struct PooledBuf {
    vec: Vec<u8>,
    /// The class and pool it goes back to; `None` for a plain allocation.
    home: Option<(usize, &'static Pool)>,
}

impl PooledBuf {
    /// An empty buffer (length 0) with room for at least `capacity` bytes without growing.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self::with_capacity_in(&GLOBAL, capacity)
    }

    /// A buffer of exactly `len` initialised bytes, to read into. **Their content is
    /// whatever an earlier use left there** (another request's bytes): only freeze what
    /// was written since.
    pub(crate) fn filled(len: usize) -> Self {
        Self::filled_in(&GLOBAL, len)
    }

    fn with_capacity_in(pool: &'static Pool, capacity: usize) -> Self {
        match class_of(capacity) {
            None => Self {
                vec: Vec::with_capacity(capacity),
                home: None,
            },
            Some(class) => {
                let mut vec = pool
                    .pop(class)
                    .unwrap_or_else(|| Vec::with_capacity(CLASSES[class]));
                vec.clear();
                Self {
                    vec,
                    home: Some((class, pool)),
                }
            }
        }
    }

    fn filled_in(pool: &'static Pool, len: usize) -> Self {
        match class_of(len) {
            // `vec![0; n]` gets zeroed pages from the kernel: nothing is written by hand.
            None => Self {
                vec: vec![0; len],
                home: None,
            },
            Some(class) => {
                let mut vec = pool.pop(class).unwrap_or_else(|| vec![0; CLASSES[class]]);
                // Within the class's capacity: truncates, or zeroes only what was never
                // written; never reallocates.
                vec.resize(len, 0);
                Self {
                    vec,
                    home: Some((class, pool)),
                }
            }
        }
    }

    /// The bytes, to append to or to read into.
    pub(crate) fn vec_mut(&mut self) -> &mut Vec<u8> {
        &mut self.vec
    }

    /// Bytes in the buffer.
    pub(crate) fn len(&self) -> usize {
        self.vec.len()
    }

    /// Whether it holds no bytes.
    pub(crate) fn is_empty(&self) -> bool {
        self.vec.is_empty()
    }

    /// The first `len` bytes (at most all of them) as `Bytes`, which give the buffer back
    /// when the last of them is dropped.
    pub(crate) fn freeze(mut self, len: usize) -> Bytes {
        let len = len.min(self.vec.len());
        if self.home.is_none() {
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
        let Some((class, pool)) = self.home else {
            return;
        };
        // A buffer that grew past its class (an append that did not fit) is not kept.
        if self.vec.capacity() == CLASSES[class] {
            pool.push(class, std::mem::take(&mut self.vec));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A pool of the test's own: the global one is shared by every test thread.
    fn private_pool() -> &'static Pool {
        Box::leak(Box::new(Pool::new()))
    }

    fn idle(pool: &Pool, class: usize) -> usize {
        pool.0[class].lock().unwrap().len()
    }

    #[test]
    fn a_buffer_comes_back_only_when_its_last_bytes_are_dropped() {
        let pool = private_pool();
        let mut b = PooledBuf::with_capacity_in(pool, 100_000);
        assert!(b.is_empty());
        b.vec_mut().extend_from_slice(b"hello world");
        assert_eq!(b.len(), 11);
        let ptr = b.vec.as_ptr();
        let bytes = b.freeze(5);
        assert_eq!(&bytes[..], b"hello");
        let tail = bytes.slice(1..);
        drop(bytes);
        assert_eq!(idle(pool, 1), 0, "a slice still points into it");
        assert_eq!(&tail[..], b"ello");
        drop(tail);
        assert_eq!(idle(pool, 1), 1);
        // The same memory again, emptied for appending.
        let again = PooledBuf::with_capacity_in(pool, 200_000);
        assert_eq!(again.vec.as_ptr(), ptr);
        assert!(again.is_empty());
        assert_eq!(idle(pool, 1), 0);
    }

    #[test]
    fn a_reused_read_buffer_is_cut_to_the_length_asked() {
        let pool = private_pool();
        let mut b = PooledBuf::filled_in(pool, CLASSES[2]);
        b.vec_mut().fill(7);
        drop(b);
        let shorter = PooledBuf::filled_in(pool, CLASSES[1] + 1);
        assert_eq!(shorter.len(), CLASSES[1] + 1);
        assert_eq!(shorter.vec.capacity(), CLASSES[2]);
        // Only the bytes frozen are visible: the old content past them is not.
        assert_eq!(shorter.freeze(3).as_ref(), &[7, 7, 7]);
    }

    #[test]
    fn small_huge_and_grown_buffers_are_not_kept() {
        let pool = private_pool();
        for n in [0, 10, MIN_POOLED - 1, CLASSES[2] + 1] {
            let b = PooledBuf::filled_in(pool, n);
            assert!(b.home.is_none());
            assert!(b.vec.iter().all(|&x| x == 0));
            assert_eq!(b.freeze(5).len(), n.min(5));
        }
        let mut grown = PooledBuf::with_capacity_in(pool, MIN_POOLED);
        grown.vec_mut().resize(CLASSES[0] + 1, 0);
        drop(grown);
        let kept = PooledBuf::with_capacity_in(pool, MIN_POOLED);
        drop(kept);
        assert_eq!(idle(pool, 0), 1, "only the buffer that kept its class");
    }

    #[test]
    fn the_pool_keeps_at_most_its_bound() {
        let pool = private_pool();
        let bufs: Vec<_> = (0..KEEP[0] + 5)
            .map(|_| PooledBuf::filled_in(pool, CLASSES[0]))
            .collect();
        drop(bufs);
        assert_eq!(idle(pool, 0), KEEP[0]);
    }
}
