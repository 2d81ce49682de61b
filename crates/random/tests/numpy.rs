//! numpy's legacy `RandomState` streams, element for element: the seeding (first state words),
//! raw 32-bit outputs, `random_sample`, the cached polar Box–Muller normals, `uniform`,
//! `poisson` on both of numpy's algorithms (multiplication below 10, PTRS from 10), and
//! `randint`'s masked rejection. Goldens from `scripts/reference/make_corrupt_fixtures.py`
//! (numpy 2.4.6) in `tests/fixtures/corrupt/golden.json`.

use serde_json::Value;
use sightline_random::RandomState;

fn golden() -> Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/corrupt/golden.json"
    );
    let text = std::fs::read_to_string(p).expect("golden.json (run make_corrupt_fixtures.py)");
    serde_json::from_str::<Value>(&text).expect("valid JSON")["rng"].clone()
}

/// Floats stored as their u64 bit patterns (JSON number parsing may round the last bit).
fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| f64::from_bits(x.as_u64().expect("u64 bit pattern")))
        .collect()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("integer"))
        .collect()
}

/// Every draw equals numpy's bit for bit (floats compared with `==`, not a tolerance): the
/// noise corruptions depend on it.
#[test]
fn streams_equal_numpy() {
    let g = golden();
    for seed in [0u64, 1, 42, 123_456_789] {
        let e = &g[seed.to_string()];
        let mut r = RandomState::new(seed);
        let u32s: Vec<i64> = (0..5).map(|_| i64::from(r.next_u32())).collect();
        assert_eq!(u32s, ints(&e["u32"]), "seed {seed}: raw outputs");
        let rs: Vec<f64> = (0..5).map(|_| r.random_sample()).collect();
        assert_eq!(
            rs,
            floats(&e["random_sample"]),
            "seed {seed}: random_sample"
        );
        let sn: Vec<f64> = (0..7).map(|_| r.standard_normal()).collect();
        assert_eq!(
            sn,
            floats(&e["standard_normal"]),
            "seed {seed}: standard_normal"
        );
        let after = vec![r.uniform(-45.0, 45.0), r.standard_normal()];
        assert_eq!(
            after,
            floats(&e["after_uniform"]),
            "seed {seed}: cached normal"
        );
        let lams: Vec<f64> = e["poisson_lams"]
            .as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().expect("number"))
            .collect();
        let p: Vec<i64> = lams
            .iter()
            .flat_map(|&l| (0..6).map(|_| r.poisson(l)).collect::<Vec<_>>())
            .collect();
        assert_eq!(p, ints(&e["poisson"]), "seed {seed}: poisson");
        let ri: Vec<i64> = (0..12).map(|_| r.randint(-3, 3)).collect();
        assert_eq!(ri, ints(&e["randint_-3_3"]), "seed {seed}: randint(-3, 3)");
        let r5: Vec<i64> = (0..6).map(|_| r.randint(0, 5)).collect();
        assert_eq!(r5, ints(&e["randint_5"]), "seed {seed}: randint(5)");
        let r376: Vec<i64> = (0..6).map(|_| r.randint(0, 376)).collect();
        assert_eq!(
            r376,
            ints(&e["randint_0_376"]),
            "seed {seed}: randint(0, 376)"
        );
    }
}

/// A seed of 2³² or more is split into `[lo, hi]` for `init_by_array`, as
/// `np.random.seed([lo, hi])`.
#[test]
fn large_seed_uses_init_by_array() {
    let g = golden();
    let seed = (1u64 << 32) + 5;
    let e = &g[seed.to_string()];
    let mut r = RandomState::new(seed);
    let rs: Vec<f64> = (0..5).map(|_| r.random_sample()).collect();
    assert_eq!(rs, floats(&e["random_sample"]));
}
