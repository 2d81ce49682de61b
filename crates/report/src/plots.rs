//! The report's plots, each drawn twice by plotters from the same code: to SVG (inlined in
//! report.html) and to an RGB bitmap encoded as PNG. Text in the bitmap is rendered with the
//! embedded Go font (`data/fonts/Go-Regular.ttf`, BSD licence in `data/fonts/LICENSE`) through
//! plotters' ab_glyph backend, so no system font is read.

use std::collections::BTreeMap;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::compare::Entry;
use crate::error::{Error, Result};
use crate::input::Model;
use crate::layout::{Block, Layout};

const FONT: &[u8] = include_bytes!("../../../data/fonts/Go-Regular.ttf");
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

/// A file-name-safe form of a label.
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

// ---------- grouped bars with error bars ----------

struct Bars {
    title: String,
    groups: Vec<String>,
    labels: Vec<String>,
    /// `values[model][group]` = (value, stderr).
    values: Vec<Vec<Option<(f64, f64)>>>,
}

impl Bars {
    fn new(b: &Block, labels: &[String]) -> Self {
        Bars {
            title: format!("{} (error bars: ± 1 stderr)", b.title),
            groups: b.headers.clone(),
            labels: labels.to_vec(),
            values: b
                .cells
                .iter()
                .map(|row| {
                    row.iter()
                        .map(|c| {
                            c.value
                                .filter(|v| v.is_finite())
                                .map(|v| (v, c.stderr.unwrap_or(0.0)))
                        })
                        .collect()
                })
                .collect(),
        }
    }
}

impl Figure for Bars {
    fn size(&self) -> (u32, u32) {
        let per_group = 40 + 26 * self.labels.len() as u32;
        ((140 + per_group * self.groups.len() as u32).max(560), 440)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let hi = self
            .values
            .iter()
            .flatten()
            .flatten()
            .map(|(v, s)| v + s)
            .fold(0.0f64, f64::max);
        let lo = self
            .values
            .iter()
            .flatten()
            .flatten()
            .map(|(v, s)| v - s)
            .fold(0.0f64, f64::min);
        let top = if hi > 0.0 { hi * 1.3 } else { 1.0 };
        let n = self.groups.len() as f64;
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, text_style(18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..n, lo..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_label_formatter(&|_| String::new())
            .y_desc("value")
            .axis_desc_style(text_style(14))
            .label_style(text_style(12))
            .draw()?;
        let k = self.labels.len() as f64;
        let width = 0.8 / k;
        for (mi, label) in self.labels.iter().enumerate() {
            let c = color(mi);
            let bars = self.values[mi].iter().enumerate().filter_map(|(g, v)| {
                v.map(|(v, _)| {
                    let x0 = g as f64 + 0.1 + mi as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width * 0.92, v)], c.filled())
                })
            });
            chart
                .draw_series(bars)?
                .label(label.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
            for (g, v) in self.values[mi].iter().enumerate() {
                if let Some((v, s)) = v.filter(|(_, s)| *s > 0.0) {
                    let xc = g as f64 + 0.1 + (mi as f64 + 0.46) * width;
                    let cap = width * 0.2;
                    let style = ShapeStyle::from(&BLACK).stroke_width(1);
                    chart.draw_series([
                        PathElement::new(vec![(xc, v - s), (xc, v + s)], style),
                        PathElement::new(vec![(xc - cap, v - s), (xc + cap, v - s)], style),
                        PathElement::new(vec![(xc - cap, v + s), (xc + cap, v + s)], style),
                    ])?;
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(text_style(13))
            .draw()?;
        let below = text_style(13).pos(Pos::new(HPos::Center, VPos::Top));
        for (g, name) in self.groups.iter().enumerate() {
            let (x, y) = chart.backend_coord(&(g as f64 + 0.5, lo));
            root.draw(&Text::new(name.clone(), (x, y + 8), below.clone()))?;
        }
        Ok(())
    }
}

// ---------- deltas against the baseline ----------

struct DeltaItem {
    label: String,
    delta: f64,
    ci: Option<[f64; 2]>,
    significant: bool,
}

struct Deltas {
    title: String,
    items: Vec<DeltaItem>,
}

impl Figure for Deltas {
    fn size(&self) -> (u32, u32) {
        (900, 120 + 28 * self.items.len() as u32)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let ext = self
            .items
            .iter()
            .flat_map(|i| {
                [
                    i.delta,
                    i.ci.map_or(i.delta, |c| c[0]),
                    i.ci.map_or(i.delta, |c| c[1]),
                ]
            })
            .fold(0.0f64, |a, b| a.max(b.abs()));
        let ext = if ext > 0.0 { ext * 1.15 } else { 0.01 };
        let n = self.items.len() as f64;
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, text_style(17))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(300)
            .build_cartesian_2d(-ext..ext, 0f64..n)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .y_label_formatter(&|_| String::new())
            .x_desc("Δ vs baseline (● p < 0.05, ○ otherwise)")
            .axis_desc_style(text_style(14))
            .label_style(text_style(12))
            .draw()?;
        chart.draw_series([PathElement::new(
            vec![(0.0, 0.0), (0.0, n)],
            ShapeStyle::from(&BLACK.mix(0.6)).stroke_width(1),
        )])?;
        let left = text_style(13).pos(Pos::new(HPos::Right, VPos::Center));
        for (i, it) in self.items.iter().enumerate() {
            let y = n - i as f64 - 0.5;
            let c = color(1);
            if let Some([a, b]) = it.ci {
                let style = ShapeStyle::from(&c).stroke_width(2);
                chart.draw_series([
                    PathElement::new(vec![(a, y), (b, y)], style),
                    PathElement::new(vec![(a, y - 0.15), (a, y + 0.15)], style),
                    PathElement::new(vec![(b, y - 0.15), (b, y + 0.15)], style),
                ])?;
            }
            let style = if it.significant {
                c.filled()
            } else {
                ShapeStyle::from(&c).stroke_width(2)
            };
            chart.draw_series([Circle::new((it.delta, y), 5, style)])?;
            let (px, py) = chart.backend_coord(&(-ext, y));
            root.draw(&Text::new(it.label.clone(), (px - 8, py), left.clone()))?;
        }
        Ok(())
    }
}

// ---------- training curves ----------

struct Training {
    curves: Vec<(String, Vec<crate::input::Step>)>,
}

impl Figure for Training {
    fn size(&self) -> (u32, u32) {
        (900, 960)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let panels = root.split_evenly((3, 1));
        type Get = fn(&crate::input::Step) -> Option<f64>;
        let series: [(&str, Get); 3] = [
            ("loss", |s| s.loss),
            ("learning rate", |s| Some(s.lr)),
            ("gradient norm", |s| Some(s.grad_norm)),
        ];
        let max_step = self
            .curves
            .iter()
            .flat_map(|(_, s)| s.iter().map(|p| p.step))
            .fold(1.0f64, f64::max);
        for (panel, (name, get)) in panels.iter().zip(series) {
            let ys: Vec<f64> = self
                .curves
                .iter()
                .flat_map(|(_, s)| s.iter().filter_map(get))
                .filter(|v| v.is_finite())
                .collect();
            let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let (lo, hi) = if lo.is_finite() && hi > lo {
                let pad = (hi - lo) * 0.08;
                (lo - pad, hi + pad)
            } else if lo.is_finite() {
                (
                    lo - lo.abs().max(1e-12) * 0.1,
                    lo + lo.abs().max(1e-12) * 0.1,
                )
            } else {
                (0.0, 1.0)
            };
            let small = hi.abs() < 1e-2;
            let fmt = move |v: &f64| {
                if small {
                    format!("{v:.1e}")
                } else {
                    format!("{v:.3}")
                }
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{name} vs step"), text_style(16))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(72)
                .build_cartesian_2d(0f64..max_step, lo..hi)?;
            chart
                .configure_mesh()
                .x_desc("optimizer step")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_desc(name)
                .y_label_formatter(&fmt)
                .axis_desc_style(text_style(13))
                .label_style(text_style(12))
                .draw()?;
            for (ci, (label, steps)) in self.curves.iter().enumerate() {
                let c = color(ci);
                let pts: Vec<(f64, f64)> = steps
                    .iter()
                    .filter_map(|s| get(s).filter(|v| v.is_finite()).map(|v| (s.step, v)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts, ShapeStyle::from(&c).stroke_width(2)))?
                    .label(label.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(
                            vec![(x, y), (x + 16, y)],
                            ShapeStyle::from(&c).stroke_width(2),
                        )
                    });
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(text_style(12))
                .draw()?;
        }
        Ok(())
    }
}

// ---------- corruption sweeps ----------

struct Sweep {
    title: String,
    metric: String,
    clean: Option<f64>,
    /// corruption → (severity, value), severities ascending.
    lines: BTreeMap<String, Vec<(u32, f64)>>,
}

/// Per task of `m` with corrupted runs: its headline metric (`acc` if present) per corruption.
fn sweeps(m: &Model) -> Vec<(String, Sweep)> {
    let mut by_task: BTreeMap<String, Sweep> = BTreeMap::new();
    for (key, run) in &m.tasks {
        let Some((corr, sev)) = &key.corruption else {
            continue;
        };
        let metric = if run.metrics.contains_key("acc") {
            "acc".to_string()
        } else {
            match run.metrics.keys().next() {
                Some(k) => k.clone(),
                None => continue,
            }
        };
        let clean_key = crate::input::TaskKey {
            task: key.task.clone(),
            corruption: None,
        };
        let clean = m
            .tasks
            .get(&clean_key)
            .and_then(|r| r.metrics.get(&metric))
            .map(|v| v.value);
        let sw = by_task.entry(key.task.clone()).or_insert_with(|| Sweep {
            title: format!("{} {} {metric}", m.label, key.task),
            metric: metric.clone(),
            clean,
            lines: BTreeMap::new(),
        });
        if let Some(v) = run
            .metrics
            .get(&sw.metric)
            .map(|v| v.value)
            .filter(|v| v.is_finite())
        {
            sw.lines.entry(corr.clone()).or_default().push((*sev, v));
        }
    }
    for sw in by_task.values_mut() {
        for pts in sw.lines.values_mut() {
            pts.sort_by_key(|p| p.0);
        }
    }
    by_task
        .into_iter()
        .filter(|(_, s)| !s.lines.is_empty())
        .collect()
}

impl Figure for Sweep {
    fn size(&self) -> (u32, u32) {
        (1000, 460)
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(560);
        let vals: Vec<f64> = self
            .lines
            .values()
            .flatten()
            .map(|p| p.1)
            .chain(self.clean)
            .collect();
        let lo = vals.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
        let hi = vals.iter().copied().fold(f64::NEG_INFINITY, f64::max) * 1.1;
        let hi = if hi > lo { hi } else { lo + 1.0 };
        let max_sev = self
            .lines
            .values()
            .flatten()
            .map(|p| p.0)
            .max()
            .unwrap_or(5) as f64;
        let mut chart = ChartBuilder::on(&left)
            .caption(format!("{} vs severity", self.title), text_style(15))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(-0.2f64..max_sev + 0.2, lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("severity (0 = clean images)")
            .x_labels(max_sev as usize + 1)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_desc(self.metric.as_str())
            .axis_desc_style(text_style(13))
            .label_style(text_style(12))
            .draw()?;
        for (ci, (corr, pts)) in self.lines.iter().enumerate() {
            let c = color(ci);
            let mut xy: Vec<(f64, f64)> = self.clean.into_iter().map(|v| (0.0, v)).collect();
            xy.extend(pts.iter().map(|&(s, v)| (f64::from(s), v)));
            chart
                .draw_series(LineSeries::new(
                    xy.clone(),
                    ShapeStyle::from(&c).stroke_width(2),
                ))?
                .label(corr.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(
                        vec![(x, y), (x + 16, y)],
                        ShapeStyle::from(&c).stroke_width(2),
                    )
                });
            chart.draw_series(xy.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(text_style(11))
            .draw()?;
        // Average relative drop per corruption: mean over severities of (clean − v) / clean.
        let drops: Vec<(String, f64)> = match self.clean.filter(|c| *c != 0.0) {
            Some(clean) => self
                .lines
                .iter()
                .map(|(c, pts)| {
                    (
                        c.clone(),
                        pts.iter().map(|p| (clean - p.1) / clean).sum::<f64>() / pts.len() as f64,
                    )
                })
                .collect(),
            None => Vec::new(),
        };
        if drops.is_empty() {
            right.draw(&Text::new(
                "no clean run: relative drop not computed",
                (20, 200),
                text_style(13),
            ))?;
            return Ok(());
        }
        let dlo = drops.iter().map(|d| d.1).fold(0.0f64, f64::min) * 1.15;
        let dhi = drops.iter().map(|d| d.1).fold(0.0f64, f64::max) * 1.15;
        let dhi = if dhi > dlo { dhi } else { dlo + 0.01 };
        let n = drops.len() as f64;
        let mut chart = ChartBuilder::on(&right)
            .caption("mean relative drop vs clean", text_style(15))
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(130)
            .build_cartesian_2d(dlo..dhi, 0f64..n)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .y_label_formatter(&|_| String::new())
            .x_desc("(clean − corrupted) / clean, mean over severities")
            .axis_desc_style(text_style(12))
            .label_style(text_style(11))
            .draw()?;
        let label_style = text_style(12).pos(Pos::new(HPos::Right, VPos::Center));
        for (i, (name, d)) in drops.iter().enumerate() {
            let y = n - i as f64 - 1.0;
            let c = color(i);
            chart.draw_series([Rectangle::new(
                [(0.0, y + 0.15), (*d, y + 0.85)],
                c.filled(),
            )])?;
            let (px, py) = chart.backend_coord(&(dlo, y + 0.5));
            // backend_coord is in the whole image's pixels: draw on the root area.
            root.draw(&Text::new(name.clone(), (px - 6, py), label_style.clone()))?;
        }
        Ok(())
    }
}
