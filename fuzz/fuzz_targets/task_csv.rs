#![no_main]
// Entry point and what it covers: sightline_fuzzing::eval::task_csv.
libfuzzer_sys::fuzz_target!(|data: &[u8]| sightline_fuzzing::eval::task_csv(data));
