//! `tokenizer.json` files that broke the tokenizers crate: refused with the file named.

use std::path::PathBuf;

use sightline_model::Tokenizer;

/// tokenizers 0.22 panics on each of these decoders (see `Tokenizer::from_bytes`): cut off, a
/// lone surrogate escape, a byte that is not UTF-8. Found by fuzzing
/// (fuzz/regressions/tokenizer/).
#[test]
fn a_broken_decoder_is_an_error_naming_the_file() {
    let inputs: [&[u8]; 3] = [
        b"{\"decoder\": {\"type\": \"Fuse\"",
        b"{\"decoder\": {\"type\": \"\\udc00\"}}",
        b"{\"decoder\": {\"type\": \"\x85\"}}",
    ];
    for json in inputs {
        let path = PathBuf::from("m/tokenizer.json");
        match Tokenizer::from_bytes(json, None, path, None, None) {
            Ok(_) => panic!("{json:?} was accepted"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("m/tokenizer.json") && msg.contains("not valid JSON"),
                    "{msg}"
                );
            }
        }
    }
}

/// One token id far past the vocabulary made saving walk (and print) every missing id: seconds
/// for a 70-byte file. Found by fuzzing (fuzz/regressions/tokenizer/).
#[test]
fn an_id_far_beyond_the_vocabulary_is_refused() {
    let json = br#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 65555554}, "merges": []}}"#;
    let path = PathBuf::from("m/tokenizer.json");
    match Tokenizer::from_bytes(json, None, path, None, None) {
        Ok(_) => panic!("accepted"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("m/tokenizer.json") && msg.contains("token id 65555554"),
                "{msg}"
            );
        }
    }
    let dense = br#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 3}, "merges": []}}"#;
    assert!(Tokenizer::from_bytes(dense, None, PathBuf::from("t.json"), None, None).is_ok());
}

/// The unknown token (what LLaVA pads with under every template but `v0`) is the one
/// `tokenizer_config.json` names, as transformers reads it: SmolLM2 names `<|endoftext|>` and
/// has no `<unk>`; without a name, `<unk>` when the vocabulary holds it; else none.
#[test]
fn the_unknown_token_is_the_one_tokenizer_config_names() {
    let json = br#"{"model": {"type": "BPE", "vocab": {"<|endoftext|>": 0, "<unk>": 1, "a": 2}, "merges": []}}"#;
    let path = || PathBuf::from("m/tokenizer.json");
    let smol = br#"{"unk_token": "<|endoftext|>"}"#;
    let t = Tokenizer::from_bytes(json, Some(smol), path(), None, None).expect("loads");
    assert_eq!(t.unk_id, Some(0));
    let t = Tokenizer::from_bytes(json, None, path(), None, None).expect("loads");
    assert_eq!(t.unk_id, Some(1));
    // An AddedToken object, as newer files write it.
    let obj = br#"{"unk_token": {"content": "a", "lstrip": false}}"#;
    let t = Tokenizer::from_bytes(json, Some(obj), path(), None, None).expect("loads");
    assert_eq!(t.unk_id, Some(2));
    let none = br#"{"model": {"type": "BPE", "vocab": {"x": 0}, "merges": []}}"#;
    let t = Tokenizer::from_bytes(none, None, path(), None, None).expect("loads");
    assert_eq!(t.unk_id, None);
}
