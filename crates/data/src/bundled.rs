//! Small real training sets and example run files compiled into the binary, so the embedded
//! study (`sightline study`) trains offline from any directory. Provenance and licences:
//! `data/training/*/SOURCES.md` (sketch records made from Unicorn's sketchy-VQA, LLaVA's
//! sample captions, Stanford Alpaca (CC BY-NC 4.0), Open-Orca DPO pairs (MIT)).

macro_rules! embed {
    ($($name:literal => $path:literal),* $(,)?) => {
        &[$(($name, include_bytes!(concat!("../../../", $path)) as &[u8])),*]
    };
}

/// Every bundled file: (path written under the output folder, bytes).
pub static FILES: &[(&str, &[u8])] = embed![
    "training/sketch/sketch_captions.json" => "data/training/sketch/sketch_captions.json",
    "training/sketch/sketch_instruct.json" => "data/training/sketch/sketch_instruct.json",
    "training/sketch/sketch_instruct_yesno.json" => "data/training/sketch/sketch_instruct_yesno.json",
    "training/sketch/SOURCES.md" => "data/training/sketch/SOURCES.md",
    "training/alpaca/alpaca_small_100.json" => "data/training/alpaca/alpaca_small_100.json",
    "training/alpaca/DATA_LICENSE" => "data/training/alpaca/DATA_LICENSE",
    "training/alpaca/SOURCES.md" => "data/training/alpaca/SOURCES.md",
    "training/orca/orca_dpo_pairs_validation_30.jsonl" => "data/training/orca/orca_dpo_pairs_validation_30.jsonl",
    "training/orca/LICENSE.md" => "data/training/orca/LICENSE.md",
    "training/orca/SOURCES.md" => "data/training/orca/SOURCES.md",
    "configs/stage1-projector.toml" => "configs/stage1-projector.toml",
    "configs/stage2-full.toml" => "configs/stage2-full.toml",
    "configs/stage2-lora.toml" => "configs/stage2-lora.toml",
    "configs/text-only.toml" => "configs/text-only.toml",
];
