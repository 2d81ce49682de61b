//! `report.md` and the self-contained `report.html` (tables plus the SVG plots inline; no
//! scripts, no external resources, so it opens offline).

use crate::layout::{delta_text, value_text, Block, Layout, Table};
use crate::plots::Plot;

/// A block as a generic table: one row per model, each column followed by its Δ.
fn block_table(b: &Block, l: &Layout) -> Table {
    let mut header = vec!["Model".to_string()];
    for h in &b.headers {
        header.push(h.clone());
        header.push(format!("Δ {h}"));
    }
    let rows = b
        .cells
        .iter()
        .enumerate()
        .map(|(mi, row)| {
            let mut r = vec![l.labels[mi].clone()];
            for c in row {
                r.push(value_text(c));
                r.push(delta_text(c, mi == l.baseline, l.alpha));
            }
            r
        })
        .collect();
    Table {
        title: b.title.clone(),
        notes: b.notes.clone(),
        header,
        rows,
    }
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

fn md_table(t: &Table, out: &mut String) {
    out.push_str(&format!("## {}\n\n", t.title));
    out.push_str(&format!(
        "| {} |\n",
        t.header
            .iter()
            .map(|h| md_escape(h))
            .collect::<Vec<_>>()
            .join(" | ")
    ));
    out.push_str(&format!(
        "|{}\n",
        t.header
            .iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    ));
    for r in &t.rows {
        out.push_str(&format!(
            "| {} |\n",
            r.iter()
                .map(|c| md_escape(c))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    out.push('\n');
    for n in &t.notes {
        out.push_str(&format!("{n}\n\n"));
    }
}

fn all_tables(l: &Layout) -> Vec<(Table, Option<String>)> {
    let mut v: Vec<(Table, Option<String>)> = l
        .blocks
        .iter()
        .map(|b| (block_table(b, l), Some(format!("bars_{}", b.slug))))
        .collect();
    v.extend(l.tables.iter().cloned().map(|t| (t, None)));
    v
}

/// `report.md`: the tables, the method, and links to the plots.
pub fn markdown(l: &Layout, plots: &[Plot], note: Option<&str>) -> String {
    let mut out = String::from("# sightline report\n\n");
    if let Some(n) = note {
        out.push_str(&format!("> {}\n\n", n.trim().replace('\n', "\n> ")));
    }
    out.push_str(&format!("Models: {}.\n\n", l.labels.join(", ")));
    for (t, _) in all_tables(l) {
        md_table(&t, &mut out);
    }
    out.push_str("## Method\n\n");
    for p in &l.method {
        out.push_str(p);
        out.push_str("\n\n");
    }
    if !plots.is_empty() {
        out.push_str("## Plots\n\n");
        for p in plots {
            out.push_str(&format!(
                "- {}: [plots/{n}.svg](plots/{n}.svg), [plots/{n}.png](plots/{n}.png)\n",
                p.title,
                n = p.name
            ));
        }
        out.push('\n');
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Markdown's `**bold**` and `` `code` `` in the method paragraphs, as HTML.
fn inline_md(s: &str) -> String {
    let mut out = String::new();
    let mut bold = false;
    let mut code = false;
    let e = esc(s);
    let mut rest = e.as_str();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("**") {
            out.push_str(if bold { "</b>" } else { "<b>" });
            bold = !bold;
            rest = r;
        } else if let Some(r) = rest.strip_prefix('`') {
            out.push_str(if code { "</code>" } else { "<code>" });
            code = !code;
            rest = r;
        } else {
            let ch = rest.chars().next().unwrap_or(' ');
            out.push(ch);
            rest = &rest[ch.len_utf8()..];
        }
    }
    out
}

fn html_table(t: &Table, out: &mut String) {
    out.push_str(&format!(
        "<h2>{}</h2>\n<div class=\"wide\"><table>\n<thead><tr>",
        esc(&t.title)
    ));
    for h in &t.header {
        out.push_str(&format!("<th>{}</th>", esc(h)));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for r in &t.rows {
        out.push_str("<tr>");
        for (i, c) in r.iter().enumerate() {
            let numeric = c == "baseline"
                || c.starts_with(|ch: char| ch.is_ascii_digit() || "+-<[—N".contains(ch));
            let cls = match (c.contains('*'), numeric) {
                (true, _) => " class=\"sig\"",
                (false, true) => "",
                (false, false) => " class=\"txt\"",
            };
            // Keep "value ± stderr" on one line; a delta may wrap before its p-value.
            let text = esc(c).replace(" ± ", "&nbsp;±&nbsp;");
            if i == 0 {
                out.push_str(&format!("<th{cls}>{text}</th>"));
            } else {
                out.push_str(&format!("<td{cls}>{text}</td>"));
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table></div>\n");
    for n in &t.notes {
        out.push_str(&format!("<p class=\"note\">{}</p>\n", inline_md(n)));
    }
}

fn figure(p: &Plot, out: &mut String) {
    let svg = match p.svg.find("<svg") {
        Some(i) => &p.svg[i..],
        None => p.svg.as_str(),
    };
    out.push_str(&format!(
        "<figure>\n{svg}\n<figcaption>{} — <a href=\"plots/{n}.svg\">SVG</a>, <a href=\"plots/{n}.png\">PNG</a></figcaption>\n</figure>\n",
        esc(&p.title),
        n = p.name
    ));
}

const CSS: &str = "body{font-family:sans-serif;margin:24px;color:#111;max-width:1400px}\
table{border-collapse:collapse;margin:8px 0 4px 0;font-size:14px}\
th,td{border:1px solid #bbb;padding:4px 8px;text-align:right}div.wide{overflow-x:auto}\
thead th{background:#eee;text-align:center}tbody th{text-align:left;background:#fafafa}\
td.sig{background:#fff3c4;font-weight:bold}td.txt{text-align:left}p.note{font-size:13px;color:#333;max-width:1100px}\
figure{margin:16px 0}figcaption{font-size:13px;color:#333}svg{max-width:100%;height:auto}\
.method p{max-width:1100px;line-height:1.4}";

/// `report.html`: one file, the CSS and SVGs inline.
pub fn html(l: &Layout, plots: &[Plot], note: Option<&str>) -> String {
    let note = note.map_or(String::new(), |n| {
        format!("<p class=\"note\"><strong>{}</strong></p>\n", esc(n.trim()))
    });
    let mut out = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>sightline report</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>sightline report</h1>\n{note}<p>Models: {}.</p>\n",
        esc(&l.labels.join(", "))
    );
    let mut shown = Vec::new();
    for (t, plot) in all_tables(l) {
        html_table(&t, &mut out);
        if let Some(p) = plot.and_then(|n| plots.iter().find(|p| p.name == n)) {
            figure(p, &mut out);
            shown.push(p.name.clone());
        }
    }
    out.push_str("<h2>Method</h2>\n<div class=\"method\">\n");
    for p in &l.method {
        out.push_str(&format!("<p>{}</p>\n", inline_md(p)));
    }
    out.push_str("</div>\n");
    let rest: Vec<&Plot> = plots.iter().filter(|p| !shown.contains(&p.name)).collect();
    if !rest.is_empty() {
        out.push_str("<h2>Plots</h2>\n");
        for p in rest {
            figure(p, &mut out);
        }
    }
    out.push_str("</body>\n</html>\n");
    out
}
