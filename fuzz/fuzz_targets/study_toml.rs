#![no_main]
// Entry point and what it covers: sightline_fuzzing::eval::study_toml.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sightline_fuzzing::eval::study_toml(data));
