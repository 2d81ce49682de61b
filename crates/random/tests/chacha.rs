//! The ChaCha20 sampler against an independent Python implementation of the algorithm in
//! [`sightline_random::chacha`] (`scripts/reference/make_data_fixtures.py`, which writes
//! `tests/fixtures/data/sample.json`).

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::Value;
use sightline_random::chacha;

fn fixture(name: &str) -> Result<Value> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/data")
        .join(name);
    Ok(serde_json::from_slice(
        &std::fs::read(&p).with_context(|| p.display().to_string())?,
    )?)
}

#[test]
fn sampler_matches_an_independent_chacha20() -> Result<()> {
    for case in fixture("sample.json")?.as_array().context("cases")? {
        let (total, n, seed) = (
            case["total"].as_u64().context("total")? as usize,
            case["n"].as_u64().context("n")? as usize,
            case["seed"].as_u64().context("seed")?,
        );
        let want: Vec<usize> = case["indices"]
            .as_array()
            .context("indices")?
            .iter()
            .map(|i| i.as_u64().context("index").map(|i| i as usize))
            .collect::<Result<_>>()?;
        assert_eq!(
            chacha::choose(total, n, seed),
            want,
            "total {total} n {n} seed {seed}"
        );
    }
    Ok(())
}
