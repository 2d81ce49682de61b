//! `sightline data stats`: counts and token-length histograms.

#[allow(unused_imports)]
use super::*;

#[derive(ClapArgs)]
pub struct StatsArgs {
    /// LLaVA-format files (JSON array or JSON Lines); each gets its own report.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    tok: TokenizerArgs,
    /// Print JSON (one object per file) instead of a table.
    #[arg(long)]
    json: bool,
}

pub(super) fn run_stats(a: StatsArgs) -> Result<()> {
    let template = Template::new(&a.tok.template)?;
    let tokenizer = match &a.tok.tokenizer {
        Some(spec) => Some(load_tokenizer(spec, &template, !a.tok.no_im_start_end)?),
        None => None,
    };
    let pre = tokenizer
        .as_ref()
        .map(|t| Preprocess::new(t, template.clone(), a.tok.options(&template, t)));
    for path in &a.files {
        let mut s = Stats::default();
        stream::for_each(path, |_, v| {
            s.add(&v);
            if let Some(pre) = &pre {
                let sample = Record::from_value(&v)
                    .ok()
                    .and_then(|r| pre.sample(&r).ok());
                s.add_sample(sample.as_ref(), a.tok.model_max_length);
            }
            Ok(Flow::Continue)
        })?;
        let mut out = std::io::stdout().lock();
        if a.json {
            let mut j = s.to_json();
            j["file"] = Value::String(path.display().to_string());
            if let Some(t) = &a.tok.tokenizer {
                j["tokenizer"] = Value::String(t.clone());
                j["template"] = Value::String(a.tok.template.clone());
            }
            writeln!(out, "{j}")?;
        } else {
            print_stats(
                &mut out,
                path,
                &s,
                a.tok.tokenizer.as_deref(),
                &a.tok.template,
            )?;
        }
    }
    Ok(())
}

fn print_stats(
    out: &mut impl Write,
    path: &Path,
    s: &Stats,
    tokenizer: Option<&str>,
    template: &str,
) -> std::io::Result<()> {
    writeln!(out, "{}", path.display())?;
    writeln!(out, "  records             {}", s.records)?;
    writeln!(out, "  with image          {}", s.with_image)?;
    if s.unreadable > 0 {
        writeln!(
            out,
            "  not conversations   {} (see `sightline data validate`)",
            s.unreadable
        )?;
    }
    let readable = s.records - s.unreadable;
    let per = if readable > 0 {
        s.turns as f64 / readable as f64
    } else {
        0.0
    };
    writeln!(
        out,
        "  turns               {} ({per:.2} per record)",
        s.turns
    )?;
    let rounds: Vec<String> = s.rounds.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    writeln!(out, "  records by rounds   {}", rounds.join(", "))?;
    writeln!(out, "  <image> in text     {}", s.placeholders)?;
    writeln!(out, "  characters          {}", s.chars)?;
    if let (Some(t), Some(name)) = (&s.tokens, tokenizer) {
        writeln!(
            out,
            "  tokens ({name}, template {template}; an image counts as 1):"
        )?;
        writeln!(
            out,
            "    min {}  p50 {}  p90 {}  p99 {}  max {}  mean {:.1}",
            t.percentile(0.0),
            t.percentile(0.5),
            t.percentile(0.9),
            t.percentile(0.99),
            t.percentile(1.0),
            t.mean()
        )?;
        writeln!(
            out,
            "    trained tokens {}  longer than {}: {}",
            t.trained, t.model_max_length, t.over_max
        )?;
        if t.failed > 0 {
            writeln!(
                out,
                "    rejected by LLaVA's preprocessing: {} (see `sightline data preview`)",
                t.failed
            )?;
        }
        let max = t.histogram().iter().map(|b| b.2).max().unwrap_or(0).max(1);
        for (lo, hi, n) in t.histogram() {
            let range = match hi {
                Some(hi) => format!("[{lo}, {hi})"),
                None => format!("[{lo}, ∞)"),
            };
            writeln!(
                out,
                "    {range:>14} {n:>8} {}",
                "#".repeat((n * 40).div_ceil(max))
            )?;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------ strip-images
