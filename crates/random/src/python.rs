//! CPython's `random.Random` (MT19937), reproduced bit for bit where the harness depends on it:
//! the seed-42 document shuffle that decides which docs `--limit` takes, ETHICS
//! utilitarianism's `random.Random(activity_string)` scenario order, and (for VQAv2 and the
//! caption tasks) `random.sample`. numpy's legacy `RandomState`, which those tasks also draw from,
//! is [`crate::numpy::RandomState`]; both share [`Mt19937`].
//!
//! Reference: CPython 3.11 `Modules/_randommodule.c` (`init_by_array`, `genrand_uint32`,
//! `random_seed` for int and str/bytes seeds, version 2) and `Lib/random.py`
//! (`_randbelow_with_getrandbits`, `shuffle`).

use crate::mt19937::Mt19937;
use sha2::{Digest, Sha512};

/// A Mersenne Twister seeded exactly as `random.Random(seed)`.
pub struct PyRandom {
    mt: Mt19937,
}

impl PyRandom {
    fn from_key(key: &[u32]) -> Self {
        Self {
            mt: Mt19937::init_by_array(key),
        }
    }

    /// `random.Random(n)` for a non-negative int: the key is `n` in 32-bit words, least
    /// significant first.
    pub fn from_int(n: u64) -> Self {
        let lo = n as u32;
        let hi = (n >> 32) as u32;
        if hi == 0 {
            Self::from_key(&[lo])
        } else {
            Self::from_key(&[lo, hi])
        }
    }

    /// `random.Random(s)` for a str (seed version 2): the int
    /// `from_bytes(utf8 + sha512(utf8), "big")`, as 32-bit words least significant first.
    pub fn from_str_seed(s: &str) -> Self {
        let mut bytes = s.as_bytes().to_vec();
        bytes.extend_from_slice(&Sha512::digest(s.as_bytes()));
        // Big-endian bytes -> little-endian 32-bit words, dropping high zero words.
        let mut words: Vec<u32> = bytes
            .rchunks(4)
            .map(|c| c.iter().fold(0u32, |acc, &b| (acc << 8) | b as u32))
            .collect();
        while words.len() > 1 && words.last() == Some(&0) {
            words.pop();
        }
        Self::from_key(&words)
    }

    /// `genrand_uint32`: the next tempered 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        self.mt.next_u32()
    }

    /// `getrandbits(k)` for `1 <= k <= 32`.
    pub fn getrandbits(&mut self, k: u32) -> u32 {
        self.next_u32() >> (32 - k)
    }

    /// `_randbelow(n)` (rejection sampling on `n.bit_length()` bits), `1 <= n < 2^32`.
    pub fn randbelow(&mut self, n: u32) -> u32 {
        let k = 32 - n.leading_zeros();
        loop {
            let r = self.getrandbits(k);
            if r < n {
                return r;
            }
        }
    }

    /// `random.sample(range(n), k)` for `n > 21` and `k <= 5` (CPython's set-selection branch:
    /// `randbelow(n)`, redrawn on repeats); other sizes take the pool branch, not reproduced.
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Option<Vec<usize>> {
        if n <= 21 || k > 5 || n > u32::MAX as usize {
            return None;
        }
        let mut out: Vec<usize> = Vec::with_capacity(k);
        for _ in 0..k {
            let mut j = self.randbelow(n as u32) as usize;
            while out.contains(&j) {
                j = self.randbelow(n as u32) as usize;
            }
            out.push(j);
        }
        Some(out)
    }

    /// `random.sample(range(n), k)` for any `k <= n < 2^32`: CPython's pool branch when `n` is
    /// at most its small-set size (21, plus `4 ** ceil(log(3k, 4))` when `k > 5`), else the
    /// set branch (redraw on repeats). `None` when `k > n`.
    pub fn sample(&mut self, n: usize, k: usize) -> Option<Vec<usize>> {
        if k > n || n > u32::MAX as usize {
            return None;
        }
        let mut setsize = 21usize;
        if k > 5 {
            // `_ceil(_log(k * 3, 4))`: float log with base, as CPython computes it.
            let e = ((k as f64 * 3.0).ln() / 4f64.ln()).ceil() as u32;
            setsize += 4usize.pow(e);
        }
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            let mut out = Vec::with_capacity(k);
            for i in 0..k {
                let j = self.randbelow((n - i) as u32) as usize;
                out.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
            return Some(out);
        }
        let mut seen = std::collections::HashSet::with_capacity(k);
        let mut out = Vec::with_capacity(k);
        for _ in 0..k {
            let mut j = self.randbelow(n as u32) as usize;
            while seen.contains(&j) {
                j = self.randbelow(n as u32) as usize;
            }
            seen.insert(j);
            out.push(j);
        }
        Some(out)
    }

    /// `shuffle(x)`: Fisher–Yates from the end.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.randbelow(i as u32 + 1) as usize;
            x.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::numpy::RandomState;

    // Test vectors: shared spec lm-eval-scoring.md item 29 and ethics.md item 14 (CPython 3.x).
    #[test]
    fn seed_42_matches_cpython() {
        let mut r = PyRandom::from_int(42);
        assert_eq!(
            [r.next_u32(), r.next_u32(), r.next_u32()],
            [2746317213, 478163327, 107420369]
        );
        let mut v: Vec<u32> = (0..10).collect();
        PyRandom::from_int(42).shuffle(&mut v);
        assert_eq!(v, [7, 3, 2, 8, 5, 6, 9, 4, 0, 1]);
    }

    /// Test vectors of `spec/multimodal-eval.md` E2.
    #[test]
    fn numpy_choice_and_python_sample_match_the_spec_vectors() {
        let a = RandomState::from_u32(42).choice_without_replacement(214_354, 7048);
        assert_eq!(a.len(), 7048);
        assert_eq!(
            &a[..8],
            &[69992, 184029, 131715, 5308, 62682, 4210, 58099, 198231]
        );
        assert_eq!(
            &a[2048..2054],
            &[97523, 35728, 173064, 45734, 169516, 193443]
        );
        let mut r = PyRandom::from_int(42);
        let three: Vec<Vec<usize>> = (0..3).map(|_| r.sample_indices(2048, 3).unwrap()).collect();
        assert_eq!(
            three,
            vec![
                vec![456, 102, 1126],
                vec![1003, 914, 571],
                vec![419, 356, 1728]
            ]
        );
        assert!(r.sample_indices(10, 3).is_none());
        // numpy 2.x: np.random.seed(42); np.random.choice(20000, 5000, replace=False)[:3], then
        // eight np.random.choice(['a','b','c','d','e']).
        let mut np = RandomState::from_u32(42);
        assert_eq!(
            &np.choice_without_replacement(20_000, 5000)[..3],
            &[10650, 2041, 8668]
        );
        let picks: Vec<usize> = (0..8).map(|_| np.randint(0, 5) as usize).collect();
        assert_eq!(picks, [4, 3, 2, 4, 1, 0, 0, 0]);
    }

    #[test]
    fn gsm8k_shuffle_vector() {
        let mut docs: Vec<u32> = (0..1319).collect();
        PyRandom::from_int(42).shuffle(&mut docs);
        assert_eq!(&docs[..5], &[588, 1214, 57, 906, 1252]);
    }

    /// Test vectors: shared spec lm-eval-scoring.md item 29 (the 8-sample takes the set branch
    /// with set size 85) and CPython 3.11 for the pool branch (`Random(42).sample(range(20), 8)`).
    #[test]
    fn sample_matches_cpython_both_branches() {
        let mut r = PyRandom::from_int(42);
        assert_eq!(
            r.sample(7473, 8).unwrap(),
            [5238, 912, 204, 6074, 2253, 2006, 1828, 1143]
        );
        assert_eq!(
            PyRandom::from_int(42).sample(20, 8).unwrap(),
            [3, 0, 8, 7, 16, 2, 11, 1]
        );
        assert!(PyRandom::from_int(42).sample(3, 4).is_none());
        // The harness's pipelines: shuffle the test docs, then draw from the same stream.
        let mut r = PyRandom::from_int(42);
        let mut docs: Vec<u32> = (0..1319).collect();
        r.shuffle(&mut docs);
        assert_eq!(
            r.sample(7473, 8).unwrap(),
            [7268, 4403, 1111, 3183, 3716, 3039, 5492, 6087]
        );
        assert_eq!(
            r.sample(7473, 8).unwrap(),
            [5705, 4425, 3433, 4811, 6080, 5952, 1265, 7253]
        );
        let mut r = PyRandom::from_int(42);
        let mut docs: Vec<u32> = (0..2985).collect();
        r.shuffle(&mut docs);
        assert_eq!(&docs[..5], &[1514, 87, 1172, 885, 645]);
        assert_eq!(r.sample(29837, 4).unwrap(), [14322, 7606, 27481, 2490]);
        assert_eq!(r.sample(29837, 4).unwrap(), [11160, 19830, 25198, 20115]);
    }

    #[test]
    fn string_seeds_match_cpython() {
        let order = |s: &str| {
            let mut o = [0, 1];
            PyRandom::from_str_seed(s).shuffle(&mut o);
            o
        };
        assert_eq!(order("I walked in the park this afternoon."), [0, 1]);
        assert_eq!(order("I walked in the parking lot this afternoon."), [1, 0]);
        assert_eq!(order("abc"), [0, 1]);
        assert_eq!(
            order("If I mow my neighbor's lawn I will get paid."),
            [1, 0]
        );
        assert_eq!(order("My mummy bought me a food flask last year "), [1, 0]);
        assert_eq!(
            order("I applied to adopt the child I was fostering and was quickly approved."),
            [0, 1]
        );
    }
}
