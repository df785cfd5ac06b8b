//! The global allocator: mimalloc, asked the way a C program asks it.
//!
//! `mimalloc::MiMalloc` passes every Rust allocation to `mi_malloc_aligned(size, align)`. In
//! mimalloc 3 that call has a fast path only for blocks up to 1 KiB: anything larger goes to
//! its generic aligned path, which over-allocates by `align - 1` bytes and aligns inside the block
//! (mimalloc 2 knew that alignments up to 16 need nothing special). Every block mimalloc hands out
//! is already aligned to 8 bytes, and every block of 16 bytes or more to 16 (on x86-64 and aarch64
//! its size classes are multiples of two words and pages start 16-aligned), so for those
//! alignments the plain `mi_malloc` family gives the same guarantee without the detour. A request
//! takes about fourteen such allocations above 1 KiB (request futures, buffers): see
//! `docs/benchmarks.md`, "mimalloc's aligned path".

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};

/// The alignment every mimalloc block of at least this many bytes has (`MI_MAX_ALIGN_SIZE`).
const PLAIN_ALIGN: usize = 16;

/// mimalloc, with plain calls where the alignment asks for nothing more than every block has.
pub struct Allocator;

/// Whether a block of `size` bytes from the plain calls is aligned to `align`: blocks are at least
/// 8-aligned, and 16-aligned from 16 bytes up.
fn plain(size: usize, align: usize) -> bool {
    align <= 8 || (align <= PLAIN_ALIGN && size >= PLAIN_ALIGN)
}

#[expect(unsafe_code, reason = "a global allocator is an unsafe trait; each call forwards to mimalloc")]
// SAFETY: every method forwards to mimalloc, which returns blocks of at least the asked size, aligned
// as `plain` says (or as asked, through the aligned calls), and frees any block it returned.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain FFI calls with a size (and an alignment that is a power of two).
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(layout.size(), layout.align()) {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from mimalloc.
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from mimalloc; the new block keeps the layout's alignment (checked
        // for the new size as for a new block).
        unsafe {
            if plain(new_size, layout.align()) {
                mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the plain calls rely on, checked against mimalloc itself: every size from 1 byte to
    /// 64 KiB (every size class up to there), each with the alignments the plain path takes.
    #[test]
    #[expect(unsafe_code, reason = "calls the allocator directly, as the global allocator API requires")]
    fn plain_blocks_have_the_alignment_asked_for_in_every_size_class() {
        let a = Allocator;
        let mut sizes: Vec<usize> = (1..=4096).collect();
        sizes.extend((4097..=65536).step_by(509));
        for size in sizes {
            for align in [1, 2, 4, 8, 16] {
                let Ok(layout) = Layout::from_size_align(size, align) else { continue };
                // Several blocks of a class, so that more than its first block is looked at.
                let blocks: Vec<*mut u8> = (0..3)
                    // SAFETY: a non-zero size and a valid layout.
                    .map(|_| unsafe { a.alloc(layout) })
                    .collect();
                for &p in &blocks {
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "{size} bytes aligned to {align}: {p:p}");
                }
                for p in blocks {
                    // SAFETY: allocated above with this layout.
                    unsafe { a.dealloc(p, layout) };
                }
            }
        }
    }

    #[test]
    #[expect(unsafe_code, reason = "calls the allocator directly, as the global allocator API requires")]
    fn growing_and_zeroed_blocks_keep_their_alignment_and_contents() {
        let a = Allocator;
        for align in [8, 16, 64, 4096] {
            let layout = Layout::from_size_align(24, align).unwrap();
            // SAFETY: valid layout, non-zero size; the pointer is only used within its size.
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert_eq!(p as usize % align, 0);
                assert!(std::slice::from_raw_parts(p, 24).iter().all(|&b| b == 0));
                p.write_bytes(7, 24);
                let q = a.realloc(p, layout, 5000);
                assert_eq!(q as usize % align, 0, "realloc to 5000 bytes, align {align}");
                assert!(std::slice::from_raw_parts(q, 24).iter().all(|&b| b == 7));
                a.dealloc(q, Layout::from_size_align(5000, align).unwrap());
            }
        }
    }
}
