//! `sightline-random`: the random streams sightline must draw exactly as the reference tools do,
//! on any machine, with any build. Nothing here comes from `rand`'s value-unstable
//! distributions: each generator is written out from its reference and checked against it.
//!
//! - [`mt19937::Mt19937`]: the Mersenne Twister under both Python streams below.
//! - [`numpy::RandomState`]: numpy's legacy `np.random.seed`/`RandomState` stream and
//!   distributions (ImageNet-C corruptions, the image tasks' subsets, the report's bootstrap).
//! - [`python::PyRandom`]: CPython's `random.Random` (lm-eval's document shuffle, ETHICS
//!   scenario order, few-shot and demo sampling).
//! - [`chacha`]: a ChaCha20 uniform sample and permutation specified here in full
//!   (`sightline data sample`, the training data order).
//!
//! ```
//! use sightline_random::{PyRandom, RandomState};
//! let mut v: Vec<u32> = (0..10).collect();
//! PyRandom::from_int(42).shuffle(&mut v); // random.Random(42).shuffle(v)
//! assert_eq!(v, [7, 3, 2, 8, 5, 6, 9, 4, 0, 1]);
//! // np.random.RandomState(42).choice(20000, 5000, replace=False)[:3]
//! let picked = RandomState::from_u32(42).choice_without_replacement(20_000, 5000);
//! assert_eq!(&picked[..3], &[10650, 2041, 8668]);
//! ```

#![deny(missing_docs)]

pub mod chacha;
pub mod mt19937;
pub mod numpy;
pub mod python;

pub use mt19937::Mt19937;
pub use numpy::RandomState;
pub use python::PyRandom;
