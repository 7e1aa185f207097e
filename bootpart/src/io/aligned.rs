//! A heap buffer whose start is aligned for `O_DIRECT`.

use std::ops::{Deref, DerefMut};

/// A zero-initialised heap buffer whose first byte is aligned to `align` bytes (a power of
/// two), as `O_DIRECT` needs. Built from safe code: the storage is over-allocated by `align`
/// bytes and the slice starts at the first aligned address. Derefs to `[u8]`.
///
/// # Example
///
/// ```
/// use bootpart::io::AlignedBuf;
///
/// let mut buf = AlignedBuf::new(8192, 4096);
/// assert_eq!(buf.as_ptr().addr() % 4096, 0);
/// buf[..5].copy_from_slice(b"hello");
/// assert_eq!(buf.len(), 8192);
/// ```
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
    align: usize,
}

impl AlignedBuf {
    /// A buffer of `len` zero bytes aligned to `align` (rounded up to a power of two, at
    /// least 1).
    pub fn new(len: usize, align: usize) -> AlignedBuf {
        let align = align.max(1).next_power_of_two();
        let storage = vec![0u8; len + align];
        let addr = storage.as_ptr().addr();
        let start = addr.next_multiple_of(align) - addr;
        AlignedBuf {
            storage,
            start,
            len,
            align,
        }
    }

    /// The alignment of the first byte.
    pub fn align(&self) -> usize {
        self.align
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .field("align", &self.align)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_for_many_sizes() {
        for align in [1, 512, 4096, 65536] {
            for len in [0, 1, 511, 4096, 100_000] {
                let b = AlignedBuf::new(len, align);
                assert_eq!(b.as_ptr().addr() % align, 0);
                assert_eq!(b.len(), len);
                assert!(b.iter().all(|&x| x == 0));
                // Moving the buffer keeps the heap storage where it was.
                let moved = Box::new(b);
                assert_eq!(moved.as_ptr().addr() % align, 0);
            }
        }
    }
}
