//! SQuAD 2.0 dev documents as HF `squad_v2` hands them to the harness (`{id, title, context,
//! question, answers: {text}}`, article → paragraph → question order), from either source:
//!
//! - the bundled SQuAD-explorer pages (`data/squad2/explore-v2.0-dev/`), which the SQuAD
//!   authors rendered from `dev-v2.0.json` with a fixed template; read as
//!   `data/squad2/SOURCES.md` ("How to read the pages") says;
//! - the official `dev-v2.0.json` (`--squad2-json FILE`).
//!
//! The pages are read by exact template matching rather than with an HTML parser: every byte of
//! a context or question must survive (leading spaces, `"\n"` inside a `<pre>`), only pug's four
//! escapes occur, and a template mismatch must be an error naming the page and question, not a
//! silently different document. `answer_start` is not on the pages and is not used.

use serde_json::{json, Value};

use crate::data::DataSource;
use crate::error::{Error, Result};

const PAGES: &str = "squad2/explore-v2.0-dev";
const PARA_OPEN: &str = r#"<div class="para-wrap"><div class="row"><div class="col-md-6"><pre>"#;
const PARA_MID: &str = r#"</pre></div><div class="col-md-6"><div class="qas-wrap">"#;
const QA_OPEN: &str = r#"<div class="qa-wrap" data-id=""#;
const QA_QUESTION: &str = r#""><p> <strong class="question">"#;
const QA_ANSWERS: &str =
    r#"</strong></p><ul class="list-unstyled"><li><p><i>Ground Truth Answers: </i>"#;
const QA_END: &str = r#"</p></li><li class="prediction-holder">"#;
const ANSWER_OPEN: &str = r#"<span class="answer">"#;
const NO_ANSWER: &str = r#"<span class="no-answer">&lt;No Answer&gt;</span>"#;

/// Reverses pug's escaping, in the order `data/squad2/SOURCES.md` gives (`&amp;` last).
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

/// The text between `start` and the next `end`, and the position after `end`.
fn between<'a>(s: &'a str, start: usize, end: &str) -> Option<(&'a str, usize)> {
    let rest = s.get(start..)?;
    let p = rest.find(end)?;
    Some((&rest[..p], start + p + end.len()))
}

/// The article titles in `index.html` link order (each first occurrence).
fn article_order(index: &str) -> Vec<String> {
    let marker = "/explore/v2.0/dev/";
    let mut out: Vec<String> = Vec::new();
    let mut from = 0;
    while let Some(p) = index[from..].find(marker) {
        let start = from + p + marker.len();
        from = start;
        if let Some((name, _)) = between(index, start, "\"") {
            if let Some(title) = name.strip_suffix(".html") {
                if !out.iter().any(|t| t == title) {
                    out.push(title.to_string());
                }
            }
        }
    }
    out
}

/// The questions of one article page, in page order.
fn parse_page(html: &str, title: &str, file: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    let para_starts: Vec<usize> = html.match_indices(PARA_OPEN).map(|(i, _)| i).collect();
    if para_starts.is_empty() {
        return Err(Error::data(file, 0, "no paragraph (`para-wrap`) found"));
    }
    for (n, &start) in para_starts.iter().enumerate() {
        let first = docs.len() + 1;
        let bad = |msg: &str| Error::data(file, first, format!("paragraph {}: {msg}", n + 1));
        let (context, after) =
            between(html, start + PARA_OPEN.len(), PARA_MID).ok_or_else(|| bad("no `</pre>`"))?;
        let context = unescape(context);
        let end = para_starts.get(n + 1).copied().unwrap_or(html.len());
        let block = &html[after..end];
        let mut pos = 0;
        while let Some(p) = block[pos..].find(QA_OPEN) {
            let qa = pos + p + QA_OPEN.len();
            let (id, q0) =
                between(block, qa, QA_QUESTION).ok_or_else(|| bad("question template"))?;
            let (question, a0) =
                between(block, q0, QA_ANSWERS).ok_or_else(|| bad("answers template"))?;
            let (answers, next) =
                between(block, a0, QA_END).ok_or_else(|| bad("prediction template"))?;
            let texts: Vec<String> = if answers == NO_ANSWER {
                Vec::new()
            } else {
                let mut texts = Vec::new();
                let mut rest = answers;
                while !rest.is_empty() {
                    let body = rest
                        .strip_prefix(ANSWER_OPEN)
                        .ok_or_else(|| bad(&format!("question {id}: unexpected answer markup")))?;
                    let (text, used) = between(body, 0, "</span>")
                        .ok_or_else(|| bad(&format!("question {id}: unclosed answer")))?;
                    texts.push(unescape(text));
                    rest = &body[used..];
                }
                texts
            };
            docs.push(json!({
                "id": id,
                "title": title,
                "context": context,
                "question": unescape(question),
                "answers": {"text": texts},
            }));
            pos = next;
        }
    }
    Ok(docs)
}

/// All 11,873 dev questions from the bundled explorer pages.
pub fn from_pages(data: &DataSource) -> Result<Vec<Value>> {
    let index = data.read_text(&format!("{PAGES}/index.html"))?;
    let titles = article_order(&index);
    if titles.is_empty() {
        return Err(Error::data(
            &data.describe(&format!("{PAGES}/index.html")),
            0,
            "no article links (`/explore/v2.0/dev/<Title>.html`)",
        ));
    }
    let mut docs = Vec::new();
    for title in titles {
        let rel = format!("{PAGES}/{title}.html");
        let html = data.read_text(&rel)?;
        docs.extend(parse_page(&html, &unescape(&title), &data.describe(&rel))?);
    }
    Ok(docs)
}

/// The official `dev-v2.0.json` layout: `{data: [{title, paragraphs: [{context, qas: [{id,
/// question, answers: [{text, answer_start}], is_impossible}]}]}]}`.
pub fn from_json(text: &str, file: &str) -> Result<Vec<Value>> {
    let root: Value =
        serde_json::from_str(text).map_err(|e| Error::data(file, 0, format!("not JSON: {e}")))?;
    let articles = root["data"]
        .as_array()
        .ok_or_else(|| Error::data(file, 0, "expected a top-level `data` array (SQuAD layout)"))?;
    let mut docs = Vec::new();
    for a in articles {
        let title = a["title"].as_str().unwrap_or_default();
        for p in a["paragraphs"].as_array().into_iter().flatten() {
            let context = p["context"].as_str().ok_or_else(|| {
                Error::data(
                    file,
                    docs.len() + 1,
                    format!("{title}: paragraph without a `context` string"),
                )
            })?;
            for q in p["qas"].as_array().into_iter().flatten() {
                let s = |k: &str| {
                    q[k].as_str().ok_or_else(|| {
                        Error::data(
                            file,
                            docs.len() + 1,
                            format!("{title}: question without a `{k}` string"),
                        )
                    })
                };
                let texts: Vec<&str> = q["answers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a["text"].as_str())
                    .collect();
                docs.push(json!({
                    "id": s("id")?,
                    "title": title,
                    "context": context,
                    "question": s("question")?,
                    "answers": {"text": texts},
                }));
            }
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_hold_all_dev_questions() {
        let docs = from_pages(&DataSource::default()).unwrap();
        assert_eq!(docs.len(), 11873);
        let unanswerable = docs
            .iter()
            .filter(|d| d["answers"]["text"].as_array().unwrap().is_empty())
            .count();
        assert_eq!(unanswerable, 5945);
        let mut ids: Vec<&str> = docs.iter().map(|d| d["id"].as_str().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 11873);
        for d in &docs {
            let ctx = d["context"].as_str().unwrap();
            for a in d["answers"]["text"].as_array().unwrap() {
                assert!(ctx.contains(a.as_str().unwrap()), "{}", d["id"]);
            }
        }
        assert_eq!(docs[0]["title"], "Normans");
        assert_eq!(docs[0]["question"], "In what country is Normandy located?");
    }

    /// The official-format excerpt (Normans and Rhine, 706 questions) equals the pages.
    #[test]
    fn official_json_excerpt_equals_the_pages() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/retention/dev-v2.0.Normans-Rhine.json"
        );
        let json = from_json(&std::fs::read_to_string(path).unwrap(), path).unwrap();
        assert_eq!(json.len(), 706);
        let pages = from_pages(&DataSource::default()).unwrap();
        for d in &json {
            let p = pages.iter().find(|p| p["id"] == d["id"]).unwrap();
            assert_eq!(p, d);
        }
    }
}
