//! numpy's legacy global random stream (`np.random.seed` / `np.random.RandomState`), so that a
//! corruption run with seed `s` draws the very numbers `np.random.seed(s)` would make
//! hendrycks' functions draw, the image tasks pick numpy's subsets, and the report's paired
//! bootstrap resamples numpy's indices.
//!
//! Ported from numpy's `_mt19937.pyx` (`_legacy_seeding`), `mt19937.c` (through
//! [`crate::mt19937`]), `legacy-distributions.c` (`legacy_gauss`, the polar
//! Box–Muller that caches its second value) and `distributions.c` (`random_poisson_mult`,
//! `random_poisson_ptrs`, `random_loggam`, `random_bounded_uint64_fill` with the masked
//! rejection sampler that legacy `randint` uses). `tests/numpy.rs` checks every stream against
//! numpy's output; the unit tests below hold the image tasks' `choice` vectors.

use crate::mt19937::Mt19937;

/// numpy's `RandomState` (MT19937 and the legacy distributions).
#[derive(Clone)]
pub struct RandomState {
    mt: Mt19937,
    /// The second normal of the last polar Box–Muller pair, returned by the next call.
    gauss: Option<f64>,
}

impl RandomState {
    /// `np.random.seed(seed)`: a seed that fits in 32 bits goes through `mt19937_seed`, as numpy
    /// does for an integer; a larger one is split into its low and high 32-bit words and goes
    /// through `init_by_array`, which is what `np.random.seed([lo, hi])` does (numpy itself
    /// rejects integers of 2³² and more).
    pub fn new(seed: u64) -> Self {
        match u32::try_from(seed) {
            Ok(s) => Self::from_u32(s),
            Err(_) => Self::from_array(&[seed as u32, (seed >> 32) as u32]),
        }
    }

    /// `mt19937_seed` (Knuth's initialiser), used by `np.random.seed(int)`.
    pub fn from_u32(seed: u32) -> Self {
        Self {
            mt: Mt19937::init_genrand(seed),
            gauss: None,
        }
    }

    /// `mt19937_init_by_array`, used by `np.random.seed(array_of_uint32)`.
    pub fn from_array(init: &[u32]) -> Self {
        Self {
            mt: Mt19937::init_by_array(init),
            gauss: None,
        }
    }

    /// One tempered 32-bit output.
    pub fn next_u32(&mut self) -> u32 {
        self.mt.next_u32()
    }

    /// `random_sample()`: a 53-bit double in [0, 1) from two outputs.
    pub fn random_sample(&mut self) -> f64 {
        let a = self.next_u32() >> 5;
        let b = self.next_u32() >> 6;
        (f64::from(a) * 67_108_864.0 + f64::from(b)) / 9_007_199_254_740_992.0
    }

    /// `uniform(low, high)`: `low + (high - low) * random_sample()`.
    pub fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.random_sample()
    }

    /// `standard_normal()`: legacy polar Box–Muller; each pair's second value is cached and
    /// returned by the next call.
    pub fn standard_normal(&mut self) -> f64 {
        if let Some(g) = self.gauss.take() {
            return g;
        }
        let (x1, x2, r2) = loop {
            let x1 = 2.0 * self.random_sample() - 1.0;
            let x2 = 2.0 * self.random_sample() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                break (x1, x2, r2);
            }
        };
        let f = (-2.0 * r2.ln() / r2).sqrt();
        self.gauss = Some(f * x1);
        f * x2
    }

    /// `normal(loc, scale)`: `loc + scale * standard_normal()`.
    pub fn normal(&mut self, loc: f64, scale: f64) -> f64 {
        loc + scale * self.standard_normal()
    }

    /// `poisson(lam)` for `lam ≥ 0` (numpy raises on a negative or NaN rate; the corruptions
    /// only pass `x·c ≥ 0`, and a bad rate gives 0 here).
    pub fn poisson(&mut self, lam: f64) -> i64 {
        if lam >= 10.0 {
            self.poisson_ptrs(lam)
        } else if lam > 0.0 {
            // Knuth's multiplication method.
            let enlam = (-lam).exp();
            let (mut x, mut prod) = (0i64, 1.0f64);
            loop {
                prod *= self.random_sample();
                if prod > enlam {
                    x += 1;
                } else {
                    return x;
                }
            }
        } else {
            0
        }
    }

    /// Hörmann's transformed rejection with squeeze (PTRS), as numpy has it.
    fn poisson_ptrs(&mut self, lam: f64) -> i64 {
        let slam = lam.sqrt();
        let loglam = lam.ln();
        let b = 0.931 + 2.53 * slam;
        let a = -0.059 + 0.02483 * b;
        let invalpha = 1.1239 + 1.1328 / (b - 3.4);
        let vr = 0.9277 - 3.6224 / (b - 2.0);
        loop {
            let u = self.random_sample() - 0.5;
            let v = self.random_sample();
            let us = 0.5 - u.abs();
            let k = ((2.0 * a / us + b) * u + lam + 0.43).floor() as i64;
            if us >= 0.07 && v <= vr {
                return k;
            }
            if k < 0 || (us < 0.013 && v > us) {
                continue;
            }
            if v.ln() + invalpha.ln() - (a / (us * us) + b).ln()
                <= -lam + k as f64 * loglam - loggam(k as f64 + 1.0)
            {
                return k;
            }
        }
    }

    /// Legacy `randint(low, high)` (high exclusive) for the default int64 dtype: the masked
    /// rejection sampler on 32-bit outputs when the range fits in 32 bits, which it always does
    /// for the corruptions' small ranges. Returns `low` when `high <= low + 1`.
    pub fn randint(&mut self, low: i64, high: i64) -> i64 {
        let rng = (high - 1).saturating_sub(low);
        if rng <= 0 {
            return low;
        }
        let rng = rng as u64;
        if rng > u64::from(u32::MAX) {
            // Not reached by any corruption; numpy's 64-bit path draws two words per try.
            let mask = mask_for(rng);
            loop {
                let v = ((u64::from(self.next_u32()) << 32) | u64::from(self.next_u32())) & mask;
                if v <= rng {
                    return low + v as i64;
                }
            }
        }
        let mask = mask_for(rng) as u32;
        loop {
            let v = self.next_u32() & mask;
            if u64::from(v) <= rng {
                return low + i64::from(v);
            }
        }
    }
}

impl RandomState {
    /// Legacy `choice(n, k, replace=False)` = `permutation(n)[:k]`: `shuffle` of `0..n` from the
    /// end, each swap partner drawn by `random_interval(i)`, the same masked rejection as
    /// [`RandomState::randint`]`(0, i + 1)`.
    pub fn choice_without_replacement(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut a: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.randint(0, i as i64 + 1) as usize;
            a.swap(i, j);
        }
        a.truncate(k);
        a
    }
}

/// The smallest `2^k − 1` that is `>= rng`.
fn mask_for(rng: u64) -> u64 {
    let mut m = rng;
    m |= m >> 1;
    m |= m >> 2;
    m |= m >> 4;
    m |= m >> 8;
    m |= m >> 16;
    m |= m >> 32;
    m
}

/// numpy's `random_loggam`: log Γ(x) by Stirling's series after shifting x up to 7.
fn loggam(x: f64) -> f64 {
    const A: [f64; 10] = [
        8.333_333_333_333_333e-02,
        -2.777_777_777_777_778e-03,
        7.936_507_936_507_937e-04,
        -5.952_380_952_380_952e-04,
        8.417_508_417_508_418e-04,
        -1.917_526_917_526_918e-03,
        6.410_256_410_256_41e-03,
        -2.955_065_359_477_124e-02,
        1.796_443_723_688_307e-01,
        -1.392_432_216_905_90e+00,
    ];
    if x == 1.0 || x == 2.0 {
        return 0.0;
    }
    let n = if x < 7.0 { (7.0 - x) as i64 } else { 0 };
    let mut x0 = x + n as f64;
    let x2 = (1.0 / x0) * (1.0 / x0);
    let lg2pi = 1.837_877_066_409_345_3; // log(2π)
    let mut gl0 = A[9];
    for k in (0..9).rev() {
        gl0 *= x2;
        gl0 += A[k];
    }
    let mut gl = gl0 / x0 + 0.5 * lg2pi + (x0 - 0.5) * x0.ln() - x0;
    if x < 7.0 {
        for _ in 1..=n {
            gl -= (x0 - 1.0).ln();
            x0 -= 1.0;
        }
    }
    gl
}
