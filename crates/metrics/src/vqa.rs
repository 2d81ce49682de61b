//! VQAv2 accuracy exactly as the official evaluation script computes it (GT-Vision-Lab/VQA
//! @a013f00 `PythonEvaluationTools/vqaEvaluation/vqaEval.py`, copied into Sight-Beyond-Text
//! @47f96a32 as `llava/eval/mmoverall/vqa_metric.py`), plus SBT's answer post-processing
//! (`postprocess_vqa_generation`). Spec: `spec/multimodal-eval.md` E6.
//!
//! Per question ([`accuracy`]):
//! 1. `\n` and `\t` become spaces and every answer (prediction and the annotators') is stripped.
//! 2. **Only if the stripped annotator answers are not all identical**, all of them and the
//!    prediction are [`normalize`]d. So when ten annotators said `yes`, `"Yes"` scores 0: a quirk
//!    the reported numbers depend on, kept here.
//! 3. For each annotator *i*, count the *other* annotators whose answer equals the prediction
//!    (`m_i`) and take `min(1, m_i / 3)`; the accuracy is the mean over annotators. (The official
//!    code drops annotator *i* by comparing whole annotation dicts, which differ by `answer_id`,
//!    so exactly one entry is dropped; here it is dropped by position.)
//!
//! Python's `\d` (Unicode decimal digits, category Nd), `str.lower()`, `str.split()` and
//! `str.strip()` are reproduced; see [`normalize`] for the punctuation rules.

use std::collections::HashSet;

use unicode_general_category::{get_general_category, GeneralCategory};

use crate::pystr::{is_py_space, py_split};

/// The 21 characters `processPunctuation` deletes or replaces (in its order, which does not
/// matter: each character is handled independently).
const PUNCT: [char; 21] = [
    ';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',',
    '?', '!',
];

/// `manualMap`: number words to digits (`none` counts as `0`).
const MANUAL_MAP: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

/// `contractions` of vqaEval.py, verbatim keys. The capitalised keys (`Id've`, `I'dve`, `Im`,
/// `Ive`) can never match because words are lower-cased first; they are kept for fidelity.
/// `somebody'd` maps to `somebodyd` (sic).
const CONTRACTIONS: [(&str, &str); 120] = [
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

/// `processPunctuation` deletes at most this many periods: vqaEval.py passes `re.UNICODE` (= 32)
/// as the positional `count` argument of `re.sub`.
const MAX_PERIODS_DELETED: usize = 32;

/// Python's `\d` in a `str` pattern: a Unicode decimal digit (general category Nd).
fn is_py_digit(c: char) -> bool {
    get_general_category(c) == GeneralCategory::DecimalNumber
}

/// Python's `s.strip()`.
fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// vqaEval.py `processPunctuation`.
///
/// For each character `p` of ``; / [ ] " { } ( ) = + \ _ - > < @ ` , ? !``: if the *original*
/// text contains `p` followed or preceded by a space, or contains a digit-comma-digit anywhere,
/// every `p` is deleted; otherwise every `p` becomes a space. Then each `.` not followed by a
/// digit is deleted, the first 32 only. (The pattern's `(?!<=\d)` is a typo for a lookbehind and
/// is a lookahead that always succeeds in front of a `.`.)
pub fn process_punctuation(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let digit_comma_digit = chars
        .windows(3)
        .any(|w| is_py_digit(w[0]) && w[1] == ',' && is_py_digit(w[2]));
    // For each punctuation character: delete it (true) or turn it into a space (false).
    let delete = PUNCT.map(|p| {
        digit_comma_digit
            || chars
                .windows(2)
                .any(|w| (w[0] == p && w[1] == ' ') || (w[0] == ' ' && w[1] == p))
    });
    let mut out: Vec<char> = Vec::with_capacity(chars.len());
    for &c in &chars {
        match PUNCT.iter().position(|&p| p == c) {
            None => out.push(c),
            Some(i) if !delete[i] => out.push(' '),
            Some(_) => {}
        }
    }
    // Replacements are per character, so the order of PUNCT never matters: a deletion or a space
    // never creates another punctuation character.
    let mut result = String::with_capacity(out.len());
    let mut deleted = 0;
    for (i, &c) in out.iter().enumerate() {
        let next_is_digit = out.get(i + 1).is_some_and(|&n| is_py_digit(n));
        if c == '.' && !next_is_digit && deleted < MAX_PERIODS_DELETED {
            deleted += 1;
            continue;
        }
        result.push(c);
    }
    result
}

/// vqaEval.py `processDigitArticle`: lower-case, split on whitespace, map number words to digits
/// (`two` → `2`, `none` → `0`), drop `a`/`an`/`the`, expand the contraction table (`dont` →
/// `don't`), join with single spaces.
pub fn process_digit_article(text: &str) -> String {
    let lowered = text.to_lowercase();
    let words: Vec<&str> = py_split(&lowered)
        .map(|w| {
            MANUAL_MAP
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, v)| *v)
        })
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(|w| {
            CONTRACTIONS
                .iter()
                .find(|(k, _)| *k == w)
                .map_or(w, |(_, v)| *v)
        })
        .collect();
    words.join(" ")
}

/// The official normalisation of one answer: [`process_punctuation`] then
/// [`process_digit_article`].
///
/// ```
/// use sightline_metrics::vqa::normalize;
/// assert_eq!(normalize("Two dogs."), "2 dogs");
/// assert_eq!(normalize("dont know"), "don't know");
/// assert_eq!(normalize("3.5"), "3.5");
/// ```
pub fn normalize(text: &str) -> String {
    process_digit_article(&process_punctuation(text))
}

/// `\n` and `\t` → space, then strip, as `evaluate` does to every answer first.
fn clean(text: &str) -> String {
    py_strip(&text.replace(['\n', '\t'], " ")).to_owned()
}

/// VQA accuracy of one prediction against its annotators' answers (10 in VQAv2), in 0..=1.
///
/// `min(1, m_i / 3)` averaged over annotators, where `m_i` counts the other annotators that
/// gave the prediction (see the module docs for when answers are normalised). An empty
/// annotator list returns NaN (Python divides by zero).
///
/// ```
/// use sightline_metrics::vqa::accuracy;
/// let ten = |a: &str, n: usize, b: &str| {
///     let mut v = vec![a.to_string(); n];
///     v.resize(10, b.to_string());
///     v
/// };
/// assert_eq!(accuracy("2", &ten("two", 3, "three")), 0.9);
/// assert_eq!(accuracy("Yes", &ten("yes", 10, "yes")), 0.0); // all identical: no normalisation
/// ```
pub fn accuracy(answer: &str, annotator_answers: &[String]) -> f64 {
    let mut gts: Vec<String> = annotator_answers.iter().map(|a| clean(a)).collect();
    let mut res = clean(answer);
    let distinct: HashSet<&str> = gts.iter().map(String::as_str).collect();
    if distinct.len() > 1 {
        gts = gts.iter().map(|g| normalize(g)).collect();
        res = normalize(&res);
    }
    let matches = gts.iter().filter(|g| **g == res).count();
    // Leaving annotator i out: m_i = matches - [gts[i] == res]. Sum in annotator order, as the
    // reference does.
    let mut sum = 0.0;
    for g in &gts {
        let others = matches - usize::from(*g == res);
        sum += f64::min(1.0, others as f64 / 3.0);
    }
    sum / gts.len() as f64
}

/// SBT `postprocess_vqa_generation`: keep the text before the first `Question`, `Answer`, `###`
/// or `</s>`; then, by *substring*, anything containing `Yes`/`yes` becomes `"Yes"`, else
/// anything containing `No`/`no` becomes `"No"` (so `snow`, `none` and `piano` all become
/// `"No"`), else the text is kept as is (unstripped).
pub fn postprocess_generation(text: &str) -> String {
    let cut = ["Question", "Answer", "###", "</s>"]
        .iter()
        .filter_map(|m| text.find(m))
        .min()
        .unwrap_or(text.len());
    let head = &text[..cut];
    if head.contains("Yes") || head.contains("yes") {
        "Yes".to_owned()
    } else if head.contains("No") || head.contains("no") {
        "No".to_owned()
    } else {
        head.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contraction_table_is_complete() {
        // vqaEval.py's dict has 120 entries, none repeated.
        let keys: HashSet<&str> = CONTRACTIONS.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys.len(), 120);
    }

    #[test]
    fn closed_form() {
        // acc = (10-m)/10·min(1, m/3) + m/10·min(1, (m-1)/3) when m of 10 annotators match.
        for m in 0..=10usize {
            let mut gts = vec!["cat".to_owned(); m];
            gts.resize(10, "dog".to_owned());
            let m_f = m as f64;
            let expected = (10.0 - m_f) / 10.0 * f64::min(1.0, m_f / 3.0)
                + m_f / 10.0 * f64::min(1.0, (m_f - 1.0) / 3.0);
            assert!((accuracy("cat", &gts) - expected).abs() < 1e-12, "m={m}");
        }
    }

    #[test]
    fn period_rules() {
        assert_eq!(process_punctuation("3.5."), "3.5");
        assert_eq!(process_punctuation("a,b 1,2"), "ab 12");
        assert!(accuracy("x", &[]).is_nan());
    }
}
