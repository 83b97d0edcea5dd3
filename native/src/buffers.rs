//! Read buffers that travel from the reader to the writer and back, without copies.
//!
//! A file chunk is read into a [`Part`]'s buffer, the records in it are handed to the store
//! as that same buffer (only the window of whole records is written), and once written the
//! buffer goes back to a small process-wide pool for the next read. The pool keeps the hot
//! path free of allocation and of the page faults a fresh megabyte costs; it is bounded, so
//! what it holds is a fixed amount of memory, not a growing one.

use std::sync::Mutex;

/// Buffers the pool keeps at most (each about one read chunk).
const POOL_MAX: usize = 16;
/// Buffers shorter than this are not worth keeping.
const MIN_POOLED: usize = 64 * 1024;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A window `start..end` of an owned buffer: some bytes of a batch.
#[derive(Debug, Default)]
pub struct Part {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Part {
    /// A part that owns exactly `bytes` (copied).
    pub fn copy_of(bytes: &[u8]) -> Part {
        Part::whole(bytes.to_vec())
    }

    /// A part made of all of `buf`.
    pub fn whole(buf: Vec<u8>) -> Part {
        let end = buf.len();
        Part { buf, start: 0, end }
    }

    /// The window `start..end` of `buf`. Panics if it is out of bounds (a bug in the caller).
    pub fn window(buf: Vec<u8>, start: usize, end: usize) -> Part {
        assert!(
            start <= end && end <= buf.len(),
            "part window out of bounds"
        );
        Part { buf, start, end }
    }

    /// The part without its first `n` bytes (at most all of them).
    pub fn skip(mut self, n: usize) -> Part {
        self.start += n.min(self.len());
        self
    }

    /// The part's first `n` bytes (at most all of them).
    pub fn keep(mut self, n: usize) -> Part {
        self.end = self.start + n.min(self.len());
        self
    }

    /// The bytes of the part.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// How many bytes the part holds.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the part holds no byte.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The part as shared bytes, without a copy (the buffer leaves the pool for good).
    pub fn into_bytes(self) -> bytes::Bytes {
        bytes::Bytes::from(self.buf).slice(self.start..self.end)
    }

    /// Gives the buffer back to the pool.
    pub fn recycle(self) {
        give(self.buf);
    }
}

/// The total length of `parts`.
pub fn total_len(parts: &[Part]) -> usize {
    parts.iter().map(Part::len).sum()
}

/// A buffer of at least `len` bytes (its length, all initialised), reused from the pool when
/// one is long enough. Its content is whatever was there: callers read into `&mut buf[..len]`
/// and keep track of how much they filled. A reused buffer is not cleared, which would cost a
/// pass over it.
pub fn take(len: usize) -> Vec<u8> {
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = pool.iter().position(|b| b.len() >= len) {
        return pool.swap_remove(i);
    }
    // None is long enough: those kept are too short for the reads being made (carried lines,
    // slow-path copies), and would hold their places in the pool for good.
    pool.clear();
    drop(pool);
    vec![0; len]
}

/// Returns a buffer to the pool. Small buffers (the partial lines carried between chunks)
/// are dropped, as is anything beyond the pool's bound.
pub fn give(buf: Vec<u8>) {
    if buf.len() < MIN_POOLED {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < POOL_MAX {
        pool.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_is_its_window() {
        let p = Part::window(b"abcdef".to_vec(), 1, 4);
        assert_eq!(p.as_slice(), b"bcd");
        assert_eq!(p.len(), 3);
        assert!(!p.is_empty());
        assert_eq!(total_len(&[p, Part::copy_of(b"xy")]), 5);
    }

    /// The length of the longest buffer in the pool (0 when empty).
    fn longest_pooled() -> usize {
        let pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        pool.iter().map(Vec::len).max().unwrap_or(0)
    }

    #[test]
    fn short_buffers_do_not_keep_their_places_in_the_pool() {
        // Only this test uses the pool in this process (the others never pool a buffer).
        for _ in 0..POOL_MAX {
            give(vec![0; MIN_POOLED]);
        }
        let long = take(4 * MIN_POOLED);
        assert_eq!(long.len(), 4 * MIN_POOLED);
        give(long);
        // The short ones were dropped when none fitted, so the long one found a place.
        assert_eq!(longest_pooled(), 4 * MIN_POOLED);
        assert_eq!(take(4 * MIN_POOLED).len(), 4 * MIN_POOLED);
    }
}
