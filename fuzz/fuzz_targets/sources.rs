#![no_main]
// Entry point and what it covers: sightline_fuzzing::data::sources.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sightline_fuzzing::data::sources(data));
