//! Shared by the fuzz targets: an allocator that turns any single allocation larger than
//! [`ALLOCATION_CAP`] into a crash, so "no allocation without a bound" is checked on every input
//! (libFuzzer's own `-malloc_limit_mb` needs a sanitizer's malloc hooks, which the stable,
//! sanitizer-less build this project uses does not have; `-rss_limit_mb` still bounds the total).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

/// The largest single allocation a parser may make on one fuzz input (inputs are at most a few
/// hundred KiB; the biggest legitimate buffers are the image pipeline's 4 MiB decode buffers).
pub const ALLOCATION_CAP: usize = 64 << 20;

/// The system allocator, aborting (a crash libFuzzer records with its input) on any single
/// allocation above [`ALLOCATION_CAP`].
pub struct CappedAlloc;

impl CappedAlloc {
    fn check(size: usize) {
        if size > ALLOCATION_CAP {
            // No allocation here: a fixed message, then abort.
            let _ = std::io::stderr().write_all(b"fuzz: single allocation above the cap\n");
            std::process::abort();
        }
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the contract.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: same layout, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::check(layout.size());
        // SAFETY: same layout, forwarded.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::check(new_size);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Declares [`CappedAlloc`] as the target's global allocator.
#[macro_export]
macro_rules! capped_allocator {
    () => {
        #[global_allocator]
        static ALLOC: $crate::CappedAlloc = $crate::CappedAlloc;
    };
}
