//! `sightline data corrupt`: ImageNet-C corruptions of an image or a folder of images, written
//! as `OUT_DIR/<corruption>/<severity>/<image stem>.png` (the layout of ImageNet-C and of SBT's
//! `val2014-c/{name}/{s}/…`, with PNG as the spec's assumption for SBT), plus an optional contact
//! sheet. Images are first brought to 224×224 the way CLIP's processor does (resize the short
//! side with Pillow BICUBIC, center crop), since every corruption expects that size;
//! `--protocol imagenet-c` uses the ImageNet-C protocol instead (Resize(256), CenterCrop(224),
//! JPEG quality 85, `<image stem>.jpg`).

use std::ffi::OsStr;

use sightline_corrupt::image::{self, RgbImage};
use sightline_corrupt::sheet::{self, Row};
use sightline_corrupt::{derive_seed, Corruption};
use sightline_vision::preprocess::{self as vp, AspectMode, ImageProcessorConfig};

#[allow(unused_imports)]
use super::*;

#[derive(ClapArgs)]
pub struct CorruptArgs {
    /// An image (JPEG, PNG or WebP) or a folder of them (not recursive).
    input: PathBuf,
    /// Folder for `<corruption>/<severity>/<image stem>.png` (created if missing).
    output_dir: PathBuf,
    /// Corruption name (e.g. gaussian_noise, snow, jpeg_compression) or `all`.
    #[arg(long)]
    corruption: String,
    /// Severity 1–5, or `all`.
    #[arg(long)]
    severity: String,
    /// Base seed; each (image, corruption, severity) gets its own numpy-style seed from it.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write one PNG grid of the first image: a row per corruption, the original and a
    /// column per severity.
    #[arg(long, value_name = "PATH")]
    contact_sheet: Option<PathBuf>,
    /// Replace outputs that already exist.
    #[arg(long)]
    overwrite: bool,
    /// Geometry and file format: `clip` (default; CLIP's bicubic resize + center crop to 224,
    /// PNG: the spec's assumption for SBT) or `imagenet-c` (the ImageNet-C protocol: Resize(256),
    /// CenterCrop(224), JPEG quality 85).
    #[arg(long, value_enum, default_value = "clip")]
    protocol: CorruptProtocol,
}

/// How inputs are brought to 224×224 and how outputs are stored.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CorruptProtocol {
    Clip,
    #[value(name = "imagenet-c")]
    ImagenetC,
}

impl CorruptProtocol {
    fn extension(self) -> &'static str {
        match self {
            Self::Clip => "png",
            Self::ImagenetC => "jpg",
        }
    }
}

const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// `sightline data corrupt`: every output is checked before the first is written, then each
/// input is corrupted at every (corruption, severity) asked for, and the first input's results
/// make the contact sheet.
pub fn run_corrupt(a: CorruptArgs) -> Result<()> {
    let (corruptions, severities) = selection(&a)?;
    let inputs = list_inputs(&a.input)?;
    let planned = check_outputs(&a, &inputs, &corruptions, &severities)?;
    sweep_output_folders(&planned)?;

    let cfg = ImageProcessorConfig::clip(sightline_corrupt::SIZE as usize);
    // The first image and its corruptions, kept for the contact sheet.
    let mut first: Option<(RgbImage, Vec<(Corruption, RgbImage)>)> = None;
    for (k, input) in inputs.iter().enumerate() {
        let keep = k == 0 && a.contact_sheet.is_some();
        let (img, outs) = corrupt_input(&a, &cfg, input, &corruptions, &severities, keep)?;
        if k == 0 {
            first = Some((img, outs));
        }
    }
    eprintln!(
        "{} images × {} corruptions × {} severities: {} files under {}",
        inputs.len(),
        corruptions.len(),
        severities.len(),
        planned.len(),
        a.output_dir.display()
    );
    if let (Some(path), Some((original, outs))) = (&a.contact_sheet, &first) {
        let mut columns = vec!["original".to_string()];
        columns.extend(severities.iter().map(|s| format!("sev {s}")));
        let rows: Vec<Row> = corruptions
            .iter()
            .map(|c| {
                let mut cells = vec![original];
                cells.extend(outs.iter().filter(|o| o.0 == *c).map(|o| &o.1));
                Row {
                    label: c.name().to_string(),
                    cells,
                }
            })
            .collect();
        let grid = sheet::contact_sheet(&columns, &rows, 112);
        sightline_guard::temp::remove_stale(path).with_context(|| {
            format!("{}: cannot remove a killed run's temporary", path.display())
        })?;
        write_png(path, &grid, a.overwrite)?;
        eprintln!(
            "contact sheet of {} → {}",
            inputs[0].display(),
            path.display()
        );
    }
    Ok(())
}

/// `--corruption` and `--severity` (each a name or `all`).
fn selection(a: &CorruptArgs) -> Result<(Vec<Corruption>, Vec<u8>)> {
    let corruptions: Vec<Corruption> = if a.corruption == "all" {
        Corruption::ALL.to_vec()
    } else {
        vec![a
            .corruption
            .parse()
            .map_err(|e| anyhow::anyhow!("--corruption {}: {e}", a.corruption))?]
    };
    let severities: Vec<u8> = if a.severity == "all" {
        (1..=5).collect()
    } else {
        match a.severity.parse::<u8>() {
            Ok(s) if (1..=5).contains(&s) => vec![s],
            _ => bail!("--severity {}: expected 1 to 5 or `all`", a.severity),
        }
    };
    Ok((corruptions, severities))
}

/// Where the corruption `c` at severity `s` of `input` goes:
/// `OUT_DIR/<corruption>/<severity>/<stem>.<png|jpg>`.
fn target(a: &CorruptArgs, input: &Path, c: Corruption, s: u8) -> Result<PathBuf> {
    let stem = input
        .file_stem()
        .and_then(OsStr::to_str)
        .with_context(|| format!("{}: file name is not UTF-8", input.display()))?;
    Ok(a.output_dir
        .join(c.name())
        .join(s.to_string())
        .join(format!("{stem}.{}", a.protocol.extension())))
}

/// Everything that can fail before a file is written: names, existing outputs, an output
/// that would replace an input. Returns the files to write.
fn check_outputs(
    a: &CorruptArgs,
    inputs: &[PathBuf],
    corruptions: &[Corruption],
    severities: &[u8],
) -> Result<std::collections::HashSet<PathBuf>> {
    let mut planned = std::collections::HashSet::new();
    for input in inputs {
        for &c in corruptions {
            for &s in severities {
                let t = target(a, input, c, s)?;
                if same_file(&t, input) {
                    bail!(
                        "{}: the output would replace the input; choose another OUT_DIR",
                        t.display()
                    );
                }
                if t.exists() && !a.overwrite {
                    bail!(
                        "{}: already exists (pass --overwrite to replace it)",
                        t.display()
                    );
                }
                if !planned.insert(t.clone()) {
                    bail!(
                        "{}: two inputs have the same file stem and would write the same output",
                        t.display()
                    );
                }
            }
        }
    }
    if let Some(sheet) = &a.contact_sheet {
        if inputs.iter().any(|i| same_file(sheet, i)) {
            bail!(
                "{}: the contact sheet would replace the input",
                sheet.display()
            );
        }
        if sheet.exists() && !a.overwrite {
            bail!(
                "{}: already exists (pass --overwrite to replace it)",
                sheet.display()
            );
        }
    }
    Ok(planned)
}

/// Loads one input in the protocol's geometry and writes its corruptions; returns the loaded
/// image and (when `keep`, for the contact sheet) the corrupted ones.
fn corrupt_input(
    a: &CorruptArgs,
    cfg: &ImageProcessorConfig,
    input: &Path,
    corruptions: &[Corruption],
    severities: &[u8],
    keep: bool,
) -> Result<(RgbImage, Vec<(Corruption, RgbImage)>)> {
    let img = match a.protocol {
        CorruptProtocol::Clip => load_224(input, cfg)?,
        CorruptProtocol::ImagenetC => sightline_corrupt::imagenet_c_geometry(&vp::load_rgb(input)?),
    };
    let name = input
        .file_name()
        .and_then(OsStr::to_str)
        .unwrap_or_default();
    let mut outs = Vec::new();
    for &c in corruptions {
        for &s in severities {
            let out = sightline_corrupt::corrupt(&img, c, s, derive_seed(a.seed, name, c, s))
                .with_context(|| format!("{}: {c} severity {s}", input.display()))?;
            let t = target(a, input, c, s)?;
            if let Some(dir) = t.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("{}: cannot create", dir.display()))?;
            }
            match a.protocol {
                CorruptProtocol::Clip => write_png(&t, &out, a.overwrite)?,
                CorruptProtocol::ImagenetC => {
                    let bytes = sightline_corrupt::encode_jpeg(&out, 85)
                        .with_context(|| format!("{}: cannot encode JPEG", t.display()))?;
                    write_bytes(&t, &bytes, a.overwrite)?;
                }
            }
            if keep {
                outs.push((c, out));
            }
        }
    }
    Ok((img, outs))
}

/// The input file, or the images directly inside the input folder, sorted by name.
fn list_inputs(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    if !input.is_dir() {
        bail!(
            "{}: not found; expected an image file or a folder of images",
            input.display()
        );
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(input)
        .with_context(|| format!("{}: cannot read folder", input.display()))?
    {
        let path = entry
            .with_context(|| format!("{}: cannot read folder", input.display()))?
            .path();
        let ext = path
            .extension()
            .and_then(OsStr::to_str)
            .map(str::to_ascii_lowercase);
        if path.is_file() && ext.is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str())) {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!(
            "{}: no .jpg, .jpeg, .png or .webp images in this folder",
            input.display()
        );
    }
    Ok(files)
}

/// Decodes like Pillow and, unless it is already 224×224, resizes and crops like CLIP.
fn load_224(path: &Path, cfg: &ImageProcessorConfig) -> Result<RgbImage> {
    let img = vp::load_rgb(path)?;
    if img.dimensions() == (cfg.crop_size as u32, cfg.crop_size as u32) {
        return Ok(img);
    }
    Ok(vp::resize_and_crop(&img, cfg, AspectMode::Square)?)
}

/// PNG-encodes `img` and moves it into place through a temporary file.
fn write_png(path: &Path, img: &RgbImage, overwrite: bool) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .with_context(|| format!("{}: cannot encode PNG", path.display()))?;
    write_bytes(path, &bytes, overwrite)
}

/// Removes the temporaries a killed run left in the folders the outputs go to, once per
/// folder (they are `--output-dir`'s `<corruption>/<severity>/` folders, sightline's own).
fn sweep_output_folders(planned: &std::collections::HashSet<PathBuf>) -> Result<()> {
    let folders: std::collections::BTreeSet<&Path> =
        planned.iter().filter_map(|p| p.parent()).collect();
    for dir in folders {
        sightline_guard::temp::remove_stale_in(dir).with_context(|| {
            format!(
                "{}: cannot remove a killed run's temporaries",
                dir.display()
            )
        })?;
    }
    Ok(())
}

/// Moves `bytes` into place at `path` through a temporary file (its folder was swept by
/// [`sweep_output_folders`]).
fn write_bytes(path: &Path, bytes: &[u8], overwrite: bool) -> Result<()> {
    let mut out = Output::create_swept(Some(path), overwrite)?;
    out.writer()
        .write_all(bytes)
        .with_context(|| format!("{}: cannot write", path.display()))?;
    out.finish()
}
