//! Writes a report for looking at it: of the committed lm-eval fixtures, or of `DIR=LABEL`
//! arguments (`cargo run -p sightline-report --example write_fixture_report -- /tmp/r [DIR=LABEL...]`).

use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .ok_or("usage: write_fixture_report OUT [DIR=LABEL...]")?;
    let mut inputs: Vec<(PathBuf, String)> = args
        .map(|a| {
            let (d, l) = a.rsplit_once('=').ok_or("expected DIR=LABEL")?;
            Ok::<_, &str>((PathBuf::from(d), l.to_string()))
        })
        .collect::<Result<_, _>>()?;
    if inputs.is_empty() {
        let root =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/report/lm-eval");
        inputs = ["stories260k", "tiny-base"]
            .iter()
            .map(|m| (root.join(m), m.to_string()))
            .collect();
    }
    let r = sightline_report::build(&inputs, None, &Default::default())?;
    r.write(Path::new(&out))?;
    Ok(())
}
