//! Writes the report of the committed lm-eval fixtures to the directory given as argument (for
//! looking at it: `cargo run -p sightline-report --example write_fixture_report -- /tmp/r`).

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .ok_or("usage: write_fixture_report OUT")?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/report/lm-eval");
    let inputs: Vec<(PathBuf, String)> = ["stories260k", "tiny-base"]
        .iter()
        .map(|m| (root.join(m), m.to_string()))
        .collect();
    let r = sightline_report::build(&inputs, None, &Default::default())?;
    r.write(Path::new(&out))?;
    Ok(())
}
