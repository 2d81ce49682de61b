//! The report's plots, each drawn twice by plotters from the same code: to SVG (inlined in
//! report.html) and to an RGB bitmap encoded as PNG. Text in the bitmap is rendered with the
//! embedded Go font (`data/fonts/Go-Regular.ttf`, BSD licence in `data/fonts/LICENSE`) through
//! plotters' ab_glyph backend, so no system font is read.

use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::compare::Entry;
use crate::error::{Error, Result};
use crate::input::Model;
use crate::layout::Layout;

mod bars;
mod lines;

use bars::{Bars, DeltaItem, Deltas};
use lines::{sweeps, Training};

const FONT: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../data/fonts/Go-Regular.ttf"
));
const FAMILY: &str = "sans-serif";

/// Okabe–Ito colours (distinguishable with colour-blindness), then greys.
const COLORS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(80, 80, 80),
];

fn color(i: usize) -> RGBColor {
    COLORS[i % COLORS.len()]
}

/// One rendered plot.
#[derive(Debug, Clone)]
pub struct Plot {
    /// File stem under `plots/`.
    pub name: String,
    /// Title (alt text / caption).
    pub title: String,
    pub svg: String,
    pub png: Vec<u8>,
}

type DrawResult<DB> =
    std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Something that draws itself on any plotters backend.
trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB>;
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in; a failure here would be a corrupt build, and the plots then
        // fail with plotters' "font unavailable" error rather than a panic.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

fn render(name: &str, title: &str, fig: &impl Figure) -> Result<Plot> {
    register_font();
    let err = |e: String| Error::Plot {
        name: name.to_string(),
        msg: e,
    };
    let (w, h) = fig.size();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        fig.draw(&root).map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    let mut buf = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        fig.draw(&root).map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| err("bitmap size".into()))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| err(e.to_string()))?;
    Ok(Plot {
        name: name.to_string(),
        title: title.to_string(),
        svg,
        png,
    })
}

/// All plots, in a fixed order.
pub fn all(
    models: &[Model],
    baseline: usize,
    entries: &[Entry],
    layout: &Layout,
) -> Result<Vec<Plot>> {
    let mut out = Vec::new();
    for b in &layout.blocks {
        let fig = Bars::new(b, &layout.labels);
        out.push(render(
            &format!("bars_{}", b.slug),
            &format!("{}: value ± stderr", b.title),
            &fig,
        )?);
    }
    for (mi, m) in models.iter().enumerate() {
        if mi == baseline {
            continue;
        }
        let items: Vec<DeltaItem> = entries
            .iter()
            .filter(|e| e.model == m.label && e.corruption.is_none())
            .filter_map(|e| {
                Some(DeltaItem {
                    label: format!("{} {}", e.task, e.metric),
                    delta: e.delta?,
                    ci: e.ci95,
                    significant: e.significant(layout.alpha),
                })
            })
            .collect();
        if items.is_empty() {
            continue;
        }
        let title = format!(
            "{} − {}: Δ (95% bootstrap CI where computed)",
            m.label, models[baseline].label
        );
        out.push(render(
            &format!("delta_{}", slug(&m.label)),
            &title,
            &Deltas {
                items,
                title: title.clone(),
            },
        )?);
    }
    let curves: Vec<(String, Vec<crate::input::Step>)> = models
        .iter()
        .flat_map(|m| {
            let many = m.train.len() > 1;
            m.train.iter().map(move |t| {
                let name = if many {
                    let dir = t
                        .file
                        .parent()
                        .and_then(|p| p.file_name())
                        .map(|n| n.to_string_lossy().into_owned());
                    format!("{} ({})", m.label, dir.unwrap_or_default())
                } else {
                    m.label.clone()
                };
                (name, t.steps.clone())
            })
        })
        .filter(|(_, s)| !s.is_empty())
        .collect();
    if !curves.is_empty() {
        out.push(render(
            "training",
            "Training: loss, learning rate and gradient norm per step",
            &Training { curves },
        )?);
    }
    for m in models {
        for (task, sweep) in sweeps(m) {
            let title = format!("{} {} {}: corruption sweep", m.label, task, sweep.metric);
            let name = format!("corruption_{}_{}", slug(&m.label), slug(&task));
            out.push(render(&name, &title, &sweep)?);
        }
    }
    // Labels that differ only in characters the slug replaces would collide: number them.
    let mut seen = std::collections::BTreeSet::new();
    for p in &mut out {
        let mut name = p.name.clone();
        let mut k = 2;
        while !seen.insert(name.clone()) {
            name = format!("{}_{k}", p.name);
            k += 1;
        }
        p.name = name;
    }
    Ok(out)
}

/// A file-name-safe form of a label. Labels come from folder names and task names from
/// results files written elsewhere; what this returns is one plain file-name component (no
/// `/`, backslash or `.`), so a plot's file can never leave the report's `plots/` folder.
pub fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn text_style(size: u32) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font()).color(&BLACK)
}

#[cfg(test)]
mod tests {
    use super::slug;

    #[test]
    fn a_hostile_label_or_task_becomes_one_plain_file_name() {
        for s in [
            "../../../etc/cron.d/x",
            "/etc/hostname",
            "a\\..\\b",
            "..",
            ".",
        ] {
            let out = slug(s);
            assert!(
                out.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{s:?} -> {out:?}"
            );
        }
        assert_eq!(slug("LLaVA-7B v1.5"), "llava-7b_v1_5");
    }
}
