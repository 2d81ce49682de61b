//! mimalloc's purging of freed memory, switched off for training (from the start) and for
//! scoring and evaluation (once the model is loaded: `sightline`'s `keep_freed_memory_from_now`).
//!
//! A training step allocates and frees its activations and gradients anew every step (candle
//! makes a new tensor per op). mimalloc, the global allocator of `sightline` and of the step
//! benchmark, hands freed memory back to the OS after `purge_delay` (1 s in mimalloc 3.3), so
//! the next step faults the same pages in again and the kernel zeroes each one. Keeping freed
//! memory lets later steps reuse it: a full fine-tune step of the 20M bench model went from 0.74×
//! to 0.88× PyTorch's speed (`bench/train_step_vs_torch.py`, two runs each way); on SmolLM2 in
//! f32, +17% (full) and +35% (LoRA) tokens/s for +3% peak RSS (`bench/alloc_before_after.sh`).
//!
//! Why by hand: the `mimalloc` crate exposes `mi_option_set` only under its `extended` feature,
//! which pulls in a crate this workspace does not vendor; the two functions below are mimalloc's
//! stable C API, linked through the `mimalloc` dependency.

use std::os::raw::{c_int, c_long};

extern "C" {
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
    fn mi_collect(force: bool);
}

/// `mi_option_purge_delay`'s value in mimalloc 3.3's `mi_option_t` (libmimalloc-sys 0.1.49,
/// pinned by Cargo.lock). A test checks that the option it names has purge_delay's default
/// (1000 ms), so a renumbering in an upgrade fails there rather than setting another option.
const PURGE_DELAY: c_int = 15;

/// The environment variable with which a user chooses the delay (mimalloc reads it at start).
const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// Tells mimalloc to keep freed memory for reuse instead of returning it to the OS, unless the
/// user set `MIMALLOC_PURGE_DELAY`. Meant for long training loops; harmless where mimalloc is
/// linked but not the global allocator (it then serves no allocation).
pub fn keep_freed_memory() {
    // Referencing the crate keeps libmimalloc-sys (which defines the functions) in the link.
    let _ = mimalloc::MiMalloc;
    if std::env::var_os(PURGE_DELAY_ENV).is_none() {
        // SAFETY: mimalloc's documented API; any option may be set at any time.
        unsafe { mi_option_set(PURGE_DELAY, -1) }
    }
}

/// Hands the memory freed so far back to the OS now (mimalloc's `mi_collect(true)`), e.g. a
/// checkpoint's conversion buffers before [`keep_freed_memory`] would keep them.
pub fn return_freed_memory() {
    let _ = mimalloc::MiMalloc;
    // SAFETY: mimalloc's documented API; callable at any time from any thread.
    unsafe { mi_collect(true) }
}

/// mimalloc's current purge delay in milliseconds (−1: never).
pub fn purge_delay() -> i64 {
    let _ = mimalloc::MiMalloc;
    // SAFETY: mimalloc's documented API.
    unsafe { mi_option_get(PURGE_DELAY) as i64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constant names `purge_delay`: its default is mimalloc 3.3's 1000 ms (no other option
    /// near it defaults to 1000), and setting it reads back.
    #[test]
    fn the_option_set_is_the_purge_delay() {
        if std::env::var_os(PURGE_DELAY_ENV).is_some() {
            return; // the user's value, not the default
        }
        assert_eq!(
            purge_delay(),
            1000,
            "not mimalloc 3.3's purge_delay default"
        );
        keep_freed_memory();
        assert_eq!(purge_delay(), -1);
    }
}
