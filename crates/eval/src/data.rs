//! Benchmark data shipped inside the binary (TruthfulQA, ETHICS test splits, POPE and Unicorn
//! sketchy-VQA questions, the bundled sketches, MMLU, GSM8K, the MathQA test split, BoolQ and the
//! SQuAD 2.0 explorer pages: see
//! `data/*/SOURCES.md` for provenance and licences), or read from `--data-dir` with the same
//! layout.

use std::borrow::Cow;
use std::path::PathBuf;

use crate::error::{Error, Result};

macro_rules! embed {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!("../../../data/", $path)) as &[u8])),*]
    };
}

/// Every embedded file, by its path under `data/`.
static EMBEDDED: &[(&str, &[u8])] = embed![
    "truthfulqa/v0/mc_task.json",
    "truthfulqa/v0/TruthfulQA.csv",
    "truthfulqa/mc_task.json",
    "truthfulqa/TruthfulQA.csv",
    "ethics/commonsense/cm_test.csv",
    "ethics/deontology/deontology_test.csv",
    "ethics/justice/justice_test.csv",
    "ethics/utilitarianism/util_test.csv",
    "ethics/virtue/virtue_test.csv",
    "pope/coco_pope_random.json",
    "pope/coco_pope_popular.json",
    "pope/coco_pope_adversarial.json",
    "unicorn/sketchy-vqa/sketchy-vqa.json",
    "unicorn/sketchy-vqa/sketchy-challenging.json",
    "unicorn/oodcv-vqa/oodcv-vqa.json",
    "unicorn/oodcv-vqa/oodcv-counterfactual.json",
    // The retention checks (issue 16): data/{gsm8k,mathqa,boolq,squad2,mmlu}/SOURCES.md.
    "gsm8k/train.jsonl",
    "gsm8k/test.jsonl",
    "mathqa/test.json",
    "boolq/val.jsonl",
    "squad2/explore-v2.0-dev/1973_oil_crisis.html",
    "squad2/explore-v2.0-dev/Amazon_rainforest.html",
    "squad2/explore-v2.0-dev/Black_Death.html",
    "squad2/explore-v2.0-dev/Civil_disobedience.html",
    "squad2/explore-v2.0-dev/Computational_complexity_theory.html",
    "squad2/explore-v2.0-dev/Construction.html",
    "squad2/explore-v2.0-dev/Ctenophora.html",
    "squad2/explore-v2.0-dev/Economic_inequality.html",
    "squad2/explore-v2.0-dev/European_Union_law.html",
    "squad2/explore-v2.0-dev/Force.html",
    "squad2/explore-v2.0-dev/French_and_Indian_War.html",
    "squad2/explore-v2.0-dev/Fresno,_California.html",
    "squad2/explore-v2.0-dev/Geology.html",
    "squad2/explore-v2.0-dev/Harvard_University.html",
    "squad2/explore-v2.0-dev/Huguenot.html",
    "squad2/explore-v2.0-dev/Immune_system.html",
    "squad2/explore-v2.0-dev/Imperialism.html",
    "squad2/explore-v2.0-dev/Intergovernmental_Panel_on_Climate_Change.html",
    "squad2/explore-v2.0-dev/Islamism.html",
    "squad2/explore-v2.0-dev/Jacksonville,_Florida.html",
    "squad2/explore-v2.0-dev/Normans.html",
    "squad2/explore-v2.0-dev/Oxygen.html",
    "squad2/explore-v2.0-dev/Packet_switching.html",
    "squad2/explore-v2.0-dev/Pharmacy.html",
    "squad2/explore-v2.0-dev/Prime_number.html",
    "squad2/explore-v2.0-dev/Private_school.html",
    "squad2/explore-v2.0-dev/Rhine.html",
    "squad2/explore-v2.0-dev/Scottish_Parliament.html",
    "squad2/explore-v2.0-dev/Sky_(United_Kingdom).html",
    "squad2/explore-v2.0-dev/Southern_California.html",
    "squad2/explore-v2.0-dev/Steam_engine.html",
    "squad2/explore-v2.0-dev/University_of_Chicago.html",
    "squad2/explore-v2.0-dev/Victoria_(Australia).html",
    "squad2/explore-v2.0-dev/Warsaw.html",
    "squad2/explore-v2.0-dev/Yuan_dynasty.html",
    "squad2/explore-v2.0-dev/index.html",
    "mmlu/dev/abstract_algebra_dev.csv",
    "mmlu/dev/anatomy_dev.csv",
    "mmlu/dev/astronomy_dev.csv",
    "mmlu/dev/business_ethics_dev.csv",
    "mmlu/dev/clinical_knowledge_dev.csv",
    "mmlu/dev/college_biology_dev.csv",
    "mmlu/dev/college_chemistry_dev.csv",
    "mmlu/dev/college_computer_science_dev.csv",
    "mmlu/dev/college_mathematics_dev.csv",
    "mmlu/dev/college_medicine_dev.csv",
    "mmlu/dev/college_physics_dev.csv",
    "mmlu/dev/computer_security_dev.csv",
    "mmlu/dev/conceptual_physics_dev.csv",
    "mmlu/dev/econometrics_dev.csv",
    "mmlu/dev/electrical_engineering_dev.csv",
    "mmlu/dev/elementary_mathematics_dev.csv",
    "mmlu/dev/formal_logic_dev.csv",
    "mmlu/dev/global_facts_dev.csv",
    "mmlu/dev/high_school_biology_dev.csv",
    "mmlu/dev/high_school_chemistry_dev.csv",
    "mmlu/dev/high_school_computer_science_dev.csv",
    "mmlu/dev/high_school_european_history_dev.csv",
    "mmlu/dev/high_school_geography_dev.csv",
    "mmlu/dev/high_school_government_and_politics_dev.csv",
    "mmlu/dev/high_school_macroeconomics_dev.csv",
    "mmlu/dev/high_school_mathematics_dev.csv",
    "mmlu/dev/high_school_microeconomics_dev.csv",
    "mmlu/dev/high_school_physics_dev.csv",
    "mmlu/dev/high_school_psychology_dev.csv",
    "mmlu/dev/high_school_statistics_dev.csv",
    "mmlu/dev/high_school_us_history_dev.csv",
    "mmlu/dev/high_school_world_history_dev.csv",
    "mmlu/dev/human_aging_dev.csv",
    "mmlu/dev/human_sexuality_dev.csv",
    "mmlu/dev/international_law_dev.csv",
    "mmlu/dev/jurisprudence_dev.csv",
    "mmlu/dev/logical_fallacies_dev.csv",
    "mmlu/dev/machine_learning_dev.csv",
    "mmlu/dev/management_dev.csv",
    "mmlu/dev/marketing_dev.csv",
    "mmlu/dev/medical_genetics_dev.csv",
    "mmlu/dev/miscellaneous_dev.csv",
    "mmlu/dev/moral_disputes_dev.csv",
    "mmlu/dev/moral_scenarios_dev.csv",
    "mmlu/dev/nutrition_dev.csv",
    "mmlu/dev/philosophy_dev.csv",
    "mmlu/dev/prehistory_dev.csv",
    "mmlu/dev/professional_accounting_dev.csv",
    "mmlu/dev/professional_law_dev.csv",
    "mmlu/dev/professional_medicine_dev.csv",
    "mmlu/dev/professional_psychology_dev.csv",
    "mmlu/dev/public_relations_dev.csv",
    "mmlu/dev/security_studies_dev.csv",
    "mmlu/dev/sociology_dev.csv",
    "mmlu/dev/us_foreign_policy_dev.csv",
    "mmlu/dev/virology_dev.csv",
    "mmlu/dev/world_religions_dev.csv",
    "mmlu/test/abstract_algebra_test.csv",
    "mmlu/test/anatomy_test.csv",
    "mmlu/test/astronomy_test.csv",
    "mmlu/test/business_ethics_test.csv",
    "mmlu/test/clinical_knowledge_test.csv",
    "mmlu/test/college_biology_test.csv",
    "mmlu/test/college_chemistry_test.csv",
    "mmlu/test/college_computer_science_test.csv",
    "mmlu/test/college_mathematics_test.csv",
    "mmlu/test/college_medicine_test.csv",
    "mmlu/test/college_physics_test.csv",
    "mmlu/test/computer_security_test.csv",
    "mmlu/test/conceptual_physics_test.csv",
    "mmlu/test/econometrics_test.csv",
    "mmlu/test/electrical_engineering_test.csv",
    "mmlu/test/elementary_mathematics_test.csv",
    "mmlu/test/formal_logic_test.csv",
    "mmlu/test/global_facts_test.csv",
    "mmlu/test/high_school_biology_test.csv",
    "mmlu/test/high_school_chemistry_test.csv",
    "mmlu/test/high_school_computer_science_test.csv",
    "mmlu/test/high_school_european_history_test.csv",
    "mmlu/test/high_school_geography_test.csv",
    "mmlu/test/high_school_government_and_politics_test.csv",
    "mmlu/test/high_school_macroeconomics_test.csv",
    "mmlu/test/high_school_mathematics_test.csv",
    "mmlu/test/high_school_microeconomics_test.csv",
    "mmlu/test/high_school_physics_test.csv",
    "mmlu/test/high_school_psychology_test.csv",
    "mmlu/test/high_school_statistics_test.csv",
    "mmlu/test/high_school_us_history_test.csv",
    "mmlu/test/high_school_world_history_test.csv",
    "mmlu/test/human_aging_test.csv",
    "mmlu/test/human_sexuality_test.csv",
    "mmlu/test/international_law_test.csv",
    "mmlu/test/jurisprudence_test.csv",
    "mmlu/test/logical_fallacies_test.csv",
    "mmlu/test/machine_learning_test.csv",
    "mmlu/test/management_test.csv",
    "mmlu/test/marketing_test.csv",
    "mmlu/test/medical_genetics_test.csv",
    "mmlu/test/miscellaneous_test.csv",
    "mmlu/test/moral_disputes_test.csv",
    "mmlu/test/moral_scenarios_test.csv",
    "mmlu/test/nutrition_test.csv",
    "mmlu/test/philosophy_test.csv",
    "mmlu/test/prehistory_test.csv",
    "mmlu/test/professional_accounting_test.csv",
    "mmlu/test/professional_law_test.csv",
    "mmlu/test/professional_medicine_test.csv",
    "mmlu/test/professional_psychology_test.csv",
    "mmlu/test/public_relations_test.csv",
    "mmlu/test/security_studies_test.csv",
    "mmlu/test/sociology_test.csv",
    "mmlu/test/us_foreign_policy_test.csv",
    "mmlu/test/virology_test.csv",
    "mmlu/test/world_religions_test.csv",
];

/// The bundled sketches (`data/unicorn/SOURCES.md`), so the sketchy-VQA tasks run offline from
/// any working directory; looked up by [`bundled_image`].
static EMBEDDED_IMAGES: &[(&str, &[u8])] = embed![
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/bed/1293.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/blimp/1909.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/book/1942.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/bulldozer/2609.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/bush/2749.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/camera/3350.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/church/4185.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/dog/5291.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/face/6246.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/hand/7883.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/head/8087.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/horse/8535.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/house/8811.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/key/9257.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/lightbulb/9692.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/megaphone/10168.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/present/12981.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/radio/13467.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/rollerblades/13815.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/ship/14931.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/streetlight/16543.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/sun/16778.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/table/17242.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/telephone/17666.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/tree/18625.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/tv/19013.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/wheelbarrow/19582.png",
    "unicorn/sketchy-vqa/images/skechydata/sketchespng/wineglass/19791.png",
];

/// Every bundled image: (path under `data/`, bytes).
pub fn bundled_images() -> impl Iterator<Item = (&'static str, &'static [u8])> {
    EMBEDDED_IMAGES.iter().copied()
}

/// A bundled image by its path under `data/`.
pub fn bundled_image(rel: &str) -> Option<&'static [u8]> {
    EMBEDDED_IMAGES
        .iter()
        .find(|(name, _)| *name == rel)
        .map(|(_, bytes)| *bytes)
}

/// Which TruthfulQA release the tasks read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TruthfulQaVersion {
    /// The original release: what HF `truthful_qa` (and so lm-eval and the paper) serves.
    #[default]
    V0,
    /// The 2021-10-10 release with extra reference answers.
    Current,
}

impl TruthfulQaVersion {
    pub fn dir(self) -> &'static str {
        match self {
            TruthfulQaVersion::V0 => "truthfulqa/v0",
            TruthfulQaVersion::Current => "truthfulqa",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TruthfulQaVersion::V0 => "v0",
            TruthfulQaVersion::Current => "current",
        }
    }
}

/// Where task data comes from.
#[derive(Debug, Clone, Default)]
pub struct DataSource {
    /// A directory laid out like the repository's `data/`; `None` = the embedded copies.
    pub dir: Option<PathBuf>,
    pub truthfulqa: TruthfulQaVersion,
    /// `--image-root`: where image tasks find their images (overrides a task's bundled ones).
    pub image_root: Option<PathBuf>,
    /// `--allow-outside-paths`: a task file's image names may leave the image root (absolute
    /// paths, `..`, symlinks out of it); off, such a record is an error.
    pub allow_outside_paths: bool,
    /// How image tasks prompt and decode.
    pub protocol: crate::protocol::Protocol,
    /// VQAv2's user-supplied `v2_OpenEnded_mscoco_val2014_questions.json`.
    pub vqav2_questions: Option<PathBuf>,
    /// VQAv2's user-supplied `v2_mscoco_val2014_annotations.json`.
    pub vqav2_annotations: Option<PathBuf>,
    /// The user's MME copy (`MME_Benchmark_release_version`, one folder per sub-task).
    pub mme_dir: Option<PathBuf>,
    /// SBT's COCO caption files (`mscoco_{train,test}.json`, `test_images/`).
    pub coco_caption_dir: Option<PathBuf>,
    /// SBT's Flickr30k caption files (`flickr30k_{train,test}.json`, `test_images/`).
    pub flickr30k_caption_dir: Option<PathBuf>,
    /// MathQA's `train.json` (HF `math_qa` train), the 4-shot pool; not bundled.
    pub mathqa_train: Option<PathBuf>,
    /// The official SQuAD 2.0 `dev-v2.0.json`, read instead of the bundled explorer pages.
    pub squad2_json: Option<PathBuf>,
}

impl DataSource {
    /// The bytes of `rel` (a path under `data/`).
    pub fn read(&self, rel: &str) -> Result<Cow<'static, [u8]>> {
        match &self.dir {
            Some(dir) => {
                let p = dir.join(rel);
                std::fs::read(&p)
                    .map(Cow::Owned)
                    .map_err(|e| Error::io(p, e))
            }
            None => EMBEDDED
                .iter()
                .find(|(name, _)| *name == rel)
                .map(|(_, bytes)| Cow::Borrowed(*bytes))
                .ok_or_else(|| Error::Config(format!("no embedded data file {rel}"))),
        }
    }

    /// How error messages name `rel`.
    pub fn describe(&self, rel: &str) -> String {
        match &self.dir {
            Some(dir) => dir.join(rel).display().to_string(),
            None => format!("<embedded>/data/{rel}"),
        }
    }

    /// Reads a UTF-8 text file, dropping a leading byte-order mark.
    pub fn read_text(&self, rel: &str) -> Result<String> {
        let bytes = self.read(rel)?;
        let text = String::from_utf8(bytes.into_owned())
            .map_err(|e| Error::data(&self.describe(rel), 0, format!("not UTF-8: {e}")))?;
        Ok(text
            .strip_prefix('\u{feff}')
            .map(str::to_string)
            .unwrap_or(text))
    }

    /// Reads a CSV file into rows of fields (RFC 4180, as Python's `csv` with `newline=""`).
    pub fn read_csv(&self, rel: &str, has_header: bool) -> Result<Vec<Vec<String>>> {
        let text = self.read_text(rel)?;
        let name = self.describe(rel);
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(has_header)
            .flexible(true)
            .from_reader(text.as_bytes());
        reader
            .records()
            .enumerate()
            .map(|(i, r)| {
                r.map(|rec| rec.iter().map(str::to_string).collect())
                    .map_err(|e| Error::data(&name, i + 1, e.to_string()))
            })
            .collect()
    }
}
