//! Line plots: training curves (loss, learning rate, gradient norm per step) and corruption
//! sweeps (metric vs severity per corruption, with the mean relative drop).

use std::collections::BTreeMap;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{color, text_style, DrawResult, Figure};
use crate::input::Model;

// ---------- training curves ----------

pub(super) struct Training {
    pub(super) curves: Vec<(String, Vec<crate::input::Step>)>,
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

pub(super) struct Sweep {
    pub(super) title: String,
    pub(super) metric: String,
    pub(super) clean: Option<f64>,
    /// corruption → (severity, value), severities ascending.
    pub(super) lines: BTreeMap<String, Vec<(u32, f64)>>,
}

/// Per task of `m` with corrupted runs: its headline metric (`acc` if present) per corruption.
pub(super) fn sweeps(m: &Model) -> Vec<(String, Sweep)> {
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
        self.draw_curves(&left)?;
        self.draw_drops(root, &right)
    }
}

impl Sweep {
    /// Left panel: the metric against severity, one line per corruption, from the clean value.
    fn draw_curves<DB: DrawingBackend>(&self, left: &DrawingArea<DB, Shift>) -> DrawResult<DB> {
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
        let mut chart = ChartBuilder::on(left)
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
        Ok(())
    }

    /// Average relative drop per corruption: mean over severities of (clean − v) / clean; none
    /// without a clean run (or with a clean value of 0).
    fn relative_drops(&self) -> Vec<(String, f64)> {
        match self.clean.filter(|c| *c != 0.0) {
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
        }
    }

    /// Right panel: the relative drops as horizontal bars, labelled on `root` (the labels sit
    /// left of the panel's plotting area).
    fn draw_drops<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
        right: &DrawingArea<DB, Shift>,
    ) -> DrawResult<DB> {
        let drops = self.relative_drops();
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
        let mut chart = ChartBuilder::on(right)
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
