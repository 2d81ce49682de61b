//! `sightline data sample -n N --seed S` and the training data order: a uniform sample without
//! replacement (records kept in file order) and a full permutation that depend on nothing but
//! `(total, n, seed)`, so the same command picks the same records on any machine, with any build
//! (spec T12.4, "a recorded seed").
//!
//! The generator and the algorithm, written out step by step with its test vectors, live in
//! [`sightline_random::chacha`]; this module names them where the data commands (and the
//! training run's recorded `data_order.json`, `sightline_data::sample::permutation`) look.
//!
//! ```
//! let picked = sightline_data::sample::choose(10, 3, 42);
//! assert_eq!(picked, sightline_random::chacha::choose(10, 3, 42));
//! ```

pub use sightline_random::chacha::{choose, permutation};
