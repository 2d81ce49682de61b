//! `sightline data preview`: a record as training tokenizes it, trained tokens marked.

#[allow(unused_imports)]
use super::*;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ColorArg {
    Auto,
    Always,
    Never,
}

#[derive(ClapArgs)]
pub struct PreviewArgs {
    /// Input file (JSON array or JSON Lines).
    input: PathBuf,
    /// 0-based index of the first record to show.
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// Show the first record with this id instead.
    #[arg(long, conflicts_with = "index")]
    id: Option<String>,
    /// How many records to show.
    #[arg(long, default_value_t = 1)]
    count: usize,
    #[command(flatten)]
    tok: TokenizerArgs,
    /// Also print one line per token: position, id, token, label.
    #[arg(long)]
    tokens: bool,
    /// Show a sample whose round count does not match its tokens as LLaVA trains it (every
    /// label masked) instead of stopping with the mismatch.
    #[arg(long)]
    ignore_mismatch: bool,
    /// Mark trained tokens in colour (auto: when stdout is a terminal); without colour they
    /// are enclosed in [[ ]].
    #[arg(long, value_enum, default_value = "auto")]
    color: ColorArg,
}

pub(super) fn run_preview(a: PreviewArgs) -> Result<()> {
    let template = Template::new(&a.tok.template)?;
    let spec = a
        .tok
        .tokenizer
        .clone()
        .unwrap_or_else(|| sightline_model::DEFAULT_MODEL.to_string());
    let tokenizer = load_tokenizer(&spec, &template, !a.tok.no_im_start_end)?;
    let mut opts = a.tok.options(&template, &tokenizer);
    if a.ignore_mismatch {
        opts.on_mismatch = OnMismatch::MaskAll;
    }
    let pre = Preprocess::new(&tokenizer, template, opts);
    let color = match a.color {
        ColorArg::Always => true,
        ColorArg::Never => false,
        ColorArg::Auto => std::io::stdout().is_terminal(),
    };
    let mut shown = 0;
    let mut started = false;
    stream::for_each(&a.input, |i, v| {
        let selected = match &a.id {
            Some(id) => started || id_of(&v).as_deref() == Some(id.as_str()),
            None => i >= a.index,
        };
        if !selected {
            return Ok(Flow::Continue);
        }
        started = true;
        let record = Record::from_value(&v)
            .map_err(|p| Error::record(&a.input, i, id_of(&v).as_deref(), p))?;
        let s = pre.sample(&record).map_err(|e| e.at(&a.input, i))?;
        print_sample(&pre, &a.input, i, &record, &s, &spec, color, a.tokens)
            .map_err(|e| Error::io("-", e))?;
        shown += 1;
        Ok(if shown < a.count {
            Flow::Continue
        } else {
            Flow::Stop
        })
    })?;
    if shown == 0 {
        match &a.id {
            Some(id) => bail!("{}: no record with id {id:?}", a.input.display()),
            None => bail!(
                "{}: no record {} (the file is shorter)",
                a.input.display(),
                a.index
            ),
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn print_sample(
    pre: &Preprocess,
    path: &Path,
    index: usize,
    record: &Record,
    s: &Sample,
    tokenizer: &str,
    color: bool,
    tokens: bool,
) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    let id = record
        .id
        .as_deref()
        .map_or("(no id)".to_string(), |id| format!("id {id:?}"));
    let image = record
        .image
        .as_deref()
        .map_or("no image".to_string(), |p| format!("image {p}"));
    writeln!(out, "── {}: record {index}, {id}, {image}", path.display())?;
    writeln!(
        out,
        "   template {}, tokenizer {tokenizer}: {} tokens, {} trained{}",
        pre.template().name(),
        s.input_ids.len(),
        s.trained(),
        if s.mismatch {
            " (tokenization mismatch: LLaVA masks the whole sample)"
        } else {
            ""
        }
    )?;
    let (on, off) = if color {
        ("\x1b[1;32m", "\x1b[0m")
    } else {
        ("[[", "]]")
    };
    writeln!(
        out,
        "   trained tokens are {}",
        if color { "green" } else { "between [[ and ]]" }
    )?;
    if s.has_image {
        writeln!(out, "   <image> stands for the image's feature rows (id {IMAGE_TOKEN_INDEX}, never trained)")?;
    }
    writeln!(out)?;
    let pieces = token_pieces(pre, &s.input_ids);
    let mut trained = false;
    let mut text = String::new();
    for (piece, &label) in pieces.iter().zip(&s.labels) {
        let t = label != IGNORE_INDEX;
        if t != trained {
            text.push_str(if t { on } else { off });
            trained = t;
        }
        text.push_str(piece);
    }
    if trained {
        text.push_str(off);
    }
    writeln!(out, "{text}")?;
    if tokens {
        writeln!(out)?;
        writeln!(out, "{:>6} {:>8}  {:<24} label", "pos", "id", "token")?;
        for (p, (&id, &label)) in s.input_ids.iter().zip(&s.labels).enumerate() {
            let label = if label == IGNORE_INDEX {
                "-100".to_string()
            } else {
                "trained".to_string()
            };
            writeln!(out, "{p:>6} {id:>8}  {:<24} {label}", pre.token_name(id))?;
        }
    }
    writeln!(out)
}

/// The text of each token, from the tokenizer's own decoder: the text of `ids[..k]` minus that
/// of `ids[..k-1]` within each run between images (a token that ends inside a UTF-8 character
/// shows nothing and the next one shows the character).
fn token_pieces(pre: &Preprocess, ids: &[i64]) -> Vec<String> {
    let mut pieces = Vec::with_capacity(ids.len());
    let mut run: Vec<u32> = Vec::new();
    let mut prev = String::new();
    for &id in ids {
        let Ok(t) = u32::try_from(id) else {
            pieces.push(if id == IMAGE_TOKEN_INDEX {
                "<image>".to_string()
            } else {
                format!("#{id}")
            });
            // A new decoding run starts after it, behind a BOS so that the decoder does not
            // treat the next token as the start of the text (and drop its leading space).
            run.clear();
            prev.clear();
            if let Some(bos) = pre.tokenizer().bos_id {
                run.push(bos);
                prev = pre.tokenizer().decode(&run, false).unwrap_or_default();
            }
            continue;
        };
        run.push(t);
        let text = pre.tokenizer().decode(&run, false).unwrap_or_default();
        if text.ends_with('\u{FFFD}') {
            pieces.push(String::new());
            continue;
        }
        let common = text
            .char_indices()
            .zip(prev.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((i, c), _)| i + c.len_utf8());
        pieces.push(text[common..].to_string());
        prev = text;
    }
    pieces
}
