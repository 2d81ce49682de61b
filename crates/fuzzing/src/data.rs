//! Training data: LLaVA-format records (JSON array or JSON Lines) and the Alpaca, Orca,
//! ShareGPT and LLaVA-QA sources `sightline data convert` reads.

use std::sync::OnceLock;

use sightline_data::formats::{self, SourceFormat};
use sightline_data::labels::{self, Preprocess};
use sightline_data::preprocess::Template;
use sightline_data::stats::Stats;
use sightline_data::stream::{self, Flow};
use sightline_data::{validate, Record};
use sightline_guard::Folder;
use sightline_model::Tokenizer;

use crate::{put, scratch};

/// The built-in model's tokenizer grown as LLaVA's `train.py` grows it (v1 template, image
/// start/end tokens), built once: what `data stats --tokenizer builtin:stories260k` and
/// training tokenize records with.
fn tokenizer() -> &'static (Tokenizer, Template) {
    static TOK: OnceLock<(Tokenizer, Template)> = OnceLock::new();
    TOK.get_or_init(|| {
        let b = sightline_model::builtin::builtin("stories260k").expect("built-in model");
        let mut tok = Tokenizer::from_bytes(
            &b.tokenizer_json,
            Some(&b.tokenizer_config_json),
            b.origin,
            None,
            None,
        )
        .expect("built-in tokenizer");
        let template = Template::new("v1").expect("v1 template");
        labels::add_training_tokens(&mut tok, &template, true);
        (tok, template)
    })
}

/// A training file through [`stream::for_each`] as `data validate --image-folder`, `data stats
/// --tokenizer` and training read it: every record checked ([`validate::check`], image paths
/// joined inside a folder), counted ([`Stats::add`]) and, when it is a record, turned into
/// token ids and labels ([`Preprocess::sample`]).
pub fn llava_records(data: &[u8]) {
    let dir = scratch();
    let path = put(dir.path(), "train.json", data);
    let images = dir.path().join("imgs");
    std::fs::create_dir_all(&images).expect("cannot create the image folder");
    let Ok(folder) = Folder::new(&images, false) else {
        return;
    };
    let opts = validate::Options {
        image_folder: Some(&folder),
    };
    let (tok, template) = tokenizer();
    let pre = Preprocess::new(
        tok,
        template.clone(),
        labels::Options::for_template(template, tok),
    );
    let mut stats = Stats::default();
    let _ = stream::for_each(&path, |_, v| {
        let _ = validate::check(&v, &opts);
        stats.add(&v);
        let sample = Record::from_value(&v)
            .ok()
            .and_then(|r| pre.sample(&r).ok());
        stats.add_sample(sample.as_ref(), 2048);
        Ok(Flow::Continue)
    });
    let _ = stats.to_json();
}

/// A source file through [`stream::for_each`] and [`formats::convert`] in each of the four
/// source formats (`data convert --from alpaca|orca|sharegpt|llava-qa`, the last also with a
/// type filter), each converted record checked as `data validate` would.
pub fn sources(data: &[u8]) {
    let dir = scratch();
    let path = put(dir.path(), "source.json", data);
    let plain = formats::Options::default();
    let conv_only = formats::Options {
        qa_type: Some("conv".into()),
        ..Default::default()
    };
    let runs = [
        (SourceFormat::Alpaca, &plain),
        (SourceFormat::Orca, &plain),
        (SourceFormat::ShareGpt, &plain),
        (SourceFormat::LlavaQa, &plain),
        (SourceFormat::LlavaQa, &conv_only),
    ];
    let _ = stream::for_each(&path, |i, v| {
        for (format, opts) in runs {
            if let Ok(Some(out)) = formats::convert(format, &v, i, opts) {
                let _ = validate::check(&out, &validate::Options::default());
            }
        }
        Ok(Flow::Continue)
    });
}
