//! Times one forward pass of a model over `t` tokens: `cargo run --release --example forward_timing -- [MODEL] [T]`.
use std::time::Instant;

use candle_core::Tensor;
use sightline_model::{load, LoadOptions};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let spec = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("builtin:stories260k");
    let t: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(280);
    let m = load(spec, &LoadOptions::default())?;
    let ids: Vec<u32> = (0..t as u32).map(|i| 3 + i % 500).collect();
    let ids = Tensor::from_vec(ids, (1, t), m.model.device())?;
    for _ in 0..std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
    {
        let start = Instant::now();
        let h = m.model.forward_hidden(&ids, None)?;
        let _ = h.sum_all()?.to_scalar::<f32>()?;
        println!(
            "forward_hidden over {t} tokens: {:.2} ms",
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}
