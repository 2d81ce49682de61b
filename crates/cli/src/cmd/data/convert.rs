//! `sightline data convert`: Alpaca, Orca, ShareGPT and LLaVA-Bench records into LLaVA conversations.

#[allow(unused_imports)]
use super::*;

#[derive(Clone, Copy, ValueEnum)]
enum FormatName {
    /// Stanford Alpaca {instruction, input, output}.
    Alpaca,
    /// OpenOrca {system_prompt, question, response}, or OpenAI chat / DPO records.
    Orca,
    /// ShareGPT {conversations: [{from, value}]} or OpenAI {messages: [{role, content}]}.
    Sharegpt,
    /// LLaVA-Bench QA {id, image, instruction, output, type}.
    LlavaQa,
}

#[derive(Clone, Copy, ValueEnum)]
enum AlpacaPromptArg {
    /// The Stanford-Alpaca prompt, as LLaVA's alpaca-converter.py writes it.
    Stanford,
    /// The instruction, then a newline and the input if any.
    Plain,
}

#[derive(Clone, Copy, ValueEnum)]
enum SystemArg {
    /// `system + "\n\n"` in front of the first human turn.
    Prepend,
    /// Discard system prompts.
    Drop,
}

#[derive(Clone, Copy, ValueEnum)]
enum QaType {
    Conv,
    Detail,
    Complex,
}

#[derive(ClapArgs)]
pub struct ConvertArgs {
    /// Source format.
    #[arg(value_enum)]
    from: FormatName,
    /// Input file (JSON array or JSON Lines).
    input: PathBuf,
    #[command(flatten)]
    out: OutputArgs,
    /// Alpaca: how instruction and input become the human turn.
    #[arg(long, value_enum, default_value = "stanford")]
    alpaca_prompt: AlpacaPromptArg,
    /// Orca / ShareGPT: what happens to a system prompt.
    #[arg(long, value_enum, default_value = "prepend")]
    system: SystemArg,
    /// llava-qa: keep only records of this type.
    #[arg(long = "type", value_enum)]
    qa_type: Option<QaType>,
    /// Skip records that cannot be converted (reported on stderr) instead of stopping.
    #[arg(long)]
    skip_invalid: bool,
}

pub(super) fn run_convert(a: ConvertArgs) -> Result<()> {
    let format = match a.from {
        FormatName::Alpaca => SourceFormat::Alpaca,
        FormatName::Orca => SourceFormat::Orca,
        FormatName::Sharegpt => SourceFormat::ShareGpt,
        FormatName::LlavaQa => SourceFormat::LlavaQa,
    };
    let opts = formats::Options {
        alpaca_prompt: match a.alpaca_prompt {
            AlpacaPromptArg::Stanford => AlpacaPrompt::Stanford,
            AlpacaPromptArg::Plain => AlpacaPrompt::Plain,
        },
        system: match a.system {
            SystemArg::Prepend => SystemPrompt::Prepend,
            SystemArg::Drop => SystemPrompt::Drop,
        },
        qa_type: a.qa_type.map(|t| {
            match t {
                QaType::Conv => "conv",
                QaType::Detail => "detail",
                QaType::Complex => "complex",
            }
            .to_string()
        }),
    };
    let mut out = open_output(&a.out, &[&a.input])?;
    let mut w = RecordWriter::new(out.writer(), a.out.format(), a.out.name());
    let (mut skipped, mut filtered) = (0usize, 0usize);
    let n = stream::for_each(&a.input, |i, v| {
        match formats::convert(format, &v, i, &opts) {
            Ok(Some(r)) => w.write(&r)?,
            Ok(None) => filtered += 1,
            Err(p) => {
                let e = Error::record(&a.input, i, id_of(&v).as_deref(), p);
                if !a.skip_invalid {
                    return Err(e);
                }
                skipped += 1;
                if skipped <= 5 {
                    eprintln!("skipped: {e}");
                }
            }
        }
        Ok(Flow::Continue)
    })?;
    let written = w.count();
    w.finish()?;
    out.finish()?;
    let mut msg = format!(
        "{}: {n} records; {written} converted to {}",
        a.input.display(),
        a.out.name().display()
    );
    if filtered > 0 {
        msg.push_str(&format!("; {filtered} of other types left out"));
    }
    if skipped > 0 {
        msg.push_str(&format!("; {skipped} skipped as invalid"));
    }
    eprintln!("{msg}");
    Ok(())
}

// ------------------------------------------------------------------------------ sample
