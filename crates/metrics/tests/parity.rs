//! Parity with the Python reference packages: every BLEU (sacrebleu 1.5.0) and ROUGE
//! (rouge_score 0.1.2) value, tokenizer output and lm-eval aggregate in
//! tests/fixtures/metrics/bleu_rouge.json (written by scripts/reference/make_metric_fixtures.py)
//! must be reproduced within 1e-9 absolute.

use serde_json::Value;
use sightline_metrics::{aggregate, bleu, rouge};

const TOL: f64 = 1e-9;

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/metrics/bleu_rouge.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

fn s(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
        .to_owned()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap_or_else(|| panic!("{v} is not an array"))
        .iter()
        .map(|x| {
            x.as_u64()
                .unwrap_or_else(|| panic!("{x} is not an integer")) as usize
        })
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{v} is not an array"))
        .iter()
        .map(|x| {
            x.as_str()
                .unwrap_or_else(|| panic!("{x} is not a string"))
                .to_owned()
        })
        .collect()
}

/// Tracks the largest absolute difference seen for one metric.
#[derive(Default)]
struct Worst {
    diff: f64,
    id: String,
    count: usize,
    exact: usize,
}

impl Worst {
    fn check(&mut self, what: &str, id: &str, got: f64, want: f64) {
        let d = (got - want).abs();
        assert!(
            d <= TOL,
            "{what} {id}: got {got:?}, golden {want:?} (|diff| = {d:e})"
        );
        self.count += 1;
        if got.to_bits() == want.to_bits() {
            self.exact += 1;
        }
        if d > self.diff || self.id.is_empty() {
            self.diff = d;
            self.id = id.to_owned();
        }
    }

    fn report(&self, what: &str) {
        println!(
            "{what:<12} {} values, {} bit-identical, worst |diff| {:e} ({})",
            self.count, self.exact, self.diff, self.id
        );
    }
}

#[test]
fn bleu_matches_sacrebleu_1_5_0() {
    let g = golden();
    let pairs = g["pairs"].as_array().expect("pairs");
    assert!(pairs.len() >= 250, "only {} pairs", pairs.len());
    let mut worst = Worst::default();
    let mut errors = 0;
    for p in pairs {
        let id = s(p, "id");
        let (hyp, reference) = (s(p, "hypothesis"), s(p, "reference"));
        let got = bleu::sentence_bleu(&hyp, &reference);
        if p["bleu"].is_null() {
            // sacrebleu raised EOFError (empty reference).
            assert!(
                got.is_nan(),
                "{id}: sacrebleu raised {}, got {got}",
                p["bleu_error"]
            );
            assert!(bleu::bleu_stats(&hyp, &reference).is_none(), "{id}");
            errors += 1;
            continue;
        }
        let stats = bleu::bleu_stats(&hyp, &reference).unwrap_or_else(|| panic!("{id}: no stats"));
        assert_eq!(
            stats.correct.to_vec(),
            usizes(&p["bleu_counts"]),
            "{id} counts"
        );
        assert_eq!(
            stats.total.to_vec(),
            usizes(&p["bleu_totals"]),
            "{id} totals"
        );
        assert_eq!(
            stats.sys_len,
            usizes(&Value::Array(vec![p["sys_len"].clone()]))[0],
            "{id}"
        );
        assert_eq!(
            stats.ref_len,
            usizes(&Value::Array(vec![p["ref_len"].clone()]))[0],
            "{id}"
        );
        worst.check("bleu", &id, got, f(&p["bleu"]));
    }
    worst.report("bleu");
    println!("bleu         {errors} pairs where sacrebleu raises (NaN here)");
}

#[test]
fn rouge_matches_rouge_score_0_1_2() {
    let g = golden();
    let pairs = g["pairs"].as_array().expect("pairs");
    let mut worst: [Worst; 3] = Default::default();
    let mut worst_pr = Worst::default();
    for p in pairs {
        let id = s(p, "id");
        let (hyp, reference) = (s(p, "hypothesis"), s(p, "reference"));
        let r = rouge::rouge(&reference, &hyp);
        let detailed = [
            rouge::rouge_n(&reference, &hyp, 1),
            rouge::rouge_n(&reference, &hyp, 2),
            rouge::rouge_lsum(&reference, &hyp),
        ];
        for (k, (key, got)) in [
            ("rouge1", r.rouge1),
            ("rouge2", r.rouge2),
            ("rougeLsum", r.rouge_lsum),
        ]
        .into_iter()
        .enumerate()
        {
            worst[k].check(key, &id, got, f(&p[key]["fmeasure"]));
            assert_eq!(got.to_bits(), detailed[k].fmeasure.to_bits(), "{id} {key}");
            worst_pr.check(key, &id, detailed[k].precision, f(&p[key]["precision"]));
            worst_pr.check(key, &id, detailed[k].recall, f(&p[key]["recall"]));
        }
    }
    worst[0].report("rouge1");
    worst[1].report("rouge2");
    worst[2].report("rougeLsum");
    worst_pr.report("rouge P/R");
}

#[test]
fn tokenizers_match() {
    let g = golden();
    let intl = g["intl_tokenize"].as_array().expect("intl_tokenize");
    let rt = g["rouge_tokenize"].as_array().expect("rouge_tokenize");
    assert!(intl.len() >= 24 && rt.len() >= 24);
    for t in intl {
        let text = s(t, "text");
        assert_eq!(
            bleu::tokenize_intl(&text),
            strings(&t["tokens"]),
            "intl {text:?}"
        );
    }
    for t in rt {
        let text = s(t, "text");
        assert_eq!(
            rouge::tokenize(&text),
            strings(&t["tokens"]),
            "rouge {text:?}"
        );
    }
}

#[test]
fn aggregates_match_lm_eval() {
    let g = golden();
    let mut worst = Worst::default();
    for (i, a) in g["aggregate"]
        .as_array()
        .expect("aggregate")
        .iter()
        .enumerate()
    {
        let xs: Vec<f64> = a["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(f)
            .collect();
        let id = format!("aggregate-{i} (n={})", xs.len());
        for (key, got) in [
            ("mean", aggregate::mean(&xs)),
            ("mean_stderr", aggregate::mean_stderr(&xs)),
        ] {
            if a[key].is_null() {
                assert!(got.is_nan(), "{id} {key}: Python raises, got {got}");
            } else {
                worst.check(key, &id, got, f(&a[key]));
            }
        }
    }
    worst.report("aggregate");
}
