//! Grouped bars with error bars (one chart per paper block) and the deltas against the
//! baseline with their bootstrap intervals.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{color, text_style, DrawResult, Figure};
use crate::layout::Block;

// ---------- grouped bars with error bars ----------

pub(super) struct Bars {
    title: String,
    groups: Vec<String>,
    labels: Vec<String>,
    /// `values[model][group]` = (value, stderr).
    values: Vec<Vec<Option<(f64, f64)>>>,
}

impl Bars {
    pub(super) fn new(b: &Block, labels: &[String]) -> Self {
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

pub(super) struct DeltaItem {
    pub(super) label: String,
    pub(super) delta: f64,
    pub(super) ci: Option<[f64; 2]>,
    pub(super) significant: bool,
}

pub(super) struct Deltas {
    pub(super) title: String,
    pub(super) items: Vec<DeltaItem>,
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
