//! The binary's global allocator: the system allocator plus a small cache of
//! large blocks.
//!
//! A training step allocates the same large buffers every time (im2col
//! columns of tens of MB, activations, gradients) and frees them at the end.
//! glibc serves blocks above its mmap threshold (at most 32 MB) with a fresh
//! mmap and returns them with munmap, so every step page-faults its whole
//! working set back in: on the 2-core CI machine that was ~50,000 page faults
//! and about a fifth of the CPU time of an MLA step. Keeping freed large
//! blocks and handing them back for the next request of the same size and
//! alignment removes that. The cache is bounded in blocks and bytes; beyond
//! that the oldest blocks go back to the system.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;

/// Blocks at least this large are cached.
const LARGE: usize = 1 << 20;
/// At most this many cached blocks...
const SLOTS: usize = 64;
/// ...holding at most this many bytes.
const MAX_BYTES: usize = 384 << 20;

#[derive(Clone, Copy)]
struct Block {
    ptr: *mut u8,
    size: usize,
    align: usize,
}

/// Free blocks in insertion order (oldest first), in a fixed array: the
/// allocator must not allocate.
struct Cache {
    blocks: [Block; SLOTS],
    len: usize,
    bytes: usize,
}

// SAFETY: the pointers are owned, unused memory blocks; moving them between
// threads is fine.
unsafe impl Send for Cache {}

impl Cache {
    const fn new() -> Self {
        Cache {
            blocks: [Block {
                ptr: std::ptr::null_mut(),
                size: 0,
                align: 0,
            }; SLOTS],
            len: 0,
            bytes: 0,
        }
    }

    /// Takes a cached block of exactly this layout (the most recent one).
    fn take(&mut self, layout: Layout) -> Option<*mut u8> {
        let i = (0..self.len).rev().find(|&i| {
            self.blocks[i].size == layout.size() && self.blocks[i].align == layout.align()
        })?;
        let b = self.blocks[i];
        self.blocks.copy_within(i + 1..self.len, i);
        self.len -= 1;
        self.bytes -= b.size;
        Some(b.ptr)
    }

    /// Stores a freed block; returns the blocks evicted to make room (to be
    /// freed by the caller outside the lock), or the block itself if it
    /// cannot be kept.
    fn put(&mut self, b: Block, evicted: &mut [Block; SLOTS]) -> usize {
        if b.size > MAX_BYTES {
            evicted[0] = b;
            return 1;
        }
        let mut n = 0;
        while self.len == SLOTS || self.bytes + b.size > MAX_BYTES {
            evicted[n] = self.blocks[0];
            self.bytes -= self.blocks[0].size;
            self.blocks.copy_within(1..self.len, 0);
            self.len -= 1;
            n += 1;
        }
        self.blocks[self.len] = b;
        self.len += 1;
        self.bytes += b.size;
        n
    }
}

pub struct CachingAlloc {
    cache: Mutex<Cache>,
}

impl CachingAlloc {
    pub const fn new() -> Self {
        CachingAlloc {
            cache: Mutex::new(Cache::new()),
        }
    }

    fn take(&self, layout: Layout) -> Option<*mut u8> {
        self.cache.lock().ok()?.take(layout)
    }
}

unsafe impl GlobalAlloc for CachingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LARGE {
            if let Some(p) = self.take(layout) {
                return p;
            }
        }
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LARGE {
            if let Some(p) = self.take(layout) {
                // Zeroing resident memory is much cheaper than faulting in fresh pages.
                std::ptr::write_bytes(p, 0, layout.size());
                return p;
            }
        }
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() < LARGE {
            return System.dealloc(ptr, layout);
        }
        let mut evicted = [Block {
            ptr: std::ptr::null_mut(),
            size: 0,
            align: 0,
        }; SLOTS];
        let n = match self.cache.lock() {
            Ok(mut c) => c.put(
                Block {
                    ptr,
                    size: layout.size(),
                    align: layout.align(),
                },
                &mut evicted,
            ),
            Err(_) => return System.dealloc(ptr, layout),
        };
        for b in &evicted[..n] {
            System.dealloc(b.ptr, Layout::from_size_align_unchecked(b.size, b.align));
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() < LARGE && new_size < LARGE {
            return System.realloc(ptr, layout, new_size);
        }
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        let p = self.alloc(new_layout);
        if !p.is_null() {
            std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake address for bookkeeping tests (never dereferenced).
    fn addr(i: usize) -> *mut u8 {
        (i * 4096) as *mut u8
    }

    fn block(i: usize, size: usize) -> Block {
        Block {
            ptr: addr(i),
            size,
            align: 8,
        }
    }

    #[test]
    fn exact_layouts_are_reused_most_recent_first() {
        let mut c = Cache::new();
        let mut ev = [block(0, 0); SLOTS];
        assert_eq!(c.put(block(1, LARGE), &mut ev), 0);
        assert_eq!(c.put(block(2, 2 * LARGE), &mut ev), 0);
        assert_eq!(c.put(block(3, LARGE), &mut ev), 0);
        let l = Layout::from_size_align(LARGE, 8).unwrap();
        assert_eq!(c.take(l), Some(addr(3)));
        assert_eq!(c.take(l), Some(addr(1)));
        assert_eq!(c.take(l), None);
        assert_eq!(
            c.take(Layout::from_size_align(2 * LARGE, 16).unwrap()),
            None
        );
        assert_eq!(c.bytes, 2 * LARGE);
    }

    #[test]
    fn bounds_evict_the_oldest_blocks() {
        let mut c = Cache::new();
        let mut ev = [block(0, 0); SLOTS];
        for i in 0..SLOTS {
            assert_eq!(c.put(block(i + 1, LARGE), &mut ev), 0);
        }
        assert_eq!(c.put(block(100, LARGE), &mut ev), 1);
        assert_eq!(ev[0].ptr, addr(1));
        // A block that would overflow the byte budget pushes out enough old ones.
        let n = c.put(block(200, MAX_BYTES - 10 * LARGE), &mut ev);
        assert!(c.bytes <= MAX_BYTES && n > 0);
        // A block larger than the whole budget is handed straight back.
        assert_eq!(c.put(block(300, MAX_BYTES + 1), &mut ev), 1);
        assert_eq!(ev[0].ptr, addr(300));
    }
}
