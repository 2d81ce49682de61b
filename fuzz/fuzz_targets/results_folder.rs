#![no_main]
// Entry point and what it covers: sightline_fuzzing::eval::results_folder.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sightline_fuzzing::eval::results_folder(data));
