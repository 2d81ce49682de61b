//! The fuzz targets' allocator (feature `capped-alloc`, switched on by `fuzz/Cargo.toml`): the
//! system allocator, aborting on any single request over [`CAP`] bytes.
//!
//! libFuzzer's `-rss_limit_mb` only sees memory that is touched, and its `-malloc_limit_mb`
//! needs a sanitizer's allocator hooks; the targets are built without a sanitizer (see
//! FUZZING.md), so a hostile size that reaches `vec![0; n]` (calloc'd, untouched) would go
//! unnoticed. This cap turns it into a crash that libFuzzer records with its input.

use std::alloc::{GlobalAlloc, Layout, System};

/// The bound on what one input may make sightline allocate: 2 GiB.
pub const CAP: usize = 2 << 30;

struct Capped;

fn check(layout: &Layout) {
    if layout.size() > CAP {
        // No allocation is possible here, so no formatting: a fixed message and abort.
        let msg = b"sightline-fuzzing: one allocation of more than 2 GiB; aborting\n";
        // SAFETY: writing a static buffer to stderr (fd 2) has no preconditions.
        unsafe { libc_write(2, msg.as_ptr(), msg.len()) };
        std::process::abort();
    }
}

extern "C" {
    #[link_name = "write"]
    fn libc_write(fd: i32, buf: *const u8, count: usize) -> isize;
}

// SAFETY: every call is forwarded to the system allocator unchanged; `check` only aborts.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(&layout);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(&layout);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(&Layout::from_size_align_unchecked(new_size, layout.align()));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Capped = Capped;
