//! A seeded uniform sample without replacement (and a seeded permutation) whose choice depends
//! on nothing but `(total, n, seed)`, so `sightline data sample -n N --seed S` picks the same
//! records and a training run sees its data in the same order on any machine, with any build
//! (spec T12.4, "a recorded seed"). `sightline_data::sample` and the training data order call
//! it.
//!
//! The algorithm, in full (re-implemented from this description in
//! `scripts/reference/make_data_fixtures.py`, which checks it against the Rust code):
//!
//! 1. If `n >= total`, every record is taken.
//! 2. The random stream is ChaCha20 (the original DJB variant, 64-bit block counter starting at
//!    0, stream id 0) keyed with the 8 little-endian bytes of `seed` followed by 24 zero bytes.
//!    Each 64-bit draw is two consecutive 32-bit keystream words, the first one low.
//! 3. `below(b)` draws a uniform integer in `[0, b)` by rejection: draw `x`; if
//!    `x < 2^64 mod b`, draw again; else return `x mod b`.
//! 4. A partial Fisher–Yates shuffle of `idx = [0, 1, ..., total-1]`: for `i` in `0..n`,
//!    `j = i + below(total - i)`, swap `idx[i]` and `idx[j]`.
//! 5. The sample is `idx[..n]` sorted ascending: records keep their order in the file.
//!
//! ChaCha20 is specified independently of any library (RFC 7539's block function), and the
//! rejection step and the shuffle are written out here rather than taken from `rand`, whose
//! `gen_range`/`shuffle` are not promised to stay value-stable across versions.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The sampler's random stream for `seed` (step 2 above).
pub fn rng(seed: u64) -> ChaCha20Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    ChaCha20Rng::from_seed(key)
}

/// A uniform integer in `[0, bound)` (step 3); `bound` must be positive.
fn below(rng: &mut ChaCha20Rng, bound: u64) -> u64 {
    debug_assert!(bound > 0);
    // 2^64 mod bound, computed without 128-bit arithmetic.
    let reject = bound.wrapping_neg() % bound;
    loop {
        let x = rng.next_u64();
        if x >= reject {
            return x % bound;
        }
    }
}

/// The 0-based indices of the records to keep, ascending.
///
/// ```
/// let picked = sightline_random::chacha::choose(10, 3, 42);
/// assert_eq!(picked.len(), 3);
/// assert!(picked.windows(2).all(|w| w[0] < w[1]) && picked[2] < 10);
/// assert_eq!(picked, sightline_random::chacha::choose(10, 3, 42));
/// ```
pub fn choose(total: usize, n: usize, seed: u64) -> Vec<usize> {
    if n >= total {
        return (0..total).collect();
    }
    let mut rng = rng(seed);
    let mut idx: Vec<usize> = (0..total).collect();
    for i in 0..n {
        let j = i + below(&mut rng, (total - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx.truncate(n);
    idx.sort_unstable();
    idx
}

/// A full permutation of `0..total` by the same stream and shuffle (steps 2–4 run to the end,
/// no sort): the training data order of one epoch.
pub fn permutation(total: usize, seed: u64) -> Vec<usize> {
    let mut rng = rng(seed);
    let mut idx: Vec<usize> = (0..total).collect();
    for i in 0..total.saturating_sub(1) {
        let j = i + below(&mut rng, (total - i) as u64) as usize;
        idx.swap(i, j);
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_seeded_permutation() {
        let p = permutation(50, 7);
        let mut sorted = p.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_eq!(p, permutation(50, 7));
        assert_ne!(p, permutation(50, 8));
        // The first n entries are what `choose` draws (before its sort).
        let mut head = p[..5].to_vec();
        head.sort_unstable();
        assert_eq!(head, choose(50, 5, 7));
    }

    #[test]
    fn chacha20_keystream_is_the_standard_one() {
        // RFC 7539 section 2.3.2 uses a 96-bit nonce; the all-zero key/nonce vector of the
        // original ChaCha20 (draft-agl-tls-chacha20poly1305-04, test vector 1) fits the DJB
        // layout used here: key 0, counter 0, stream 0.
        let mut r = rng(0);
        let first = r.next_u32();
        assert_eq!(first.to_le_bytes(), [0x76, 0xb8, 0xe0, 0xad]);
    }

    #[test]
    fn subset_of_the_right_size() {
        let s = choose(1000, 100, 7);
        assert_eq!(s.len(), 100);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(*s.last().unwrap() < 1000);
        assert_ne!(s, choose(1000, 100, 8));
        assert_eq!(choose(5, 9, 1), vec![0, 1, 2, 3, 4]);
        assert!(choose(0, 3, 1).is_empty());
    }

    #[test]
    fn below_is_unbiased_at_the_edges() {
        let mut r = rng(3);
        assert!((0..100).all(|_| below(&mut r, 1) == 0));
        let big = (1u64 << 63) + 1; // rejects almost half the draws
        assert!((0..100).all(|_| below(&mut r, big) < big));
    }
}
