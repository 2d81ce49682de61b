//! Per-pixel noise: gaussian, shot (Poisson), impulse (salt and pepper) and speckle. Each draws
//! one number per element in numpy's C order (row, column, channel).

use sightline_random::RandomState;

use crate::Img;

const GAUSSIAN_SIGMA: [f64; 5] = [0.08, 0.12, 0.18, 0.26, 0.38];
const SHOT_RATE: [f64; 5] = [60.0, 25.0, 12.0, 5.0, 3.0];
const IMPULSE_AMOUNT: [f64; 5] = [0.03, 0.06, 0.09, 0.17, 0.27];
const SPECKLE_SIGMA: [f64; 5] = [0.15, 0.2, 0.35, 0.45, 0.6];

/// `x + np.random.normal(size=x.shape, scale=σ)`.
pub fn gaussian(x: &Img, s: usize, rng: &mut RandomState) -> Img {
    let sigma = GAUSSIAN_SIGMA[s];
    map(x, |v| v + rng.normal(0.0, sigma))
}

/// `np.random.poisson(x * c) / c`.
pub fn shot(x: &Img, s: usize, rng: &mut RandomState) -> Img {
    let c = SHOT_RATE[s];
    map(x, |v| rng.poisson(v * c) as f64 / c)
}

/// `x + x * np.random.normal(size=x.shape, scale=σ)`.
pub fn speckle(x: &Img, s: usize, rng: &mut RandomState) -> Img {
    let sigma = SPECKLE_SIGMA[s];
    map(x, |v| v + v * rng.normal(0.0, sigma))
}

/// skimage `random_noise(x, mode='s&p', amount=a)`: each element is replaced with probability
/// `a`, by 1 or 0 with equal odds.
///
/// skimage draws these from its own `np.random.default_rng` (PCG64), not from numpy's legacy
/// global stream, so the pixels cannot match the reference for a given seed; the flip and salt
/// decisions are drawn here from [`RandomState`] (two `random_sample`s per element, flip first)
/// and the test compares statistics.
pub fn impulse(x: &Img, s: usize, rng: &mut RandomState) -> Img {
    let amount = IMPULSE_AMOUNT[s];
    map(x, |v| {
        let flipped = rng.random_sample() < amount;
        let salted = rng.random_sample() < 0.5;
        match (flipped, salted) {
            (true, true) => 1.0,
            (true, false) => 0.0,
            _ => v,
        }
    })
}

fn map(x: &Img, mut f: impl FnMut(f64) -> f64) -> Img {
    Img {
        data: x.data.iter().map(|&v| f(v)).collect(),
        ..*x
    }
}
