//! Recycled buffers for large frames copied out of the ring.
//!
//! Every answer frame is copied out once, into memory its reader owns. For
//! megabyte frames a fresh allocation each time costs a page fault per page
//! (the allocator returns big blocks to the kernel on free), which on a VM
//! costs more than the copy itself. Large copies therefore go into buffers
//! that return here when the last `Bytes` pointing at them is dropped.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::Bytes;

/// Frames smaller than this are copied into ordinary allocations.
const MIN_POOLED: usize = 256 << 10;
/// Buffers kept for reuse.
const KEPT: usize = 4;

#[derive(Debug, Default)]
pub(crate) struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
}

struct Pooled {
    buf: Vec<u8>,
    pool: Weak<Pool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.put(std::mem::take(&mut self.buf));
        }
    }
}

impl Pool {
    /// A copy of `src` the caller owns.
    pub(crate) fn copy(self: &Arc<Self>, src: &[u8]) -> Bytes {
        if src.len() < MIN_POOLED {
            return Bytes::copy_from_slice(src);
        }
        let reused = {
            let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
            free.iter()
                .position(|b| b.capacity() >= src.len())
                .map(|i| free.swap_remove(i))
        };
        let mut buf = reused.unwrap_or_else(|| Vec::with_capacity(src.len()));
        buf.clear();
        buf.extend_from_slice(src);
        Bytes::from_owner(Pooled {
            buf,
            pool: Arc::downgrade(self),
        })
    }

    fn put(&self, buf: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if free.len() < KEPT {
            free.push(buf);
        } else if let Some(smallest) = free
            .iter_mut()
            .min_by_key(|b| b.capacity())
            .filter(|s| s.capacity() < buf.capacity())
        {
            *smallest = buf;
        }
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_copies_reuse_buffers_and_small_ones_do_not() {
        let pool = Arc::new(Pool::default());
        let big = vec![7u8; 1 << 20];
        let a = pool.copy(&big);
        assert_eq!(&a[..], &big[..]);
        let first = a.as_ptr();
        drop(a);
        assert_eq!(pool.kept(), 1);
        let b = pool.copy(&big[..1000 << 10]);
        assert_eq!(b.as_ptr(), first, "the freed buffer is reused");
        assert_eq!(b.len(), 1000 << 10);
        let c = pool.copy(&[1, 2, 3]);
        assert_eq!(&c[..], &[1, 2, 3]);
        drop((b, c));
        assert_eq!(pool.kept(), 1);
    }

    #[test]
    fn at_most_a_few_buffers_are_kept() {
        let pool = Arc::new(Pool::default());
        let big = vec![1u8; MIN_POOLED];
        let held: Vec<Bytes> = (0..10).map(|_| pool.copy(&big)).collect();
        drop(held);
        assert_eq!(pool.kept(), KEPT);
    }
}
