#![no_main]
// Entry point and what it covers: sightline_fuzzing::model::pickle.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sightline_fuzzing::model::pickle(data));
